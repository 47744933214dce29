//! Differentiable optimizer steps: SGD (heavy-ball or Nesterov momentum, coupled weight decay) and
//! Adam/AdamW with bias correction and `eps_root` inside the square root (paper appendix C, eq. 12).
//!
//! Each update has two paths that give **bitwise-identical** states:
//! - the *taped* path, written with differentiable [`Var`] ops, used in REPLAY's taped step so the new
//!   state is differentiable with respect to the old state, the gradient (and through it the data) and
//!   every hyperparameter passed as a tracked scalar (learning rate, momentum, betas, weight decay);
//! - the *fast* path, one fused pass per tensor with no tape, used for training and replays.
//!
//! Bitwise identity holds because the fused kernel performs exactly the same IEEE operations, in the
//! same order, as the taped ops (every scalar op of the taped path rounds once, as does the kernel's).
//! Hyperparameters are scalar `Var`s (shape `[]`, the parameters' dtype); use [`scalar`] for constants.

use crate::backend::spec::Update;
use crate::backend::Storage;
use crate::error::{invalid, shape_err, Error, Result};
use crate::nn::Params;
use crate::{Device, Tensor, Var};

/// A constant scalar hyperparameter of `like`'s dtype, on the CPU (the optimizers move scalar
/// hyperparameters to the parameters' device, differentiably).
pub fn scalar(v: f64, like: &Var) -> Var {
    Var::constant(Tensor::scalar(v, like.dtype()))
}

fn check(op: &'static str, params: &[Var], rest: &[&[Var]], hypers: &[&Var]) -> Result<()> {
    if let Some(r) = rest.iter().find(|r| r.len() != params.len()) {
        return invalid(op, format!("{} parameters but {} gradients or buffers", params.len(), r.len()));
    }
    for (i, p) in params.iter().enumerate() {
        // Every list has one entry per parameter (checked above).
        for q in rest.iter().filter_map(|r| r.get(i)) {
            if q.shape() != p.shape() || q.dtype() != p.dtype() {
                return shape_err(
                    op,
                    format!("parameter {i} is {} {} but its gradient or buffer is {} {}", p.shape(), p.dtype(), q.shape(), q.dtype()),
                );
            }
        }
    }
    for h in hypers {
        if h.shape().rank() != 0 || params.first().is_some_and(|p| p.dtype() != h.dtype()) {
            return shape_err(op, format!("hyperparameters must be scalars of the parameters' dtype, got {} {}", h.shape(), h.dtype()));
        }
    }
    Ok(())
}

/// Whether the update must be recorded: recording is on, some operand is tracked, and this is not an
/// untaped training step (whose result nobody differentiates; see [`crate::replay::StepCtx`]).
fn taped(all: &[&[Var]], hypers: &[&Var]) -> bool {
    crate::is_grad_enabled()
        && !crate::mode::in_untaped_step()
        && (all.iter().any(|s| s.iter().any(Var::is_tracked)) || hypers.iter().any(|h| h.is_tracked()))
}

/// The device of the parameters (the CPU when there are none).
fn device_of(params: &[Var]) -> Device {
    params.first().map_or(Device::Cpu, |p| p.value().device())
}

/// The fused update `u` of each parameter: `tensors` yields, per parameter, its tensors (the
/// parameter first), `hypers` are the scalar hyperparameters (moved to the parameters' device);
/// returns, per parameter, its new tensors.
fn fused(op: &'static str, u: Update, tensors: impl Iterator<Item = Vec<Tensor>>, hypers: &[&Var], dev: Device) -> Result<Vec<Vec<Var>>> {
    let hs = hypers.iter().map(|h| h.value().to_device(dev)).collect::<Result<Vec<Tensor>>>()?;
    let hs: Vec<&Storage> = hs.iter().map(Tensor::storage).collect();
    tensors
        .map(|ts| {
            let st: Vec<&Storage> = ts.iter().map(Tensor::storage).collect();
            let shape =
                ts.first().map(|t| t.shape().clone()).ok_or_else(|| Error::Invalid { op, msg: "an update of no tensors".into() })?;
            Storage::update(op, u, &st, &hs)?.into_iter().map(|s| Ok(Var::constant(Tensor::new(op, s, shape.clone())?))).collect()
        })
        .collect()
}

/// SGD with optional heavy-ball or Nesterov momentum and coupled (L2) weight decay, as in PyTorch:
/// g' = g + wd·θ; v' = μ·v + g'; θ' = θ − lr·v' (Nesterov: θ' = θ − lr·(g' + μ·v')).
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: Var,
    /// Momentum μ (`None`: plain SGD, no buffer).
    pub momentum: Option<Var>,
    /// Coupled weight decay.
    pub weight_decay: Var,
    /// Nesterov momentum (needs `momentum`).
    pub nesterov: bool,
}

impl Sgd {
    /// One step. `bufs` holds one momentum buffer per parameter (empty without momentum). Returns the
    /// new parameters and buffers.
    pub fn step(&self, params: &[Var], grads: &[Var], bufs: &[Var]) -> Result<(Vec<Var>, Vec<Var>)> {
        let mu = self.momentum.as_ref();
        if self.nesterov && mu.is_none() {
            return invalid("sgd", "nesterov needs momentum");
        }
        let mut hypers = vec![&self.lr, &self.weight_decay];
        hypers.extend(mu);
        let bufs_expected: &[&[Var]] = if mu.is_some() { &[grads, bufs] } else { &[grads] };
        check("sgd", params, bufs_expected, &hypers)?;
        if mu.is_none() && !bufs.is_empty() {
            return invalid("sgd", format!("{} momentum buffers given without momentum", bufs.len()));
        }
        let (mut new_p, mut new_b) = (Vec::new(), Vec::new());
        let dev = device_of(params);
        if taped(&[params, grads, bufs], &hypers) {
            // Hyperparameters move to the parameters' device (a differentiable copy; none on the CPU).
            let (lr, wd) = (self.lr.to_device(dev)?, self.weight_decay.to_device(dev)?);
            let mu = mu.map(|m| m.to_device(dev)).transpose()?;
            let mu = mu.as_ref();
            for (i, (p, g)) in params.iter().zip(grads).enumerate() {
                let g1 = g.add(&p.mul(&wd)?)?;
                let step = match (mu, bufs.get(i)) {
                    (None, _) => g1,
                    (Some(_), None) => return invalid("sgd", format!("no momentum buffer for parameter {i}")),
                    (Some(mu), Some(buf)) => {
                        let v1 = buf.mul(mu)?.add(&g1)?;
                        let s = if self.nesterov { g1.add(&v1.mul(mu)?)? } else { v1.clone() };
                        new_b.push(v1);
                        s
                    }
                };
                new_p.push(p.sub(&step.mul(&lr)?)?);
            }
            return Ok((new_p, new_b));
        }
        let u = Update::Sgd { momentum: mu.is_some(), nesterov: self.nesterov };
        // With momentum, one buffer per parameter (checked above); without, none.
        let bufs = bufs.iter().map(Some).chain(std::iter::repeat(None));
        let tensors = params.iter().zip(grads).zip(bufs).map(|((p, g), b)| {
            let mut t = vec![p.value().clone(), g.value().clone()];
            t.extend(b.map(|b| b.value().clone()));
            t
        });
        for mut out in fused("sgd", u, tensors, &hypers, dev)? {
            if mu.is_some() {
                new_b.push(out.pop().ok_or_else(|| Error::Invalid { op: "sgd", msg: "missing buffer".into() })?);
            }
            new_p.extend(out);
        }
        Ok((new_p, new_b))
    }

    /// [`Sgd::step`] on a whole flat state laid out by `layout` (its parameters, then one buffer group
    /// holding the momentum with momentum, none without): returns the new state in the same layout,
    /// ready to return from a [`crate::replay::Training::step`]. Errors name the parameter
    /// ([`Params::annotate_error`]); a layout with the wrong number of buffer groups is an
    /// [`Error::Invalid`] naming them.
    pub fn step_state(&self, layout: &Params, state: &[Var], grads: &[Var]) -> Result<Vec<Var>> {
        let want = usize::from(self.momentum.is_some());
        let (params, bufs) = split(layout, state, "sgd", want, "the momentum")?;
        let (p, b) = self.step(params, grads, bufs.first().copied().unwrap_or_default()).map_err(|e| layout.annotate_error(e))?;
        Ok(p.into_iter().chain(b).collect())
    }
}

/// `state` split by `layout` into the parameters and the buffer groups, which must number `want`
/// (`what`: what they hold, for the error).
fn split<'a>(layout: &Params, state: &'a [Var], op: &'static str, want: usize, what: &str) -> Result<(&'a [Var], Vec<&'a [Var]>)> {
    let groups: Vec<&str> = layout.buffer_groups().collect();
    if groups.len() != want {
        return invalid(
            op,
            format!("the state layout has {} buffer groups ({:?}) but this optimizer keeps {want} ({what})", groups.len(), groups),
        );
    }
    layout.split_state(state)
}

/// Adam (coupled weight decay) or AdamW (decoupled), with bias correction and `eps_root`:
/// m' = β₁m + (1−β₁)g; v' = β₂v + (1−β₂)g²; m̂ = m'/(1−β₁ᵗ⁺¹); v̂ = v'/(1−β₂ᵗ⁺¹);
/// θ' = θ − lr·(m̂/(√(v̂ + eps_root) + eps) + wd·θ) (AdamW), with g ← g + wd·θ instead for Adam.
/// `eps_root > 0` keeps the derivative of √ finite at v̂ = 0, which the backward-over-backward needs.
#[derive(Clone, Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: Var,
    /// β₁.
    pub beta1: Var,
    /// β₂.
    pub beta2: Var,
    /// Added outside the square root.
    pub eps: f64,
    /// Added inside the square root.
    pub eps_root: f64,
    /// Weight decay (decoupled for AdamW, coupled for Adam).
    pub weight_decay: Var,
    /// Decoupled weight decay (AdamW).
    pub decoupled: bool,
}

impl Adam {
    /// One step at step index `t` (bias correction uses t + 1). `m` and `v` hold one buffer per
    /// parameter. Returns the new parameters, first moments and second moments.
    pub fn step(&self, t: usize, params: &[Var], grads: &[Var], m: &[Var], v: &[Var]) -> Result<(Vec<Var>, Vec<Var>, Vec<Var>)> {
        let hypers = [&self.lr, &self.beta1, &self.beta2, &self.weight_decay];
        check("adam", params, &[grads, m, v], &hypers)?;
        if !(self.eps.is_finite() && self.eps >= 0.0 && self.eps_root.is_finite() && self.eps_root >= 0.0) {
            return invalid("adam", format!("eps = {} and eps_root = {} must be finite and non-negative", self.eps, self.eps_root));
        }
        // β's on the CPU (the usual `scalar` constants) are checked; ones on a GPU are not read back, as
        // that would synchronize every step. β = 1 would divide by a zero bias correction.
        for (name, b) in [("beta1", &self.beta1), ("beta2", &self.beta2)] {
            if b.value().device() == Device::Cpu {
                let x = b.value().to_scalar()?;
                if !(0.0..1.0).contains(&x) {
                    return invalid("adam", format!("{name} = {x} must lie in [0, 1)"));
                }
            }
        }
        let p1 = t as f64 + 1.0;
        let (mut np, mut nm, mut nv) = (Vec::new(), Vec::new(), Vec::new());
        let dev = device_of(params);
        if taped(&[params, grads, m, v], &hypers) {
            let [lr, b1, b2, wd] = [&self.lr, &self.beta1, &self.beta2, &self.weight_decay].map(|h| h.to_device(dev));
            let (lr, b1, b2, wd) = (lr?, b1?, b2?, wd?);
            let (b1, b2, wd) = (&b1, &b2, &wd);
            let (c1, c2) = (b1.affine(-1.0, 1.0)?, b2.affine(-1.0, 1.0)?);
            let (bc1, bc2) = (b1.powf(p1)?.affine(-1.0, 1.0)?, b2.powf(p1)?.affine(-1.0, 1.0)?);
            for (((p, g), m), v) in params.iter().zip(grads).zip(m).zip(v) {
                let g = if self.decoupled { g.clone() } else { g.add(&p.mul(wd)?)? };
                let m1 = m.mul(b1)?.add(&g.mul(&c1)?)?;
                let v1 = v.mul(b2)?.add(&g.square()?.mul(&c2)?)?;
                let denom = v1.div(&bc2)?.add_scalar(self.eps_root)?.sqrt()?.add_scalar(self.eps)?;
                let mut upd = m1.div(&bc1)?.div(&denom)?;
                if self.decoupled {
                    upd = upd.add(&p.mul(wd)?)?;
                }
                np.push(p.sub(&upd.mul(&lr)?)?);
                nm.push(m1);
                nv.push(v1);
            }
            return Ok((np, nm, nv));
        }
        let u = Update::Adam { decoupled: self.decoupled, eps: self.eps, eps_root: self.eps_root, t };
        let tensors = params.iter().zip(grads).zip(m).zip(v).map(|(((p, g), m), v)| [p, g, m, v].map(|x| x.value().clone()).to_vec());
        for out in fused("adam", u, tensors, &hypers, dev)? {
            let [a, b, c]: [Var; 3] = out.try_into().map_err(|_| Error::Invalid { op: "adam", msg: "wrong output count".into() })?;
            np.push(a);
            nm.push(b);
            nv.push(c);
        }
        Ok((np, nm, nv))
    }

    /// [`Adam::step`] on a whole flat state laid out by `layout` (its parameters, then two buffer
    /// groups: the first and the second moments, e.g. `adamw.m` and `adamw.v`): returns the new state
    /// in the same layout, ready to return from a [`crate::replay::Training::step`]. Errors name the
    /// parameter ([`Params::annotate_error`]); a layout without exactly two buffer groups is an
    /// [`Error::Invalid`] naming them.
    pub fn step_state(&self, t: usize, layout: &Params, state: &[Var], grads: &[Var]) -> Result<Vec<Var>> {
        let (params, bufs) = split(layout, state, "adam", 2, "the first and second moments")?;
        let (m, v) = (bufs.first().copied().unwrap_or_default(), bufs.get(1).copied().unwrap_or_default());
        let (p, m, v) = self.step(t, params, grads, m, v).map_err(|e| layout.annotate_error(e))?;
        Ok(p.into_iter().chain(m).chain(v).collect())
    }
}
