//! REPLAY end to end: metagradients of the reference problems against finite differences of the whole
//! training function, bitwise equality across schedules, exact counters, the optimizers' two paths,
//! and errors.

use metagrad::optim::{scalar, Adam, Sgd};
use metagrad::replay::reference::{Reference, ReferenceProblem};
use metagrad::replay::schedule::{kary_replayed_steps, revolve_replayed_steps, Schedule};
use metagrad::replay::{evaluate, metagradient, metasmoothness, ScheduleKind, StepCtx, Training};
use metagrad::{DType, Error, Result, Tape, Tensor, Var};

/// φ(z) with coordinate `i` of meta tensor `m` shifted by `d`.
fn phi_shifted(p: &ReferenceProblem, m: usize, i: usize, d: f64) -> f64 {
    let mut z = p.initial_meta();
    let mut v = z[m].to_vec_f64();
    v[i] += d;
    z[m] = Tensor::from_vec(v, z[m].shape().clone()).unwrap();
    evaluate(p, &z).unwrap()
}

#[test]
fn reference_metagradients_match_finite_differences() {
    for kind in [Reference::R1, Reference::R2] {
        let p = ReferenceProblem::new(kind, DType::F64);
        let mg = metagradient(&p, &p.initial_meta(), ScheduleKind::KAry { k: 2 }).unwrap();
        assert!((mg.phi - evaluate(&p, &p.initial_meta()).unwrap()).abs() == 0.0, "phi equals a plain training run");
        // Every learning-rate keypoint and a spread of data weights.
        let coords: Vec<(usize, usize)> = (0..5).map(|i| (0, i)).chain([0, 7, 31, 50, 63].map(|i| (1, i))).collect();
        for (m, i) in coords {
            let h = if m == 0 && kind == Reference::R2 { 1e-6 } else { 1e-5 };
            let fd = (phi_shifted(&p, m, i, h) - phi_shifted(&p, m, i, -h)) / (2.0 * h);
            let a = mg.grads[m].to_vec_f64()[i];
            let rel = (a - fd).abs() / a.abs().max(fd.abs());
            assert!(rel <= 1e-5, "{kind:?} meta {m}[{i}]: metagradient {a:e} vs finite difference {fd:e} (rel {rel:e})");
        }
    }
}

#[test]
fn replay_equals_stepwise_bit_for_bit() {
    for kind in [Reference::R1, Reference::R2] {
        let p = ReferenceProblem::new(kind, DType::F64);
        let z = p.initial_meta();
        let base = metagradient(&p, &z, ScheduleKind::StoreAll).unwrap();
        for sk in
            [ScheduleKind::KAry { k: 2 }, ScheduleKind::KAry { k: 3 }, ScheduleKind::KAry { k: 7 }, ScheduleKind::Revolve { slots: 4 }]
        {
            let mg = metagradient(&p, &z, sk).unwrap();
            assert_eq!(mg.phi.to_bits(), base.phi.to_bits(), "{kind:?} {sk:?}: phi");
            for (a, b) in mg.grads.iter().zip(&base.grads) {
                assert!(a.bit_eq(b), "{kind:?} {sk:?}: metagradient differs from step-wise AD");
            }
            // Counters: the replays the schedule promises, and the k-ary storage bound k·⌈log_k T⌉ + 1.
            let t = p.steps();
            let expected = match sk {
                ScheduleKind::KAry { k } => kary_replayed_steps(t, k).unwrap(),
                ScheduleKind::Revolve { slots } => revolve_replayed_steps(t, slots).unwrap(),
                ScheduleKind::StoreAll => unreachable!(),
            };
            assert_eq!(mg.stats.replayed_steps, expected, "{kind:?} {sk:?}");
            assert_eq!(mg.stats.taped_steps, t);
            assert!(mg.stats.arena.peak_slots <= Schedule::new(sk, t).unwrap().slots());
            if let ScheduleKind::KAry { k } = sk {
                let depth = (t as f64).log(k as f64).ceil() as usize;
                assert!(mg.stats.arena.peak_slots <= k * depth + 1);
            }
        }
        assert_eq!(base.stats.replayed_steps, p.steps() as u64 - 1);
    }
}

#[test]
fn f32_reference_is_close_to_f64() {
    let (p64, p32) = (ReferenceProblem::new(Reference::R1, DType::F64), ReferenceProblem::new(Reference::R1, DType::F32));
    let (a, b) = (
        metagradient(&p64, &p64.initial_meta(), ScheduleKind::KAry { k: 4 }).unwrap(),
        metagradient(&p32, &p32.initial_meta(), ScheduleKind::KAry { k: 4 }).unwrap(),
    );
    assert!((a.phi - b.phi).abs() < 1e-5 * a.phi.abs());
    for (x, y) in a.grads[0].to_vec_f64().iter().zip(b.grads[0].to_vec_f64()) {
        assert!((x - y).abs() < 1e-3 * x.abs().max(1e-3), "{x} vs {y}");
    }
}

fn rand(shape: &[usize], seed: u64, dt: DType) -> Tensor {
    Tensor::randn(shape.to_vec(), dt, seed)
}

/// The fast (untaped, fused) and taped optimizer paths must give the same bits.
#[test]
fn optimizer_paths_are_bitwise_identical() {
    for dt in [DType::F32, DType::F64] {
        // Below, at and across the fused kernel's 16-element blocks and its parallel chunks.
        let shapes = [vec![3, 5], vec![7], vec![], vec![37], vec![200, 201]];
        let mk = |seed: u64| -> Vec<Tensor> { shapes.iter().enumerate().map(|(i, s)| rand(s, seed * 10 + i as u64, dt)).collect() };
        let (p, g, b) = (mk(1), mk(2), mk(3));
        let v: Vec<Tensor> = mk(4)
            .iter()
            .map(|t| Tensor::from_vec(t.to_vec_f64().iter().map(|x| x * x).collect::<Vec<_>>(), t.shape().clone()).unwrap().to_dtype(dt))
            .collect();
        let consts = |ts: &[Tensor]| -> Vec<Var> { ts.iter().map(|t| Var::constant(t.clone())).collect() };
        let tape = Tape::new();
        let tracked = |ts: &[Tensor]| -> Vec<Var> { ts.iter().map(|t| tape.var(t.clone())).collect() };
        let same = |a: &[Var], b: &[Var], what: &str| {
            for (x, y) in a.iter().zip(b) {
                assert!(y.is_tracked(), "{what}: taped path must be tracked");
                assert!(!x.is_tracked(), "{what}: fast path must be untracked");
                assert!(x.value().bit_eq(y.value()), "{what} {dt}: fast {:?} vs taped {:?}", x.value(), y.value());
            }
        };
        let p0 = Var::constant(p[0].clone());
        for (mom, nesterov) in [(None, false), (Some(0.9), false), (Some(0.8), true)] {
            let opt = Sgd { lr: scalar(0.05, &p0), momentum: mom.map(|m| scalar(m, &p0)), weight_decay: scalar(1e-3, &p0), nesterov };
            let bufs = |f: &dyn Fn(&[Tensor]) -> Vec<Var>| if mom.is_some() { f(&b) } else { vec![] };
            let fast = opt.step(&consts(&p), &consts(&g), &bufs(&consts)).unwrap();
            let slow = opt.step(&tracked(&p), &tracked(&g), &bufs(&tracked)).unwrap();
            same(&fast.0, &slow.0, "sgd params");
            same(&fast.1, &slow.1, "sgd buffers");
        }
        for decoupled in [false, true] {
            let opt = Adam {
                lr: scalar(1e-2, &p0),
                beta1: scalar(0.9, &p0),
                beta2: scalar(0.999, &p0),
                eps: 1e-8,
                eps_root: 1e-9,
                weight_decay: scalar(0.05, &p0),
                decoupled,
            };
            let fast = opt.step(6, &consts(&p), &consts(&g), &consts(&b), &consts(&v)).unwrap();
            let slow = opt.step(6, &tracked(&p), &tracked(&g), &tracked(&b), &tracked(&v)).unwrap();
            same(&fast.0, &slow.0, "adam params");
            same(&fast.1, &slow.1, "adam m");
            same(&fast.2, &slow.2, "adam v");
        }
    }
}

/// x_{t+1} = x_t + sqrt(x_t − c) with c = x_5 at step 5: the derivative of √ at 0 is infinite there.
struct Blowup;
impl Training for Blowup {
    fn steps(&self) -> usize {
        8
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::from_vec(vec![1.0f64, 2.0], [2])?])
    }
    fn step(&self, _: &StepCtx, t: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        let x = s[0].mul(&z[0])?;
        let kink = if t == 5 { x.sub(&x.detach())?.sqrt()? } else { x.mul_scalar(0.0)? };
        Ok(vec![x.add(&kink)?])
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[0].sum_all()
    }
}

#[test]
fn non_finite_adjoint_names_the_step() {
    let z = vec![Tensor::scalar(1.01, DType::F64)];
    match metagradient(&Blowup, &z, ScheduleKind::KAry { k: 2 }) {
        Err(Error::NonFinite { step, msg }) => {
            assert_eq!(step, 5, "{msg}");
            assert!(Error::NonFinite { step, msg }.to_string().contains("step 5"));
        }
        other => panic!("expected NonFinite at step 5, got {other:?}"),
    }
}

/// x_{t+1} = x_t · z, with z = 1e200: the state overflows to infinity at step 1 (1e200 · 1e200).
struct Diverges;
impl Training for Diverges {
    fn steps(&self) -> usize {
        6
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::from_vec(vec![1.0f64], [1])?])
    }
    fn step(&self, _: &StepCtx, _: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        Ok(vec![s[0].mul(&z[0])?])
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[0].sum_all()
    }
}

#[test]
fn diverging_training_names_the_step() {
    let z = vec![Tensor::scalar(1e200, DType::F64)];
    match metagradient(&Diverges, &z, ScheduleKind::KAry { k: 2 }) {
        Err(Error::NonFinite { step, msg }) => assert_eq!(step, 1, "{msg}"),
        other => panic!("expected NonFinite at step 1, got {other:?}"),
    }
}

/// x_{t+1} = x_t·z, y_{t+1} = y_t·z + √(y_t − c) with c = y_5 at step 5: the adjoint of y is infinite
/// from step 5's reverse on, while step 5's own metagradient share is finite (the kink has no z in
/// it); step 4's share is not, and the error must still name step 5 and the tensor.
struct AdjointBlowup;
impl Training for AdjointBlowup {
    fn steps(&self) -> usize {
        8
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::from_vec(vec![1.0f64, 2.0], [2])?, Tensor::from_vec(vec![0.5f64], [1])?])
    }
    fn step(&self, _: &StepCtx, t: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        let kink = if t == 5 { s[1].sub(&s[1].detach())?.sqrt()? } else { s[1].mul_scalar(0.0)? };
        Ok(vec![s[0].mul(&z[0])?, s[1].mul(&z[0])?.add(&kink)?])
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[0].sum_all()?.add(&s[1].sum_all()?)
    }
}

#[test]
fn a_non_finite_state_adjoint_names_the_step_that_produced_it() {
    let z = vec![Tensor::scalar(1.01, DType::F64)];
    for kind in [ScheduleKind::KAry { k: 2 }, ScheduleKind::StoreAll] {
        match metagradient(&AdjointBlowup, &z, kind) {
            Err(Error::NonFinite { step, msg }) => {
                assert_eq!(step, 5, "{kind:?}: {msg}");
                assert!(msg.contains("adjoint of state tensor 1"), "{msg}");
            }
            other => panic!("{kind:?}: expected NonFinite at step 5, got {other:?}"),
        }
    }
}

/// x_{t+1} = x_t · (z at step `at`, else 1), x_0 = 1e200: overflows to infinity at step `at` of 100
/// and stays there (the state is scanned once per segment of CHECK_EVERY steps, not after every step).
struct DivergesAt(usize);
impl Training for DivergesAt {
    fn steps(&self) -> usize {
        100
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::zeros([3], DType::F64), Tensor::from_vec(vec![1e200f64, 1.0], [2])?])
    }
    fn step(&self, _: &StepCtx, t: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        let x = if t == self.0 { s[1].mul(&z[0])? } else { s[1].mul_scalar(1.0)? };
        Ok(vec![s[0].mul_scalar(1.0)?, x])
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[1].sum_all()
    }
}

#[test]
fn divergence_inside_a_check_segment_names_its_step_and_tensor() {
    use metagrad::replay::{train_with, CHECK_EVERY};
    let z = vec![Tensor::scalar(1e200, DType::F64)];
    // At a segment's first, middle and last step, in training and in every schedule's replays.
    for at in [0, CHECK_EVERY - 1, CHECK_EVERY, 37, 99] {
        let mut seen = 0;
        let err = train_with(&DivergesAt(at), &z, |_| {
            seen += 1;
            Ok(())
        });
        match err {
            Err(Error::NonFinite { step, msg }) => {
                assert_eq!(step, at, "{msg}");
                assert!(msg.contains("tensor 1"), "{msg}");
            }
            other => panic!("expected NonFinite at step {at}, got {other:?}"),
        }
        // The observer saw the steps up to the end of the failing segment, at most.
        assert!(seen > at && seen <= (at / CHECK_EVERY + 1) * CHECK_EVERY, "at {at}: observed {seen} steps");
        for kind in [ScheduleKind::KAry { k: 3 }, ScheduleKind::StoreAll] {
            match metagradient(&DivergesAt(at), &z, kind) {
                Err(Error::NonFinite { step, .. }) => assert_eq!(step, at, "{kind:?}"),
                other => panic!("{kind:?}: expected NonFinite at step {at}, got {other:?}"),
            }
        }
    }
}

/// x_{t+1} = x_t·z + c, where c counts the calls of `step` (or, with `noisy_init`, s_0 does): an impure
/// training run of the kind `check_pure` exists to catch.
struct Impure {
    calls: std::cell::Cell<u32>,
    noisy_init: bool,
    from_step: usize,
}
impl Training for Impure {
    fn steps(&self) -> usize {
        10
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        let c = if self.noisy_init { self.calls.replace(self.calls.get() + 1) } else { 0 };
        Ok(vec![Tensor::from_vec(vec![1.0f64 + c as f64, 2.0], [2])?])
    }
    fn step(&self, _: &StepCtx, t: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        let c = if self.noisy_init || t < self.from_step { 0 } else { self.calls.replace(self.calls.get() + 1) };
        Ok(vec![s[0].mul(&z[0])?.add_scalar(c as f64)?])
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[0].sum_all()
    }
}

#[test]
fn check_pure_names_the_step_that_does_not_reproduce() {
    use metagrad::replay::check_pure;
    let z = vec![Tensor::scalar(0.5, DType::F64)];
    // Pure runs pass: the reference problems, and Impure before its counter starts.
    for kind in [Reference::R1, Reference::R2] {
        let p = ReferenceProblem::new(kind, DType::F64);
        check_pure(&p, &p.initial_meta(), 4).unwrap();
    }
    let pure_prefix = Impure { calls: 0.into(), noisy_init: false, from_step: 6 };
    check_pure(&pure_prefix, &z, 6).unwrap();
    // Checking further reaches step 6, whose second run sees a larger counter.
    let e = check_pure(&pure_prefix, &z, 8).unwrap_err();
    assert!(matches!(e, Error::Invalid { op: "check_pure", .. }) && e.to_string().contains("step 6 "), "{e}");
    let e = check_pure(&Impure { calls: 0.into(), noisy_init: false, from_step: 0 }, &z, 3).unwrap_err();
    assert!(e.to_string().contains("step 0 ") && e.to_string().contains("tensor 0"), "{e}");
    let e = check_pure(&Impure { calls: 0.into(), noisy_init: true, from_step: 0 }, &z, 3).unwrap_err();
    assert!(e.to_string().contains("initial_state"), "{e}");
}

struct NoSteps;
impl Training for NoSteps {
    fn steps(&self) -> usize {
        0
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::zeros([1], DType::F64)])
    }
    fn step(&self, _: &StepCtx, _: usize, s: &[Var], _: &[Var]) -> Result<Vec<Var>> {
        Ok(s.to_vec())
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[0].sum_all()
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let e = metagradient(&NoSteps, &[], ScheduleKind::KAry { k: 2 }).unwrap_err();
    assert!(e.to_string().contains("T = 0"), "{e}");
    let p = ReferenceProblem::new(Reference::R1, DType::F64);
    let e = metagradient(&p, &p.initial_meta(), ScheduleKind::KAry { k: 1 }).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }) && e.to_string().contains('k'), "{e}");
    let bad = vec![Tensor::ones([4], DType::F64), Tensor::ones([64], DType::F64)];
    let e = metagradient(&p, &bad, ScheduleKind::KAry { k: 2 }).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("[4]"), "{e}");
}

#[test]
fn metasmoothness_of_simple_algorithms() {
    let z = vec![Tensor::from_vec(vec![0.5f64, -1.0, 2.0], [3]).unwrap()];
    let v = vec![Tensor::from_vec(vec![1.0f64, 1.0, 1.0], [3]).unwrap()];
    // A linear algorithm has the same finite-difference metagradient everywhere: S = 1.
    let linear = |z: &[Tensor]| Ok(vec![Tensor::from_vec(z[0].to_vec_f64().iter().map(|x| 3.0 * x - 1.0).collect::<Vec<_>>(), [3])?]);
    assert!((metasmoothness(linear, &z, &v, 0.1).unwrap() - 1.0).abs() < 1e-12);
    // θ = −(z − z₀ − 1.2h)² turns around between the two differences in every coordinate: Δ₀ > 0 > Δ₁, S = −1.
    let h = 0.1;
    let z1 = z[0].to_vec_f64();
    let skew = move |zz: &[Tensor]| {
        let th: Vec<f64> = zz[0].to_vec_f64().iter().zip(&z1).map(|(x, c)| -(x - c - 1.2 * h).powi(2)).collect();
        Ok(vec![Tensor::from_vec(th, [3])?])
    };
    assert!((metasmoothness(skew, &z, &v, h).unwrap() + 1.0).abs() < 1e-12);
}

#[test]
fn arena_stores_loads_and_refuses_bad_requests() {
    use metagrad::replay::arena::Arena;
    let state = vec![rand(&[3, 2], 1, DType::F64), rand(&[5], 2, DType::F32), Tensor::scalar(7.0, DType::F64)];
    let mut a = Arena::new(2, &state).unwrap();
    // Each tensor padded to 8 bytes: 48 + 24 (20 rounded up) + 8.
    assert_eq!(a.stats().slot_bytes, 80);
    assert_eq!(a.stats().total_bytes, 160);
    a.store(1, 4, &state).unwrap();
    assert_eq!(a.holds(1), Some(4));
    let back = a.load(1).unwrap();
    for (x, y) in back.iter().zip(&state) {
        assert!(x.bit_eq(y));
    }
    assert!(matches!(a.store(1, 5, &state), Err(Error::Invalid { .. })), "occupied slot");
    assert!(matches!(a.store(2, 5, &state), Err(Error::OutOfMemory { .. })), "past the last slot");
    assert!(matches!(a.load(0), Err(Error::Invalid { .. })), "empty slot");
    let e = a.store(0, 5, &state[..2]).unwrap_err();
    assert!(e.to_string().contains("[3, 2] f64"), "{e}");
    a.store(0, 0, &state).unwrap();
    a.free(1).unwrap();
    assert!(matches!(a.free(1), Err(Error::Invalid { .. })), "double free");
    let s = a.stats();
    assert_eq!((s.stores, s.loads, s.peak_slots), (2, 1, 2));
    assert_eq!(s.bytes_copied, 3 * (48 + 20 + 8));
}

#[test]
fn planned_schedule_fits_its_budget_and_matches_stepwise() {
    use metagrad::replay::plan::{plan, StateBytes};
    let p = ReferenceProblem::new(Reference::R2, DType::F64);
    let z = p.initial_meta();
    let sizes = StateBytes::of(&p.initial_state().unwrap(), &z);
    // Room for 5 slots besides the working state and the adjoint.
    let budget = 6 * sizes.state + sizes.adjoint;
    let pl = plan(budget, sizes, p.steps()).unwrap();
    assert_eq!(pl.kind, ScheduleKind::Revolve { slots: 5 });
    let mg = metagradient(&p, &z, pl.kind).unwrap();
    assert_eq!(mg.stats.replayed_steps, pl.expected_replayed_steps);
    assert!(mg.stats.arena.total_bytes as u64 <= budget - sizes.state - sizes.adjoint);
    let base = metagradient(&p, &z, ScheduleKind::StoreAll).unwrap();
    assert!(mg.grads.iter().zip(&base.grads).all(|(a, b)| a.bit_eq(b)));
    let e = plan(sizes.state + sizes.adjoint, sizes, p.steps()).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
}
