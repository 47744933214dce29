//! REPLAY: exact metagradients through training (paper §2.3 and appendix A).
//!
//! A training run is a chain s_{t+1} = h_t(s_t, z) for t < T, from a state s_0 (a flat list of tensors:
//! parameters and optimizer buffers) under metaparameters z (learning-rate schedules, data weights, the
//! data itself, ...); the user scores the final state with φ(s_T). The metagradient ∂φ(s_T)/∂z is the
//! reverse pass of that chain: for t = T−1 down to 0, one *taped* step from s_t and one backward give
//! s̄_t = s̄_{t+1}·∂h_t/∂s_t and the step's share z̄_t = s̄_{t+1}·∂h_t/∂z. Since h_t contains a gradient,
//! that backward is a backward-over-backward, which the engine's taped backward pass provides natively.
//!
//! The reverse pass needs s_{T−1}, …, s_0 in that order. Storing them all (step-wise AD, the paper's
//! algorithm 2: [`ScheduleKind::StoreAll`]) costs T states; REPLAY's lazy k-ary tree
//! ([`ScheduleKind::KAry`]) keeps O(k·log_k T) states and replays training about log_k T times;
//! binomial checkpointing ([`ScheduleKind::Revolve`]) is optimal for a given slot count, and
//! [`plan::plan`] picks one from a memory budget. All of them give **bitwise-identical** metagradients,
//! because training is bitwise deterministic: every replayed state equals the original one exactly.
//!
//! - [`schedule`]: the schedules (actions: store, restore, advance, reverse, free) and their counters;
//! - [`arena`]: the fixed checkpoint arena that holds the stored states;
//! - [`plan`]: the memory-budget planner;
//! - [`mod@reference`]: the reference problems R1 (SGD with momentum) and R2 (AdamW);
//! - this module: the [`Training`] abstraction, [`train`], the [`metagradient`] driver,
//!   [`check_pure`] (REPLAY's one assumption about a training run, checked), and [`metasmoothness`]
//!   (the paper's definition 2).

pub mod arena;
pub mod plan;
pub mod reference;
pub mod schedule;

use crate::error::{invalid, Error, Result};
use crate::{grad, vjp_many, GradOptions, Tape, Tensor, Var};
use arena::{Arena, ArenaStats};
pub use schedule::ScheduleKind;
use schedule::{Action, Schedule};
use std::cell::RefCell;
use std::time::Instant;

/// How a step is being run, and the gradient that matches it.
///
/// REPLAY makes one per step; to reuse a [`Training::step`] in a loop of your own, make one with
/// [`StepCtx::new`] (`taped = false` for plain training, `true` to differentiate through the step).
#[derive(Clone, Debug, Default)]
pub struct StepCtx {
    taped: bool,
    /// The training loss of this step, as passed to [`StepCtx::grad`].
    loss: RefCell<Option<Tensor>>,
}

impl StepCtx {
    /// A context for one step: `taped` if the step will be differentiated (its training gradient must
    /// then be recorded), `false` for plain training.
    pub fn new(taped: bool) -> StepCtx {
        StepCtx { taped, loss: RefCell::new(None) }
    }

    /// Whether this step is the taped one that REPLAY differentiates (else: training or a replay).
    pub fn taped(&self) -> bool {
        self.taped
    }

    /// ∇loss with respect to `params`: differentiable (recorded, `create_graph`) in a taped step,
    /// plain constants otherwise. Use this for the training gradient inside [`Training::step`]; it also
    /// keeps the loss for [`StepCtx::loss`].
    pub fn grad(&self, loss: &Var, params: &[&Var]) -> Result<Vec<Var>> {
        *self.loss.borrow_mut() = Some(loss.value().clone());
        grad(loss, params, self.taped)
    }

    /// The loss of the last [`StepCtx::grad`] call in this step (on the step's device; reading it from
    /// a GPU waits for the step).
    pub fn loss(&self) -> Option<Tensor> {
        self.loss.borrow().clone()
    }
}

/// What a training observer sees after each step (see [`train_with`]).
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// The step t that just ran (the state is now s_{t+1}).
    pub step: usize,
    /// The training loss of the step, if the step took a gradient through [`StepCtx::grad`].
    pub loss: Option<Tensor>,
    /// The new state s_{t+1}.
    pub state: &'a [Tensor],
}

/// A deterministic training run, as REPLAY sees it.
///
/// `step` must be a pure function of `(t, state, meta)`: choose step t's batch (and any randomness, from
/// a counter-based generator keyed by t) deterministically from t, so that a replayed step reproduces the
/// original bit for bit. The optimizers in [`crate::optim`] take the fast untaped path or the taped path
/// by themselves, with identical results: in an untaped step (training, replays; the forward pass is
/// still recorded there for [`StepCtx::grad`]) their update is computed by the fused kernel and not
/// recorded, since nothing differentiates an untaped step's result. So do not differentiate through an
/// optimizer update inside a step; the taped step records it for the metagradient.
pub trait Training {
    /// The number of steps T (at least 1).
    fn steps(&self) -> usize;
    /// The initial state s_0.
    fn initial_state(&self) -> Result<Vec<Tensor>>;
    /// One step h_t(s_t, z) → s_{t+1}. `state` holds variables on a tape (so gradients can be taken with
    /// [`StepCtx::grad`]); `meta` holds the metaparameters (tracked only in a taped step).
    fn step(&self, ctx: &StepCtx, t: usize, state: &[Var], meta: &[Var]) -> Result<Vec<Var>>;
    /// The output function φ(s_T), a scalar.
    fn output(&self, state: &[Var]) -> Result<Var>;
}

/// Counters of one metagradient computation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReplayStats {
    /// The schedule used.
    pub kind: Option<ScheduleKind>,
    /// Training steps T.
    pub steps: usize,
    /// Untaped training steps run (including the first forward sweep to s_{T−1}).
    pub replayed_steps: u64,
    /// Taped steps (one per t).
    pub taped_steps: usize,
    /// The checkpoint arena's counters (slots, bytes, peak slots, copies).
    pub arena: ArenaStats,
    /// Wall-clock seconds spent in untaped (replayed) steps.
    pub replay_seconds: f64,
    /// Wall-clock seconds spent in taped steps and their backward-over-backward.
    pub taped_seconds: f64,
}

/// The result of [`metagradient`].
#[derive(Clone, Debug)]
pub struct MetaGradient {
    /// φ(s_T).
    pub phi: f64,
    /// ∂φ(s_T)/∂z, one tensor per metaparameter tensor.
    pub grads: Vec<Tensor>,
    /// The trained state s_T (bitwise what [`train`] returns).
    pub state: Vec<Tensor>,
    /// Counters.
    pub stats: ReplayStats,
}

/// The first tensor holding a NaN or an infinity, and its index (on a GPU kernels count them into one
/// counter per device, and only that count is downloaded).
fn first_non_finite<'a>(ts: impl Iterator<Item = &'a Tensor>) -> Result<Option<(usize, &'a Tensor)>> {
    // All at once first (one download per device); tensor by tensor only to name the culprit.
    let ts: Vec<&Tensor> = ts.collect();
    if Tensor::try_all_finite_many(ts.iter().copied())? {
        return Ok(None);
    }
    for (i, t) in ts.into_iter().enumerate() {
        if !t.try_all_finite()? {
            return Ok(Some((i, t)));
        }
    }
    Ok(None)
}

fn check_state(op: &'static str, t: usize, like: &[Tensor], got: &[Var]) -> Result<()> {
    let ok = like.len() == got.len() && like.iter().zip(got).all(|(a, b)| a.shape() == b.shape() && a.dtype() == b.dtype());
    if !ok {
        let fmt = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>().join(", ");
        return Err(Error::Shape {
            op,
            msg: format!(
                "step {t} returned a state [{}] unlike s_0 [{}]",
                fmt(&mut got.iter().map(|v| format!("{} {}", v.shape(), v.dtype()))),
                fmt(&mut like.iter().map(|v| format!("{} {}", v.shape(), v.dtype())))
            ),
        });
    }
    Ok(())
}

/// One untaped step: state → next state and the step's loss (the inner gradient is first order,
/// nothing is kept).
fn advance(tr: &impl Training, t: usize, state: Vec<Tensor>, meta: &[Var]) -> Result<(Vec<Tensor>, Option<Tensor>)> {
    let tape = Tape::new();
    let s: Vec<Var> = state.iter().map(|x| tape.var(x.clone())).collect();
    let ctx = StepCtx::new(false);
    let out = {
        let _untaped = crate::mode::untaped_step(true);
        tr.step(&ctx, t, &s, meta)?
    };
    check_state("train", t, &state, &out)?;
    Ok((out.into_iter().map(|v| v.value().clone()).collect(), ctx.loss()))
}

fn constants(meta: &[Tensor]) -> Vec<Var> {
    meta.iter().map(|m| Var::constant(m.clone())).collect()
}

/// An [`Error::NonFinite`] if a tensor of `state` (just produced by step `t`) holds a NaN or infinity.
fn check_finite(t: usize, state: &[Tensor]) -> Result<()> {
    if let Some((i, x)) = first_non_finite(state.iter())? {
        return Err(Error::NonFinite { step: t, msg: format!("training produced a non-finite state tensor {i} (shape {})", x.shape()) });
    }
    Ok(())
}

/// Untaped steps between two scans of the state for NaN and infinity. Scanning every state after
/// every step reads the whole state once more per step (about a tenth of a small model's step on the
/// CPU, a download per tensor on a GPU); a diverged run stays non-finite, so scanning once per segment
/// finds it, and re-running the failed segment step by step names the step.
pub const CHECK_EVERY: usize = 16;

/// Untaped steps `from..to` from state `s` (s_from), calling `observe` after each. The state is scanned
/// for NaN and infinity every [`CHECK_EVERY`] steps and at `to`; when a scan fails, the segment is
/// re-run from its first state with a scan after every step, so the error names the first step that
/// produced a non-finite state (training is deterministic, so the re-run reproduces it).
fn run_steps(
    tr: &impl Training,
    from: usize,
    to: usize,
    mut s: Vec<Tensor>,
    z: &[Var],
    observe: &mut dyn FnMut(&StepInfo<'_>) -> Result<()>,
) -> Result<Vec<Tensor>> {
    let mut start = (from, s.clone());
    for t in from..to {
        let (next, loss) = advance(tr, t, s, z)?;
        observe(&StepInfo { step: t, loss, state: &next })?;
        s = next;
        if t + 1 == to || (t + 1 - start.0).is_multiple_of(CHECK_EVERY) {
            if first_non_finite(s.iter())?.is_some() {
                let mut r = start.1.clone();
                for u in start.0..=t {
                    r = advance(tr, u, r, z)?.0;
                    check_finite(u, &r)?;
                }
                return Err(Error::NonFinite {
                    step: t,
                    msg: format!(
                        "the state after steps {}..={t} is not finite, but re-running them is: the step is not deterministic",
                        start.0
                    ),
                });
            }
            start = (t + 1, s.clone());
        }
    }
    Ok(s)
}

/// Trains from s_0 for T steps (untaped) and returns s_T. A NaN or infinity in a state is an
/// [`Error::NonFinite`] naming the step that produced it.
pub fn train(tr: &impl Training, meta: &[Tensor]) -> Result<Vec<Tensor>> {
    train_with(tr, meta, |_| Ok(()))
}

/// [`train`], calling `observe` after every step with the step, its loss and the new state (to log a
/// loss curve, save checkpoints, or stop early by returning an error). The state is scanned for NaN
/// and infinity every [`CHECK_EVERY`] steps, so `observe` may see up to `CHECK_EVERY − 1` non-finite
/// states before the error that names the step producing the first one.
pub fn train_with(tr: &impl Training, meta: &[Tensor], mut observe: impl FnMut(&StepInfo<'_>) -> Result<()>) -> Result<Vec<Tensor>> {
    let z = constants(meta);
    run_steps(tr, 0, tr.steps(), tr.initial_state()?, &z, &mut observe)
}

/// φ(s_T) after a plain training run; a non-finite state or φ is an [`Error::NonFinite`].
pub fn evaluate(tr: &impl Training, meta: &[Tensor]) -> Result<f64> {
    let s = train(tr, meta)?;
    let vars: Vec<Var> = s.into_iter().map(Var::constant).collect();
    let phi = crate::no_grad(|| tr.output(&vars)?.value().to_scalar())?;
    if !phi.is_finite() {
        return Err(Error::NonFinite { step: tr.steps().saturating_sub(1), msg: format!("the output φ(s_T) is {phi}") });
    }
    Ok(phi)
}

/// Checks what REPLAY assumes of `tr`: `initial_state` and every `step` are pure functions of
/// `(t, state, meta)`, giving the same bits on every call and in any order. A step that reads a
/// counter, a clock, an RNG advanced by earlier calls or anything else outside its arguments makes each
/// schedule replay a different run, so metagradients differ per schedule with no other symptom.
///
/// Runs the first `n = min(steps, T)` untaped steps from s_0, then runs each of them again, last first
/// (the order REPLAY's reverse pass needs), from its recorded input, and compares bits. An
/// [`Error::Invalid`] names the earliest step (or `initial_state`) that did not reproduce, and the state
/// tensor; other errors of the steps propagate. Costs `2n` steps; a few are enough to catch the usual
/// mistakes (state kept in the `Training` value, a random mask drawn without the step in its seed).
pub fn check_pure(tr: &impl Training, meta: &[Tensor], steps: usize) -> Result<()> {
    let differs = |a: &[Tensor], b: &[Tensor]| -> Result<Option<usize>> {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if !x.try_bit_eq(y)? {
                return Ok(Some(i));
            }
        }
        Ok(None)
    };
    let s0 = tr.initial_state()?;
    if let Some(i) = differs(&s0, &tr.initial_state()?)? {
        return invalid("check_pure", format!("initial_state() returned different bits on a second call (state tensor {i})"));
    }
    let z = constants(meta);
    let mut states = Vec::new();
    let mut s = s0;
    for t in 0..steps.min(tr.steps()) {
        let next = advance(tr, t, s.clone(), &z)?.0;
        states.push(std::mem::replace(&mut s, next));
    }
    states.push(s);
    // Reverse order, as REPLAY re-runs them; the earliest failure is the one reported. Pair t holds
    // (s_t, s_{t+1}).
    let mut first_bad = None;
    for (t, (before, after)) in states.iter().zip(states.iter().skip(1)).enumerate().rev() {
        let again = advance(tr, t, before.clone(), &z)?.0;
        if let Some(i) = differs(after, &again)? {
            first_bad = Some((t, i));
        }
    }
    if let Some((t, i)) = first_bad {
        return invalid(
            "check_pure",
            format!("step {t} is not a pure function of (t, state, meta): run again from the same s_{t} after later steps, it gave different bits in state tensor {i}"),
        );
    }
    Ok(())
}

/// The metagradient ∂φ(s_T)/∂z by reversing training under `kind`'s checkpoint schedule (REPLAY's lazy
/// k-ary tree, revolve, or store-all step-wise AD). A NaN or infinity in a state that training
/// produces, in φ, or in the metagradient is an [`Error::NonFinite`] naming the step that produced it
/// (a non-finite state adjoint is reported by the step whose reverse produced it, once it reaches the
/// metagradient; one that never does leaves the result finite and is not an error).
pub fn metagradient(tr: &impl Training, meta: &[Tensor], kind: ScheduleKind) -> Result<MetaGradient> {
    let steps = tr.steps();
    if steps == 0 {
        return invalid("metagradient", "training has T = 0 steps: there is nothing to differentiate");
    }
    let schedule = Schedule::new(kind, steps)?;
    let s0 = tr.initial_state()?;
    let mut arena = Arena::new(schedule.slots(), &s0)?;
    let zc = constants(meta);
    let mut working: Option<Vec<Tensor>> = Some(s0.clone());
    let mut sbar: Vec<Tensor> = Vec::new();
    let mut zbar: Option<Vec<Var>> = None;
    let mut phi = f64::NAN;
    let mut final_state: Vec<Tensor> = Vec::new();
    let mut stats = ReplayStats { kind: Some(kind), steps, ..Default::default() };
    let lost = |what: &str| Error::Invalid { op: "metagradient", msg: format!("schedule {what} without a valid working state") };
    schedule.for_each(&mut |action| {
        match action {
            Action::Store { slot, step } => arena.store(slot, step, working.as_ref().ok_or_else(|| lost("stores"))?)?,
            Action::Restore { slot, .. } => working = Some(arena.load(slot)?),
            Action::Free { slot } => arena.free(slot)?,
            Action::Advance { from, to } => {
                let s = working.take().ok_or_else(|| lost("advances"))?;
                let clock = Instant::now();
                // A diverged run would surface as NaN adjoints at step T − 1; name the step instead.
                let s = run_steps(tr, from, to, s, &zc, &mut |_| Ok(()))?;
                stats.replay_seconds += clock.elapsed().as_secs_f64();
                stats.replayed_steps += (to - from) as u64;
                working = Some(s);
            }
            Action::Reverse { step: t } => {
                let s = working.take().ok_or_else(|| lost("reverses"))?;
                let clock = Instant::now();
                let tape = Tape::new();
                let sv: Vec<Var> = s.iter().map(|x| tape.var(x.clone())).collect();
                let zv: Vec<Var> = meta.iter().map(|x| tape.var(x.clone())).collect();
                let out = tr.step(&StepCtx::new(true), t, &sv, &zv)?;
                check_state("metagradient", t, &s0, &out)?;
                let wrt: Vec<&Var> = sv.iter().chain(&zv).collect();
                let mut g = if t + 1 == steps {
                    final_state = out.iter().map(|v| v.value().clone()).collect();
                    // The last step runs only here, taped: s_T gets the scan the replays give the others.
                    check_finite(t, &final_state)?;
                    let y = tr.output(&out)?;
                    phi = y.value().to_scalar()?;
                    if !phi.is_finite() {
                        return Err(Error::NonFinite { step: t, msg: format!("the output φ(s_T) is {phi}") });
                    }
                    grad(&y, &wrt, false)?
                } else {
                    // s̄_{t+1}·∂h_t/∂(s_t, z): one backward pass seeded with s̄_{t+1} at the outputs.
                    let seeds: Vec<Var> = sbar.iter().map(|b| Var::constant(b.clone())).collect();
                    vjp_many(&out.iter().collect::<Vec<_>>(), &seeds.iter().collect::<Vec<_>>(), &wrt, GradOptions::default())?
                };
                let gz = g.split_off(sv.len());
                // The metagradient's share of this step is scanned after every step; the state adjoint
                // s̄_t (as large as the state) only when that share is not finite: a non-finite s̄
                // reaches the next reversed step's share, which then names the step that produced it.
                if let Some((j, gzj)) = first_non_finite(gz.iter().map(Var::value))? {
                    if let Some((i, b)) = first_non_finite(sbar.iter())? {
                        let shape = b.shape();
                        return Err(Error::NonFinite { step: t + 1, msg: format!("the adjoint of state tensor {i} (shape {shape})") });
                    }
                    if let Some((i, gi)) = first_non_finite(g.iter().map(Var::value))? {
                        return Err(Error::NonFinite { step: t, msg: format!("the adjoint of state tensor {i} (shape {})", gi.shape()) });
                    }
                    return Err(Error::NonFinite {
                        step: t,
                        msg: format!("the metagradient contribution to meta tensor {j} (shape {})", gzj.shape()),
                    });
                }
                sbar = g.into_iter().map(|v| v.value().clone()).collect();
                zbar = Some(match zbar.take() {
                    None => gz,
                    Some(acc) => acc.iter().zip(&gz).map(|(a, b)| a.add(b)).collect::<Result<_>>()?,
                });
                stats.taped_steps += 1;
                stats.taped_seconds += clock.elapsed().as_secs_f64();
            }
        }
        Ok(())
    })?;
    stats.arena = arena.stats();
    let grads = zbar.ok_or_else(|| Error::Invalid { op: "metagradient", msg: "the schedule reversed no step".into() })?;
    if let Some((j, _)) = first_non_finite(grads.iter().map(Var::value))? {
        let msg = format!("the sum of finite per-step contributions to meta tensor {j} overflowed");
        return Err(Error::NonFinite { step: 0, msg });
    }
    Ok(MetaGradient { phi, grads: grads.into_iter().map(|v| v.value().clone()).collect(), state: final_state, stats })
}

/// Empirical (h, v)-metasmoothness of a learning algorithm A at z (paper definition 2):
/// with θ₀ = A(z), θ_h = A(z + h·v), θ_2h = A(z + 2h·v), Δ₀ = (θ_h − θ₀)/h, Δ₁ = (θ_2h − θ_h)/h and
/// d = |θ_2h − θ₀|, returns Σᵢ sign(Δ₁ᵢ)·dᵢ/‖d‖₁·sign(Δ₀ᵢ) ∈ [−1, 1]: the d-weighted agreement in sign
/// of two successive finite-difference metagradients. `a` maps metaparameters to model parameters.
/// Returns 0 when θ does not move at all.
pub fn metasmoothness(a: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>, z: &[Tensor], v: &[Tensor], h: f64) -> Result<f64> {
    if !(h.is_finite() && h > 0.0) {
        return invalid("metasmoothness", format!("step h = {h} must be positive and finite"));
    }
    if z.len() != v.len() || z.iter().zip(v).any(|(a, b)| a.shape() != b.shape()) {
        return invalid("metasmoothness", "the direction v must have the metaparameters' shapes");
    }
    let shifted = |c: f64| -> Result<Vec<Tensor>> {
        z.iter()
            .zip(v)
            .map(|(z, v)| {
                let d: Vec<f64> = z.try_to_vec_f64()?.iter().zip(v.try_to_vec_f64()?).map(|(a, b)| a + c * b).collect();
                Tensor::from_vec(d, z.shape().clone())?.try_to_dtype(z.dtype())?.to_device(z.device())
            })
            .collect()
    };
    let flat = |ts: Vec<Tensor>| -> Result<Vec<f64>> { Ok(ts.iter().map(Tensor::try_to_vec_f64).collect::<Result<Vec<_>>>()?.concat()) };
    let (t0, th, t2h) = (flat(a(z)?)?, flat(a(&shifted(h)?)?)?, flat(a(&shifted(2.0 * h)?)?)?);
    if t0.len() != th.len() || t0.len() != t2h.len() {
        return invalid("metasmoothness", "the algorithm returned parameters of different sizes");
    }
    let d: Vec<f64> = t2h.iter().zip(&t0).map(|(a, b)| (a - b).abs()).collect();
    let norm: f64 = d.iter().sum();
    if norm == 0.0 {
        return Ok(0.0);
    }
    let sign = |x: f64| {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let terms = t0.iter().zip(&th).zip(&t2h).zip(&d);
    Ok(terms.map(|(((&a, &b), &c), &di)| sign((c - b) / h) * di / norm * sign((b - a) / h)).sum())
}
