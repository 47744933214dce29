//! Property tests for every op, first and second order.
//!
//! For each op y = op(x₁, …) the scalar loss is L = Σ r∘y² (or Σ r∘tanh(y) for √x, where Σ r∘y² = Σ r∘x
//! would have no curvature), with a fixed random r of y's shape, so every op gets a non-trivial Hessian (linear ops included:
//! the HVP differentiates their VJP through the loss). In f64:
//! - ∇L against central differences, h = 1e-6, within |a − n| ≤ 1e-6 + 1e-5·|n| (unless stated);
//! - the reverse-over-reverse H·v against central differences of ∇L, h = 1e-5, within 1e-5 + 1e-4·|n|.
//!
//! Then the op's f32 forward, the f32 ∇L and the f32 H·v are compared with the f64 ones, element by
//! element, as |f32 − f64| ≤ tol·(|f64| + max(‖f64‖∞, 1)): a relative bound plus an absolute one.
//! The absolute part is needed because a result near zero is often a sum of O(1) terms that cancel
//! (inputs, r and v are O(1)), so its f32 rounding error is tol·O(1), not tol·|result|; an exact zero
//! in f64 (e.g. a batch-norm gradient over two samples) comes out as ~1e-8 in f32.
//!
//! Shapes come from proptest (dimensions mostly 1..=4, sometimes 5..=7, size-1 and broadcast dimensions
//! included, total size kept small because finite differences cost 2·numel evaluations per input);
//! values from `Tensor::randn` with a proptest seed. Inputs are kept away from kinks (relu, abs, clamp
//! bounds), from ties (max) and from zero variance (norms), where finite differences are meaningless.
//!
//! The last section checks exact values against hand-derived formulas, independent of the engine.

use approx::{assert_abs_diff_eq, assert_relative_eq};
use metagrad::{grad, gradcheck, hvp, jvp, no_grad, Conv2dOpts, CrossEntropyOpts, DType, Tape, Tensor, Var};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::ops::RangeInclusive;

type TestResult = std::result::Result<(), TestCaseError>;

/// Cases per op: 64 (the whole file runs in a few seconds), or `PROPTEST_CASES` when set.
fn config() -> ProptestConfig {
    match std::env::var("PROPTEST_CASES") {
        Ok(_) => ProptestConfig::default(), // reads PROPTEST_CASES
        Err(_) => ProptestConfig::with_cases(64),
    }
}

// ---------------------------------------------------------------------------------------------------
// The generic check.
// ---------------------------------------------------------------------------------------------------

/// How y = op(x) is turned into a scalar loss.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// L = Σ r∘y².
    Square,
    /// L = Σ r∘tanh(y).
    Tanh,
}

/// Loss and tolerances of one op's checks.
#[derive(Clone, Copy, Debug)]
struct Tol {
    loss: Loss,
    /// (atol, rtol) of the gradient against finite differences (f64).
    grad: (f64, f64),
    /// (atol, rtol) of the HVP against finite differences of the gradient (f64).
    hvp: (f64, f64),
    /// f32-vs-f64 tolerance of the forward value, of the gradient and of the HVP.
    f32: (f64, f64, f64),
}

/// Element-wise ops: each f32 output is a few correctly rounded operations away from the f64 one; the
/// HVP chains up to third derivatives, which amplify the f32 rounding of x more (1e-4).
const ELEMWISE: Tol = Tol { loss: Loss::Square, grad: (1e-6, 1e-5), hvp: (1e-5, 1e-4), f32: (1e-5, 1e-5, 1e-4) };
/// Reductions, matmul and data movement: f32 sums of up to ~50 terms, rounding errors add up.
const REDUCE: Tol = Tol { f32: (1e-5, 1e-4, 1e-4), ..ELEMWISE };
/// Composite layers (softmax, norms, conv, attention): longer chains of f32 rounding in the gradients
/// and HVPs (normalization divides by a standard deviation, softmax subtracts nearly equal terms).
const LAYER: Tol = Tol { f32: (1e-4, 1e-4, 1e-3), ..ELEMWISE };

impl Tol {
    fn tanh(self) -> Tol {
        Tol { loss: Loss::Tanh, ..self }
    }
}

fn ok<T>(what: &str, r: metagrad::Result<T>) -> std::result::Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

/// |a − b| ≤ tol·(|b| + max(‖b‖∞, 1)) element-wise (a: f32 result, b: f64 reference).
fn close(name: &str, what: &str, a: &[f64], b: &[f64], tol: f64) -> TestResult {
    prop_assert_eq!(a.len(), b.len(), "{} {}: lengths differ", name, what);
    let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            (x - y).abs() <= tol * (y.abs() + scale),
            "{name} {what}: element {i}: f32 {x:e} vs f64 {y:e} (diff {:e}, tol {tol:e}, scale {scale:e})",
            (x - y).abs()
        );
    }
    Ok(())
}

fn constants(xs: &[Tensor]) -> Vec<Var> {
    xs.iter().map(|x| Var::constant(x.clone())).collect()
}

/// Checks op (a function of all of `inputs`, all differentiated) in f64 against finite differences,
/// first and second order, and in f32 against f64. `seed` picks the loss weights r and HVP directions v.
fn check_op(name: &str, tol: Tol, seed: u64, inputs: &[Tensor], op: impl Fn(&[Var]) -> metagrad::Result<Var>) -> TestResult {
    let y64 = ok(name, no_grad(|| op(&constants(inputs))))?.value().clone();
    prop_assert_eq!(y64.dtype(), DType::F64);
    let r = Tensor::randn(y64.dims().to_vec(), DType::F64, seed ^ 0x5eed_0f57);
    let loss = |xs: &[Var]| -> metagrad::Result<Var> {
        let y = op(xs)?;
        let r = Var::constant(r.to_dtype(y.dtype()));
        match tol.loss {
            Loss::Square => y.square()?.mul(&r)?.sum_all(),
            Loss::Tanh => y.tanh()?.mul(&r)?.sum_all(),
        }
    };

    // f64: gradient and HVP against finite differences.
    let g = ok(name, gradcheck::check_grad(loss, inputs, 1e-6))?;
    prop_assert!(g.within(tol.grad.0, tol.grad.1), "{} gradient vs finite differences: {}", name, g);
    let v: Vec<Tensor> =
        inputs.iter().enumerate().map(|(i, x)| Tensor::randn(x.dims().to_vec(), DType::F64, seed ^ (0xd1ec_7100 + i as u64))).collect();
    let h = ok(name, gradcheck::check_hvp(loss, inputs, &v, 1e-5))?;
    prop_assert!(h.within(tol.hvp.0, tol.hvp.1), "{} HVP vs finite differences of the gradient: {}", name, h);

    // f32 against f64: forward, gradient, HVP.
    let x32: Vec<Tensor> = inputs.iter().map(|x| x.to_dtype(DType::F32)).collect();
    let y32 = ok(name, no_grad(|| op(&constants(&x32))))?.value().clone();
    prop_assert_eq!(y32.dtype(), DType::F32);
    prop_assert_eq!(y32.dims(), y64.dims());
    close(name, "f32 forward", &y32.to_vec_f64(), &y64.to_vec_f64(), tol.f32.0)?;
    let tape = Tape::new();
    let vars: Vec<Var> = x32.iter().map(|x| tape.var(x.clone())).collect();
    let refs: Vec<&Var> = vars.iter().collect();
    let g32 = ok(name, grad(&ok(name, loss(&vars))?, &refs, false))?;
    for (i, gi) in g32.iter().enumerate() {
        prop_assert_eq!(gi.dtype(), DType::F32);
        close(name, &format!("f32 gradient of input {i}"), &gi.value().to_vec_f64(), &g.analytic[i], tol.f32.1)?;
    }
    let tape = Tape::new();
    let vars: Vec<Var> = x32.iter().map(|x| tape.var(x.clone())).collect();
    let refs: Vec<&Var> = vars.iter().collect();
    let v32: Vec<Tensor> = v.iter().map(|t| t.to_dtype(DType::F32)).collect();
    let h32 = ok(name, hvp(&ok(name, loss(&vars))?, &refs, &v32))?;
    for (i, hi) in h32.iter().enumerate() {
        close(name, &format!("f32 HVP of input {i}"), &hi.to_vec_f64(), &h.analytic[i], tol.f32.2)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Values.
// ---------------------------------------------------------------------------------------------------

fn randn(d: &[usize], seed: u64) -> Tensor {
    Tensor::randn(d.to_vec(), DType::F64, seed)
}

fn map(t: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::from_vec(t.to_vec_f64().into_iter().map(f).collect::<Vec<f64>>(), t.shape().clone()).unwrap()
}

/// exp(0.5·N(0, 1)): positive, mostly in [0.2, 5].
fn positive(d: &[usize], seed: u64) -> Tensor {
    map(&randn(d, seed), |x| (0.5 * x).exp())
}

/// Moves values within `margin` of any of `points` (spaced more than 2·margin apart) to that distance.
fn away(t: &Tensor, points: &[f64], margin: f64) -> Tensor {
    map(t, |mut x| {
        for &p in points {
            if (x - p).abs() < margin {
                x = if x >= p { p + margin } else { p - margin };
            }
        }
        x
    })
}

/// Distinct values in [−2, 2] in a random order, at least 1.6/numel apart: no ties anywhere, even after
/// finite-difference steps.
fn distinct(d: &[usize], seed: u64) -> Tensor {
    let noise = randn(d, seed).to_vec_f64();
    let jitter = Tensor::rand_uniform(d.to_vec(), -0.3, 0.3, DType::F64, seed ^ 0x7177).to_vec_f64();
    let n = noise.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| noise[a].total_cmp(&noise[b]));
    let mut v = vec![0.0; n];
    for (rank, &i) in order.iter().enumerate() {
        v[i] = -2.0 + 4.0 * (rank as f64 + 0.5 + jitter[i]) / n as f64;
    }
    Tensor::from_vec(v, d.to_vec()).unwrap()
}

/// Adds a ramp of step 2 to every group of elements (group(i) for element i) whose biased variance is
/// below 0.1, so normalizations never divide by a vanishing standard deviation.
fn spread(t: &Tensor, group: impl Fn(usize) -> usize) -> Tensor {
    let mut v = t.to_vec_f64();
    let groups = (0..v.len()).map(&group).max().map_or(0, |g| g + 1);
    for gi in 0..groups {
        let idx: Vec<usize> = (0..v.len()).filter(|&i| group(i) == gi).collect();
        let m = idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
        let var = idx.iter().map(|&i| (v[i] - m).powi(2)).sum::<f64>() / idx.len() as f64;
        if idx.len() > 1 && var < 0.1 {
            for (k, &i) in idx.iter().enumerate() {
                v[i] += 2.0 * k as f64;
            }
        }
    }
    Tensor::from_vec(v, t.dims().to_vec()).unwrap()
}

fn s(seed: u64, k: u64) -> u64 {
    seed.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

// ---------------------------------------------------------------------------------------------------
// Shapes.
// ---------------------------------------------------------------------------------------------------

/// Mostly 1..=4 (size 1 included), sometimes 5..=7.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![5 => 1usize..=4, 1 => 5usize..=7]
}

/// A shape of rank in `ranks` with at most `max_numel` elements.
fn dims(ranks: RangeInclusive<usize>, max_numel: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(dim(), ranks)
        .prop_filter("small enough for finite differences", move |d| d.iter().product::<usize>() <= max_numel)
}

/// A shape that broadcasts to `full`: a suffix of it (so ranks may differ) with some dimensions set to 1.
fn broadcastable(full: Vec<usize>) -> impl Strategy<Value = Vec<usize>> {
    let r = full.len();
    (0..=r, prop::collection::vec(any::<bool>(), r))
        .prop_map(move |(drop, ones)| full[drop..].iter().zip(&ones[drop..]).map(|(&d, &one)| if one { 1 } else { d }).collect())
}

/// Two shapes that broadcast together (each a suffix of a common shape, with size-1 dimensions).
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    dims(0..=4, 48).prop_flat_map(|full| (broadcastable(full.clone()), broadcastable(full)))
}

/// (full, small) where small broadcasts to full.
fn broadcast_target() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    dims(0..=4, 48).prop_flat_map(|full| (Just(full.clone()), broadcastable(full)))
}

/// A shape and a subset of its axes (some written negative, in any order), with keepdim.
fn shape_and_axes() -> impl Strategy<Value = (Vec<usize>, Vec<isize>, bool)> {
    dims(0..=4, 48)
        .prop_flat_map(|d| {
            let r = d.len();
            (Just(d), prop::collection::vec(any::<bool>(), r), prop::collection::vec(any::<bool>(), r), any::<bool>(), any::<bool>())
        })
        .prop_map(|(d, pick, neg, rev, keepdim)| {
            let r = d.len() as isize;
            let mut axes: Vec<isize> = (0..r).filter(|&a| pick[a as usize]).map(|a| if neg[a as usize] { a - r } else { a }).collect();
            if rev {
                axes.reverse();
            }
            (d, axes, keepdim)
        })
}

/// A shape of rank ≥ 1 and one of its axes, possibly negative.
fn shape_and_axis(ranks: RangeInclusive<usize>) -> impl Strategy<Value = (Vec<usize>, isize)> {
    dims(ranks, 48).prop_flat_map(|d| {
        let r = d.len() as isize;
        (Just(d), -r..r)
    })
}

// ---------------------------------------------------------------------------------------------------
// Binary ops, with broadcasting.
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    // a + b (broadcast): ∂/∂a = sum_to(g), ∂/∂b = sum_to(g).
    #[test]
    fn add((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        check_op("add", ELEMWISE, seed, &[randn(&sa, s(seed, 1)), randn(&sb, s(seed, 2))], |v| v[0].add(&v[1]))?;
    }

    // a − b (broadcast): ∂/∂a = sum_to(g), ∂/∂b = −sum_to(g).
    #[test]
    fn sub((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        check_op("sub", ELEMWISE, seed, &[randn(&sa, s(seed, 1)), randn(&sb, s(seed, 2))], |v| v[0].sub(&v[1]))?;
    }

    // a·b (broadcast): ∂/∂a = sum_to(g·b), ∂/∂b = sum_to(g·a); the mixed second derivative is g.
    #[test]
    fn mul((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        check_op("mul", ELEMWISE, seed, &[randn(&sa, s(seed, 1)), randn(&sb, s(seed, 2))], |v| v[0].mul(&v[1]))?;
    }

    // a/b (broadcast), |b| ≥ 0.3: ∂/∂a = g/b, ∂/∂b = −g·a/b².
    #[test]
    fn div((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        let b = away(&randn(&sb, s(seed, 2)), &[0.0], 0.3);
        check_op("div", ELEMWISE, seed, &[randn(&sa, s(seed, 1)), b], |v| v[0].div(&v[1]))?;
    }

    // x·x with the same variable on both sides: ∂/∂x = 2x·g (two cotangents accumulate).
    #[test]
    fn mul_self(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("mul_self", ELEMWISE, seed, &[randn(&d, seed)], |v| v[0].mul(&v[0]))?;
    }

    // One operand a constant c (its VJP branch is skipped): x∘c, x/c, c/x (|x|, |c| ≥ 0.3), c − x.
    #[test]
    fn binary_with_constant_operand((sx, sc) in broadcast_pair(), which in 0u8..4, seed in any::<u64>()) {
        let x = away(&randn(&sx, s(seed, 1)), &[0.0], 0.3);
        let c = away(&randn(&sc, s(seed, 2)), &[0.0], 0.3);
        let k = move |v: &Var| Var::constant(c.to_dtype(v.dtype()));
        match which {
            0 => check_op("mul(x, c)", ELEMWISE, seed, &[x], move |v| v[0].mul(&k(&v[0])))?,
            1 => check_op("div(x, c)", ELEMWISE, seed, &[x], move |v| v[0].div(&k(&v[0])))?,
            2 => check_op("div(c, x)", ELEMWISE, seed, &[x], move |v| k(&v[0]).div(&v[0]))?,
            _ => check_op("sub(c, x)", ELEMWISE, seed, &[x], move |v| k(&v[0]).sub(&v[0]))?,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Element-wise unary ops.
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    // −x: ∂ = −g.
    #[test]
    fn neg(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("neg", ELEMWISE, seed, &[randn(&d, seed)], |v| v[0].neg())?;
    }

    // a·x + b: ∂ = a·g.
    #[test]
    fn affine(d in dims(0..=4, 48), a in -2.0f64..2.0, b in -2.0f64..2.0, seed in any::<u64>()) {
        check_op("affine", ELEMWISE, seed, &[randn(&d, seed)], move |v| v[0].affine(a, b))?;
    }

    // x + c: ∂ = g.
    #[test]
    fn add_scalar(d in dims(0..=4, 48), c in -2.0f64..2.0, seed in any::<u64>()) {
        check_op("add_scalar", ELEMWISE, seed, &[randn(&d, seed)], move |v| v[0].add_scalar(c))?;
    }

    // c·x: ∂ = c·g.
    #[test]
    fn mul_scalar(d in dims(0..=4, 48), c in -2.0f64..2.0, seed in any::<u64>()) {
        check_op("mul_scalar", ELEMWISE, seed, &[randn(&d, seed)], move |v| v[0].mul_scalar(c))?;
    }

    // eˣ: ∂ = g·eˣ.
    #[test]
    fn exp(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("exp", ELEMWISE, seed, &[randn(&d, seed)], |v| v[0].exp())?;
    }

    // ln x, x > 0: ∂ = g/x.
    #[test]
    fn log(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("log", ELEMWISE, seed, &[positive(&d, seed)], |v| v[0].log())?;
    }

    // tanh x: ∂ = g·(1 − tanh²x).
    #[test]
    fn tanh(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("tanh", ELEMWISE, seed, &[randn(&d, seed)], |v| v[0].tanh())?;
    }

    // σ(x), x ~ 2·N(0,1) to reach both tails: ∂ = g·σ(1 − σ).
    #[test]
    fn sigmoid(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("sigmoid", ELEMWISE, seed, &[map(&randn(&d, seed), |x| 2.0 * x)], |v| v[0].sigmoid())?;
    }

    // x·Φ(x) (exact GELU): ∂ = g·(Φ(x) + x·φ(x)).
    #[test]
    fn gelu(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("gelu", ELEMWISE, seed, &[map(&randn(&d, seed), |x| 1.5 * x)], |v| v[0].gelu())?;
    }

    // x/2·(1 + tanh(√(2/π)(x + 0.044715x³))).
    #[test]
    fn gelu_tanh(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("gelu_tanh", ELEMWISE, seed, &[map(&randn(&d, seed), |x| 1.5 * x)], |v| v[0].gelu_tanh())?;
    }

    // max(x, 0), |x| ≥ 0.05: ∂ = g·[x > 0], second derivative 0.
    #[test]
    fn relu(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("relu", ELEMWISE, seed, &[away(&randn(&d, seed), &[0.0], 0.05)], |v| v[0].relu())?;
    }

    // √x, x > 0: ∂ = g/(2√x). (Loss Σ r∘tanh(√x): with Σ r∘(√x)² = Σ r∘x the Hessian would vanish.)
    #[test]
    fn sqrt(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("sqrt", ELEMWISE.tanh(), seed, &[positive(&d, seed)], |v| v[0].sqrt())?;
    }

    // 1/√x, x > 0: ∂ = −g/(2x√x).
    #[test]
    fn rsqrt(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("rsqrt", ELEMWISE, seed, &[positive(&d, seed)], |v| v[0].rsqrt())?;
    }

    // xᵖ for real p, x = exp(0.3·N(0, 1)) > 0: ∂ = g·p·xᵖ⁻¹. (The narrower range keeps Σ r∘x²ᵖ small
    // enough for the finite differences' rounding noise, as for powf_integer.)
    #[test]
    fn powf(d in dims(0..=4, 48), p in -2.0f64..3.0, seed in any::<u64>()) {
        check_op("powf", ELEMWISE, seed, &[map(&randn(&d, seed), |x| (0.3 * x).exp())], move |v| v[0].powf(p))?;
    }

    // xᵖ for integer p ∈ {1, 2, 3, 4} and x of any sign: ∂ = g·p·xᵖ⁻¹. (x ~ 0.6·N(0, 1): with x up to 4,
    // Σ r∘x⁸ reaches 1e5 and the finite differences' rounding noise, ~1e-16·|L|/h, would exceed atol.)
    #[test]
    fn powf_integer(d in dims(0..=4, 48), p in 1u32..=4, seed in any::<u64>()) {
        check_op("powf_integer", ELEMWISE, seed, &[map(&randn(&d, seed), |x| 0.6 * x)], move |v| v[0].powf(p as f64))?;
    }

    // |x|, |x| ≥ 0.05: ∂ = g·sign(x).
    #[test]
    fn abs(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("abs", ELEMWISE, seed, &[away(&randn(&d, seed), &[0.0], 0.05)], |v| v[0].abs())?;
    }

    // x²: ∂ = 2x·g.
    #[test]
    fn square(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("square", ELEMWISE, seed, &[randn(&d, seed)], |v| v[0].square())?;
    }

    // clamp(x, lo, hi), x ≥ 0.05 away from both bounds: ∂ = g·[lo ≤ x ≤ hi].
    #[test]
    fn clamp(d in dims(0..=4, 48), lo in -1.0f64..0.0, width in 0.3f64..1.5, seed in any::<u64>()) {
        let hi = lo + width;
        check_op("clamp", ELEMWISE, seed, &[away(&randn(&d, seed), &[lo, hi], 0.05)], move |v| v[0].clamp(lo, hi))?;
    }

    // erf x: ∂ = g·2/√π·e^(−x²).
    #[test]
    fn erf(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("erf", ELEMWISE, seed, &[randn(&d, seed)], |v| v[0].erf())?;
    }

    // sin x, x ~ 2·N(0, 1) (beyond one period): ∂ = g·cos x, second derivative −sin x.
    #[test]
    fn sin(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("sin", ELEMWISE, seed, &[map(&randn(&d, seed), |x| 2.0 * x)], |v| v[0].sin())?;
    }

    // cos x, x ~ 2·N(0, 1): ∂ = −g·sin x, second derivative −cos x.
    #[test]
    fn cos(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("cos", ELEMWISE, seed, &[map(&randn(&d, seed), |x| 2.0 * x)], |v| v[0].cos())?;
    }
}

// ---------------------------------------------------------------------------------------------------
// Selection: maximum, minimum, where_, masked_fill.
// ---------------------------------------------------------------------------------------------------

/// N(0, 1) values snapped to the grid 0.2·ℤ + `offset`: with offsets 0 and 0.1 two such tensors are at
/// least 0.1 apart everywhere, so maximum and minimum never meet a tie, even after finite-difference steps.
fn on_grid(d: &[usize], seed: u64, offset: f64) -> Tensor {
    map(&randn(d, seed), |x| (x / 0.2).round() * 0.2 + offset)
}

/// A 0/1 condition of shape `d` (about half ones), in f64.
fn condition(d: &[usize], seed: u64) -> Tensor {
    map(&randn(d, seed), |x| if x > 0.0 { 1.0 } else { 0.0 })
}

/// Three shapes that broadcast together (each a suffix of a common shape, with size-1 dimensions).
fn broadcast_triple() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>)> {
    dims(0..=4, 48).prop_flat_map(|full| (broadcastable(full.clone()), broadcastable(full.clone()), broadcastable(full)))
}

proptest! {
    #![proptest_config(config())]

    // max(a, b) (broadcast), no ties: ∂/∂a = sum_to(g·[a > b]), ∂/∂b = sum_to(g·[b > a]).
    #[test]
    fn maximum((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        check_op("maximum", ELEMWISE, seed, &[on_grid(&sa, s(seed, 1), 0.0), on_grid(&sb, s(seed, 2), 0.1)], |v| v[0].maximum(&v[1]))?;
    }

    // min(a, b) (broadcast), no ties: ∂/∂a = sum_to(g·[a < b]), ∂/∂b = sum_to(g·[b < a]).
    #[test]
    fn minimum((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        check_op("minimum", ELEMWISE, seed, &[on_grid(&sa, s(seed, 1), 0.1), on_grid(&sb, s(seed, 2), 0.0)], |v| v[0].minimum(&v[1]))?;
    }

    // max(x, c) and min(c, x) with a constant c: only the tracked side's VJP runs.
    #[test]
    fn extremum_with_constant_operand((sx, sc) in broadcast_pair(), max in any::<bool>(), seed in any::<u64>()) {
        let x = on_grid(&sx, s(seed, 1), 0.1);
        let c = on_grid(&sc, s(seed, 2), 0.0);
        let k = move |v: &Var| Var::constant(c.to_dtype(v.dtype()));
        if max {
            check_op("maximum(x, c)", ELEMWISE, seed, &[x], move |v| v[0].maximum(&k(&v[0])))?;
        } else {
            check_op("minimum(c, x)", ELEMWISE, seed, &[x], move |v| k(&v[0]).minimum(&v[0]))?;
        }
    }

    // where(cond, a, b), all three broadcast: ∂/∂a = sum_to(g·cond), ∂/∂b = sum_to(g·(1 − cond)).
    // The condition is f64 0/1 also when a and b are f32 (a condition need not share their dtype).
    #[test]
    fn where_((sc, sa, sb) in broadcast_triple(), seed in any::<u64>()) {
        let cond = condition(&sc, s(seed, 3));
        check_op("where", ELEMWISE, seed, &[randn(&sa, s(seed, 1)), randn(&sb, s(seed, 2))], move |v| Var::where_(&cond, &v[0], &v[1]))?;
    }

    // masked_fill(x, mask, value), the mask broadcast to x: ∂ = g·(1 − mask).
    #[test]
    fn masked_fill((sx, sm) in broadcast_target(), value in -3.0f64..3.0, seed in any::<u64>()) {
        let mask = condition(&sm, s(seed, 3));
        check_op("masked_fill", ELEMWISE, seed, &[randn(&sx, s(seed, 1))], move |v| v[0].masked_fill(&mask, value))?;
    }
}

// ---------------------------------------------------------------------------------------------------
// Reductions.
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    // Σ over an axis subset (keepdim or not): ∂ = g broadcast back.
    #[test]
    fn sum((d, axes, keepdim) in shape_and_axes(), seed in any::<u64>()) {
        check_op("sum", REDUCE, seed, &[randn(&d, seed)], move |v| v[0].sum(&axes, keepdim))?;
    }

    // mean over an axis subset: ∂ = g broadcast back / (product of the reduced sizes).
    #[test]
    fn mean((d, axes, keepdim) in shape_and_axes(), seed in any::<u64>()) {
        check_op("mean", REDUCE, seed, &[randn(&d, seed)], move |v| v[0].mean(&axes, keepdim))?;
    }

    // Σ all: ∂ = g·1.
    #[test]
    fn sum_all(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("sum_all", REDUCE, seed, &[randn(&d, seed)], |v| v[0].sum_all())?;
    }

    // mean of all: ∂ = g/numel.
    #[test]
    fn mean_all(d in dims(0..=4, 48), seed in any::<u64>()) {
        check_op("mean_all", REDUCE, seed, &[randn(&d, seed)], |v| v[0].mean_all())?;
    }

    // max over one axis, distinct values: ∂ = g routed to the argmax.
    #[test]
    fn max((d, axis) in shape_and_axis(1..=4), keepdim in any::<bool>(), seed in any::<u64>()) {
        check_op("max", REDUCE, seed, &[distinct(&d, seed)], move |v| v[0].max(axis, keepdim))?;
    }

    // log Σ exp over one axis: ∂ = g·softmax(x).
    #[test]
    fn logsumexp((d, axis) in shape_and_axis(1..=4), keepdim in any::<bool>(), seed in any::<u64>()) {
        check_op("logsumexp", REDUCE, seed, &[map(&randn(&d, seed), |x| 2.0 * x)], move |v| v[0].logsumexp(axis, keepdim))?;
    }
}

// ---------------------------------------------------------------------------------------------------
// Matmul.
// ---------------------------------------------------------------------------------------------------

/// Batch shapes that broadcast together (ranks 0..=2, sizes 1..=3), for batched matmul.
fn batch_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..=3, 0..=2).prop_flat_map(|full| (broadcastable(full.clone()), broadcastable(full)))
}

proptest! {
    #![proptest_config(config())]

    // A·B, [m, k]·[k, n]: ∂A = G·Bᵀ, ∂B = Aᵀ·G.
    #[test]
    fn matmul_2d(m in 1usize..=5, k in 1usize..=5, n in 1usize..=5, seed in any::<u64>()) {
        check_op("matmul_2d", REDUCE, seed, &[randn(&[m, k], s(seed, 1)), randn(&[k, n], s(seed, 2))], |v| v[0].matmul(&v[1]))?;
    }

    // A·B batched, batch dims broadcast (ranks may differ): ∂A = sum_to(G·Bᵀ), ∂B = sum_to(Aᵀ·G).
    #[test]
    fn matmul_batched((ba, bb) in batch_pair(), m in 1usize..=4, k in 1usize..=4, n in 1usize..=4, seed in any::<u64>()) {
        let a = randn(&[ba, vec![m, k]].concat(), s(seed, 1));
        let b = randn(&[bb, vec![k, n]].concat(), s(seed, 2));
        check_op("matmul_batched", REDUCE, seed, &[a, b], |v| v[0].matmul(&v[1]))?;
    }

    // X·C and C·X with a constant C, batch dims broadcast: only the tracked side's VJP runs.
    #[test]
    fn matmul_with_constant_operand((ba, bb) in batch_pair(), m in 1usize..=4, k in 1usize..=4, n in 1usize..=4, left in any::<bool>(), seed in any::<u64>()) {
        let a = randn(&[ba, vec![m, k]].concat(), s(seed, 1));
        let b = randn(&[bb, vec![k, n]].concat(), s(seed, 2));
        if left {
            check_op("matmul(x, c)", REDUCE, seed, &[a], move |v| v[0].matmul(&Var::constant(b.to_dtype(v[0].dtype()))))?;
        } else {
            check_op("matmul(c, x)", REDUCE, seed, &[b], move |v| Var::constant(a.to_dtype(v[0].dtype())).matmul(&v[0]))?;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Data movement (linear maps: the VJP is the adjoint, and the adjoint's VJP is the map again).
// ---------------------------------------------------------------------------------------------------

/// A shape and another factorization of its size: shuffled, maybe two dimensions merged, maybe a 1 added.
fn reshape_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    dims(0..=4, 48).prop_flat_map(|d| (Just(d.clone()), Just(d).prop_shuffle(), any::<bool>(), any::<bool>())).prop_map(
        |(d, mut t, merge, one)| {
            if merge && t.len() >= 2 {
                let x = t.remove(0);
                t[0] *= x;
            }
            if one {
                t.insert(t.len() / 2, 1);
            }
            (d, t)
        },
    )
}

fn shape_and_perm() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    dims(1..=4, 48).prop_flat_map(|d| {
        let r = d.len();
        (Just(d), Just((0..r).collect::<Vec<usize>>()).prop_shuffle())
    })
}

/// A shape, an axis, and a range start..start+len inside it (len 0 included).
fn narrow_args() -> impl Strategy<Value = (Vec<usize>, usize, usize, usize)> {
    dims(1..=4, 48)
        .prop_flat_map(|d| {
            let r = d.len();
            (Just(d), 0..r)
        })
        .prop_flat_map(|(d, a)| {
            let n = d[a];
            (Just(d), Just(a), 0..=n)
        })
        .prop_flat_map(|(d, a, start)| {
            let n = d[a];
            (Just(d), Just(a), Just(start), 0..=n - start)
        })
}

/// Shapes for concat along an axis: 2 or 3 parts that differ only along it (sizes 0..=3).
fn concat_args() -> impl Strategy<Value = (Vec<Vec<usize>>, isize)> {
    dims(1..=3, 24)
        .prop_flat_map(|d| {
            let r = d.len() as isize;
            (Just(d), -r..r, prop::collection::vec(0usize..=3, 2..=3))
        })
        .prop_map(|(d, axis, lens)| {
            let a = if axis < 0 { (axis + d.len() as isize) as usize } else { axis as usize };
            let parts = lens
                .iter()
                .map(|&l| {
                    let mut p = d.clone();
                    p[a] = l;
                    p
                })
                .collect();
            (parts, axis)
        })
}

/// A shape, an axis, and 1..=6 indices into it (repeats likely).
fn index_select_args() -> impl Strategy<Value = (Vec<usize>, isize, Vec<usize>)> {
    shape_and_axis(1..=4).prop_flat_map(|(d, axis)| {
        let a = if axis < 0 { (axis + d.len() as isize) as usize } else { axis as usize };
        let n = d[a];
        (Just(d), Just(axis), prop::collection::vec(0..n, 1..=6))
    })
}

/// A shape, an axis, the index shape (the input's with the axis resized to 1..=4) and its indices.
fn gather_args() -> impl Strategy<Value = (Vec<usize>, isize, Vec<usize>, Vec<usize>)> {
    shape_and_axis(1..=3).prop_flat_map(|(d, axis)| (Just(d), Just(axis), 1usize..=4)).prop_flat_map(|(d, axis, m)| {
        let a = if axis < 0 { (axis + d.len() as isize) as usize } else { axis as usize };
        let mut is = d.clone();
        is[a] = m;
        let (n, numel) = (d[a], is.iter().product::<usize>());
        (Just(d), Just(axis), Just(is), prop::collection::vec(0..n, numel))
    })
}

proptest! {
    #![proptest_config(config())]

    // reshape: ∂ = g reshaped back.
    #[test]
    fn reshape((d, to) in reshape_pair(), seed in any::<u64>()) {
        check_op("reshape", REDUCE, seed, &[randn(&d, seed)], move |v| v[0].reshape(to.clone()))?;
    }

    // transpose(a, b) (negative axes too): ∂ = gᵀ.
    #[test]
    fn transpose((d, a) in shape_and_axis(1..=4), b in 0usize..4, seed in any::<u64>()) {
        let b = (b % d.len()) as isize;
        check_op("transpose", REDUCE, seed, &[randn(&d, seed)], move |v| v[0].transpose(a, b))?;
    }

    // permute: ∂ = g permuted by the inverse.
    #[test]
    fn permute((d, perm) in shape_and_perm(), seed in any::<u64>()) {
        check_op("permute", REDUCE, seed, &[randn(&d, seed)], move |v| v[0].permute(&perm))?;
    }

    // broadcast_to (rank-raising, size-1 dims): ∂ = sum_to(g).
    #[test]
    fn broadcast_to((full, small) in broadcast_target(), seed in any::<u64>()) {
        let to = metagrad::Shape::new(full);
        check_op("broadcast_to", REDUCE, seed, &[randn(&small, seed)], move |v| v[0].broadcast_to(&to))?;
    }

    // sum_to (the adjoint of broadcast_to): ∂ = g broadcast back.
    #[test]
    fn sum_to((full, small) in broadcast_target(), seed in any::<u64>()) {
        let to = metagrad::Shape::new(small);
        check_op("sum_to", REDUCE, seed, &[randn(&full, seed)], move |v| v[0].sum_to(&to))?;
    }

    // narrow(axis, start, len) (len 0 included): ∂ = g zero-padded back.
    #[test]
    fn narrow((d, a, start, len) in narrow_args(), seed in any::<u64>()) {
        check_op("narrow", REDUCE, seed, &[randn(&d, seed)], move |v| v[0].narrow(a as isize, start, len))?;
    }

    // concat of 2-3 parts along an axis (empty parts included): ∂ of each part = its slice of g.
    #[test]
    fn concat((parts, axis) in concat_args(), seed in any::<u64>()) {
        let xs: Vec<Tensor> = parts.iter().enumerate().map(|(i, p)| randn(p, s(seed, i as u64))).collect();
        check_op("concat", REDUCE, seed, &xs, move |v| Var::concat(&v.iter().collect::<Vec<_>>(), axis))?;
    }

    // index_select with repeated indices: ∂ = scatter-add of g (repeats accumulate).
    #[test]
    fn index_select((d, axis, idx) in index_select_args(), seed in any::<u64>()) {
        check_op("index_select", REDUCE, seed, &[randn(&d, seed)], move |v| v[0].index_select(axis, &idx))?;
    }

    // gather along an axis: ∂ = scatter-add of g.
    #[test]
    fn gather((d, axis, is, idx) in gather_args(), seed in any::<u64>()) {
        check_op("gather", REDUCE, seed, &[randn(&d, seed)], move |v| v[0].gather(axis, &idx, is.clone()))?;
    }
}

// ---------------------------------------------------------------------------------------------------
// softmax and cross-entropy.
// ---------------------------------------------------------------------------------------------------

/// Logits [N, C] and labels.
fn ce_args() -> impl Strategy<Value = (usize, usize, Vec<usize>)> {
    (1usize..=5, 1usize..=5).prop_flat_map(|(n, c)| (Just(n), Just(c), prop::collection::vec(0..c, n)))
}

/// Logits of shape lead ++ [C] (lead of rank 0..=2) and one label per position, about a fifth of them
/// the ignore value 7 (out of range for C ≤ 5, as ignore values often are) when `ignore`.
fn ce_with_args() -> impl Strategy<Value = (Vec<usize>, usize, Vec<usize>, bool)> {
    (prop::collection::vec(1usize..=3, 0..=2), 1usize..=5, any::<bool>()).prop_flat_map(|(lead, c, ignore)| {
        let n: usize = lead.iter().product();
        let label = if ignore { prop_oneof![4 => 0..c, 1 => Just(7usize)].boxed() } else { (0..c).boxed() };
        (Just(lead), Just(c), prop::collection::vec(label, n), Just(ignore))
    })
}

proptest! {
    #![proptest_config(config())]

    // softmax over any axis: ∂ = y∘(g − Σ g∘y).
    #[test]
    fn softmax((d, axis) in shape_and_axis(1..=4), seed in any::<u64>()) {
        check_op("softmax", LAYER, seed, &[map(&randn(&d, seed), |x| 2.0 * x)], move |v| v[0].softmax(axis))?;
    }

    // log_softmax over any axis: ∂ = g − softmax·Σg.
    #[test]
    fn log_softmax((d, axis) in shape_and_axis(1..=4), seed in any::<u64>()) {
        check_op("log_softmax", LAYER, seed, &[map(&randn(&d, seed), |x| 2.0 * x)], move |v| v[0].log_softmax(axis))?;
    }

    // CEᵢ = −log softmax(xᵢ)[labelᵢ]: ∂ = (softmax − onehot)·g.
    #[test]
    fn cross_entropy_per_example((n, c, labels) in ce_args(), seed in any::<u64>()) {
        check_op("cross_entropy_per_example", LAYER, seed, &[randn(&[n, c], seed)], move |v| v[0].cross_entropy_per_example(&labels))?;
    }

    // (1/N) Σᵢ CEᵢ without weights, with constant weights, and with weights as a differentiated input
    // (∂w = CE/N, and the mixed second derivative ∂²/∂x∂w = (softmax − onehot)/N).
    #[test]
    fn cross_entropy((n, c, labels) in ce_args(), weights in 0u8..3, seed in any::<u64>()) {
        let x = randn(&[n, c], seed);
        let w = randn(&[n], s(seed, 1));
        match weights {
            0 => check_op("cross_entropy", LAYER, seed, &[x], move |v| v[0].cross_entropy(&labels, None))?,
            1 => check_op("cross_entropy(const w)", LAYER, seed, &[x], move |v| {
                v[0].cross_entropy(&labels, Some(&Var::constant(w.to_dtype(v[0].dtype()))))
            })?,
            _ => check_op("cross_entropy(w)", LAYER, seed, &[x, w], move |v| v[0].cross_entropy(&labels, Some(&v[1])))?,
        }
    }

    // (1/K) Σ_{i kept} wᵢ·ℓᵢ over logits [.., C] with ignored positions and label smoothing ε, without
    // weights and with weights as a differentiated input: every derivative comes from index_select,
    // log_softmax, gather and mean.
    #[test]
    fn cross_entropy_with((lead, c, labels, ignore) in ce_with_args(), eps in prop_oneof![Just(0.0f64), Just(1.0), 0.0f64..1.0], weighted in any::<bool>(), seed in any::<u64>()) {
        let x = map(&randn(&[lead.clone(), vec![c]].concat(), seed), |x| 2.0 * x);
        let w = randn(&lead, s(seed, 1));
        fn opts(ignore: bool, eps: f64, weights: Option<&Var>) -> CrossEntropyOpts<'_> {
            CrossEntropyOpts { ignore_index: ignore.then_some(7), label_smoothing: eps, weights }
        }
        if weighted {
            check_op("cross_entropy_with(w)", LAYER, seed, &[x, w], move |v| v[0].cross_entropy_with(&labels, opts(ignore, eps, Some(&v[1]))))?;
        } else {
            check_op("cross_entropy_with", LAYER, seed, &[x], move |v| v[0].cross_entropy_with(&labels, opts(ignore, eps, None)))?;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Normalization.
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    // (x − mean)/√(var + eps) over the last axis, then ·w + b when given; w and b differentiated.
    #[test]
    fn layer_norm(lead in prop::collection::vec(1usize..=3, 0..=2), dl in 2usize..=5, hw in any::<bool>(), hb in any::<bool>(), seed in any::<u64>()) {
        let d = [lead, vec![dl]].concat();
        let mut xs = vec![spread(&randn(&d, seed), |i| i / dl)];
        if hw { xs.push(randn(&[dl], s(seed, 1))); }
        if hb { xs.push(randn(&[dl], s(seed, 2))); }
        check_op("layer_norm", LAYER, seed, &xs, move |v| v[0].layer_norm(hw.then(|| &v[1]), hb.then(|| &v[v.len() - 1]), 1e-5))?;
    }

    // Per channel over [N, C, ...]: (x − mean)/√(var + eps)·γ + β; x, γ, β differentiated.
    #[test]
    fn batch_norm(n in 1usize..=3, c in 1usize..=3, rest in prop::collection::vec(1usize..=3, 0..=2), seed in any::<u64>()) {
        let inner: usize = rest.iter().product();
        prop_assume!(n * inner >= 2);
        let d = [vec![n, c], rest].concat();
        let x = spread(&randn(&d, seed), |i| (i / inner) % c);
        let xs = [x, randn(&[c], s(seed, 1)), randn(&[c], s(seed, 2))];
        check_op("batch_norm", LAYER, seed, &xs, |v| v[0].batch_norm(&v[1], &v[2], 1e-5))?;
    }
}

// ---------------------------------------------------------------------------------------------------
// Convolution, pooling, attention.
// ---------------------------------------------------------------------------------------------------

/// (stride, padding, dilation) per direction.
fn window() -> impl Strategy<Value = Conv2dOpts> {
    ((1usize..=2, 1usize..=2), (0usize..=2, 0usize..=2), (1usize..=2, 1usize..=2)).prop_map(|(stride, padding, dilation)| Conv2dOpts {
        stride,
        padding,
        dilation,
    })
}

/// The smallest input size the window fits in, plus `extra`.
fn fit(k: usize, padding: usize, dilation: usize, extra: usize) -> usize {
    (dilation * (k - 1) + 1).saturating_sub(2 * padding).max(1) + extra
}

proptest! {
    #![proptest_config(config())]

    // y = conv(x, w) + b: ∂x = conv_transpose(g, w), ∂w = correlate(x, g), ∂b = Σ g; x, w, b differentiated.
    #[test]
    fn conv2d(
        (n, c, o) in (1usize..=2, 1usize..=3, 1usize..=3),
        (kh, kw) in (1usize..=3, 1usize..=3),
        opts in window(),
        (eh, ew) in (0usize..=3, 0usize..=3),
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (h, w) = (fit(kh, opts.padding.0, opts.dilation.0, eh), fit(kw, opts.padding.1, opts.dilation.1, ew));
        prop_assume!(n * c * h * w <= 160);
        let mut xs = vec![randn(&[n, c, h, w], s(seed, 1)), randn(&[o, c, kh, kw], s(seed, 2))];
        if bias { xs.push(randn(&[o], s(seed, 3))); }
        check_op("conv2d", LAYER, seed, &xs, move |v| v[0].conv2d(&v[1], bias.then(|| &v[2]), opts))?;
    }

    // Average over kh×kw windows (zero padding counted): ∂ = g spread back over each window / (kh·kw).
    #[test]
    fn avg_pool2d(
        (n, c) in (1usize..=2, 1usize..=2),
        (kh, kw) in (1usize..=3, 1usize..=3),
        opts in window(),
        (eh, ew) in (0usize..=3, 0usize..=3),
        seed in any::<u64>(),
    ) {
        let (h, w) = (fit(kh, opts.padding.0, opts.dilation.0, eh), fit(kw, opts.padding.1, opts.dilation.1, ew));
        check_op("avg_pool2d", REDUCE, seed, &[randn(&[n, c, h, w], seed)], move |v| v[0].avg_pool2d((kh, kw), opts))?;
    }

    // softmax(c·Q·Kᵀ [+ causal mask])·V with Nq and Nk independent; Q, K, V differentiated.
    #[test]
    fn attention(
        batch in prop::collection::vec(1usize..=2, 0..=2),
        (nq, nk, d, dv) in (1usize..=4, 1usize..=4, 1usize..=4, 1usize..=3),
        scale in 0.2f64..1.2,
        causal in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let q = randn(&[batch.clone(), vec![nq, d]].concat(), s(seed, 1));
        let k = randn(&[batch.clone(), vec![nk, d]].concat(), s(seed, 2));
        let v = randn(&[batch, vec![nk, dv]].concat(), s(seed, 3));
        check_op("attention", LAYER, seed, &[q, k, v], move |x| x[0].attention(&x[1], &x[2], scale, causal))?;
    }
}

// ---------------------------------------------------------------------------------------------------
// Exact values against hand-derived formulas.
// ---------------------------------------------------------------------------------------------------

type UnaryFn = dyn Fn(&Var) -> metagrad::Result<Var>;

fn t1(v: &[f64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), [v.len()]).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64()
}

/// d/dx tanh = sech²x and d²/dx² tanh = −2·tanh x·sech²x at fixed points.
#[test]
fn exact_tanh_first_and_second_derivative() {
    let xs = [-1.5, -0.3, 0.0, 0.7, 2.0];
    let tape = Tape::new();
    let x = tape.var(t1(&xs));
    let g = grad(&x.tanh().unwrap().sum_all().unwrap(), &[&x], true).unwrap().remove(0);
    // Σ tanh is separable, so the gradient of Σ ∂ is the Hessian's diagonal.
    let g2 = grad(&g.sum_all().unwrap(), &[&x], false).unwrap().remove(0);
    for (i, &xi) in xs.iter().enumerate() {
        let sech2 = 1.0 / xi.cosh().powi(2);
        assert_relative_eq!(vals(g.value())[i], sech2, max_relative = 1e-14);
        assert_abs_diff_eq!(vals(g2.value())[i], -2.0 * xi.tanh() * sech2, epsilon = 1e-14);
    }
}

/// σ' = σ(1 − σ), erf' = 2/√π·e^(−x²), gelu_tanh' from its closed form, relu'(0) = abs'(0) = 0.
#[test]
fn exact_unary_derivatives() {
    let xs = [-2.0, -0.5, 0.0, 0.25, 1.75];
    let d = |f: &UnaryFn| -> Vec<f64> {
        let tape = Tape::new();
        let x = tape.var(t1(&xs));
        vals(grad(&f(&x).unwrap().sum_all().unwrap(), &[&x], false).unwrap()[0].value())
    };
    let (sig, erf, gt) = (d(&|x| x.sigmoid()), d(&|x| x.erf()), d(&|x| x.gelu_tanh()));
    for (i, &x) in xs.iter().enumerate() {
        let s = 1.0 / (1.0 + (-x).exp());
        assert_relative_eq!(sig[i], s * (1.0 - s), max_relative = 1e-14);
        assert_relative_eq!(erf[i], 2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp(), max_relative = 1e-14);
        // u = √(2/π)(x + 0.044715x³): d/dx x/2·(1 + tanh u) = (1 + tanh u)/2 + x/2·sech²u·u'.
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let u = c * (x + 0.044715 * x.powi(3));
        let du = c * (1.0 + 3.0 * 0.044715 * x * x);
        assert_relative_eq!(gt[i], 0.5 * (1.0 + u.tanh()) + 0.5 * x * du / u.cosh().powi(2), max_relative = 1e-13);
    }
    let at0 = |f: &UnaryFn| {
        let tape = Tape::new();
        let x = tape.var(Tensor::scalar(0.0, DType::F64));
        grad(&f(&x).unwrap(), &[&x], false).unwrap()[0].value().to_scalar().unwrap()
    };
    assert_eq!(at0(&|x| x.relu()), 0.0);
    assert_eq!(at0(&|x| x.abs()), 0.0);
}

/// softmax's Jacobian-vector product: J·v = y∘(v − ⟨y, v⟩), y computed by hand.
#[test]
fn exact_softmax_jvp() {
    let (xs, v) = ([0.3, -1.2, 2.0, 0.5], [1.0, -0.5, 0.25, 2.0]);
    let e: Vec<f64> = xs.iter().map(|x: &f64| x.exp()).collect();
    let z: f64 = e.iter().sum();
    let y: Vec<f64> = e.iter().map(|e| e / z).collect();
    let yv: f64 = y.iter().zip(&v).map(|(a, b)| a * b).sum();
    let tape = Tape::new();
    let x = tape.var(t1(&xs));
    let out = x.softmax(0).unwrap();
    let jv = vals(&jvp(&tape, &out, &[&x], &[t1(&v)]).unwrap());
    for i in 0..4 {
        assert_relative_eq!(vals(out.value())[i], y[i], max_relative = 1e-14);
        assert_abs_diff_eq!(jv[i], y[i] * (v[i] - yv), epsilon = 1e-14);
    }
}

/// ∂/∂x of mean cross-entropy = (softmax(x) − onehot(label))/N, by hand.
#[test]
fn exact_cross_entropy_gradient() {
    let xs: [[f64; 3]; 2] = [[0.1, 2.0, -1.0], [1.5, 0.0, 0.3]];
    let labels = [2, 0];
    let tape = Tape::new();
    let x = tape.var(Tensor::from_vec(xs.concat(), [2, 3]).unwrap());
    let l = x.cross_entropy(&labels, None).unwrap();
    let g = vals(grad(&l, &[&x], false).unwrap()[0].value());
    let mut want_loss = 0.0;
    for (i, row) in xs.iter().enumerate() {
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        want_loss += (z.ln() - row[labels[i]]) / 2.0;
        for j in 0..3 {
            let onehot = if j == labels[i] { 1.0 } else { 0.0 };
            assert_abs_diff_eq!(g[i * 3 + j], (row[j].exp() / z - onehot) / 2.0, epsilon = 1e-15);
        }
    }
    assert_relative_eq!(l.value().to_scalar().unwrap(), want_loss, max_relative = 1e-14);
}

/// The HVP of Σx³ is 6x∘v (through powf, and through x·x·x).
#[test]
fn exact_hvp_of_sum_of_cubes() {
    let (xs, v) = ([0.5, -1.0, 2.0, -0.25], [1.0, 2.0, -0.5, 3.0]);
    let cubes: [&UnaryFn; 2] = [&|x| x.powf(3.0), &|x| x.mul(x)?.mul(x)];
    for cube in cubes {
        let tape = Tape::new();
        let x = tape.var(t1(&xs));
        let hv = vals(&hvp(&cube(&x).unwrap().sum_all().unwrap(), &[&x], &[t1(&v)]).unwrap()[0]);
        for i in 0..4 {
            assert_relative_eq!(hv[i], 6.0 * xs[i] * v[i], max_relative = 1e-14);
        }
    }
}

/// The HVP of the quadratic form xᵀAx (A not symmetric) is (A + Aᵀ)v.
#[test]
fn exact_hvp_of_quadratic_form() {
    let n = 4;
    let a = Tensor::randn([n, n], DType::F64, 42);
    let (av, xs, v) = (vals(&a), vals(&Tensor::randn([n], DType::F64, 43)), vals(&Tensor::randn([n], DType::F64, 44)));
    let tape = Tape::new();
    let x = tape.var(t1(&xs));
    let am = Var::constant(a);
    let q = x.reshape([1, n]).unwrap().matmul(&am).unwrap().matmul(&x.reshape([n, 1]).unwrap()).unwrap().sum_all().unwrap();
    let hv = vals(&hvp(&q, &[&x], &[t1(&v)]).unwrap()[0]);
    for i in 0..n {
        let want: f64 = (0..n).map(|j| (av[i * n + j] + av[j * n + i]) * v[j]).sum();
        assert_relative_eq!(hv[i], want, max_relative = 1e-13);
    }
}

/// jvp of Y = X·W: in X alone it is V·W; in (X, W) together it is V·W + X·U.
#[test]
fn exact_jvp_of_matmul() {
    let (m, k, n) = (2, 3, 4);
    let [x, w, vx, vw] = [[m, k], [k, n], [m, k], [k, n]].map(|d| Tensor::randn(d, DType::F64, d[0] as u64 * 7 + d[1] as u64));
    let mm = |a: &[f64], b: &[f64]| -> Vec<f64> { (0..m * n).map(|p| (0..k).map(|q| a[p / n * k + q] * b[q * n + p % n]).sum()).collect() };
    let tape = Tape::new();
    let (xv, wv) = (tape.var(x.clone()), tape.var(w.clone()));
    let y = xv.matmul(&wv).unwrap();
    let j1 = vals(&jvp(&tape, &y, &[&xv], std::slice::from_ref(&vx)).unwrap());
    let j2 = vals(&jvp(&tape, &y, &[&xv, &wv], &[vx.clone(), vw.clone()]).unwrap());
    let (vxw, xvw) = (mm(&vals(&vx), &vals(&w)), mm(&vals(&x), &vals(&vw)));
    for p in 0..m * n {
        assert_relative_eq!(j1[p], vxw[p], max_relative = 1e-13);
        assert_relative_eq!(j2[p], vxw[p] + xvw[p], max_relative = 1e-13);
    }
}

/// Derivatives of every order: d/dx x⁴ = 4x³, d² = 12x², d³ = 24x, d⁴ = 24, d⁵ = 0; at x = 2 the third
/// is 48. Through powf and through x·x·x·x.
#[test]
fn exact_higher_order_derivatives_of_x4() {
    let quartics: [&UnaryFn; 2] = [&|x| x.powf(4.0), &|x| x.mul(x)?.mul(x)?.mul(x)];
    for quartic in quartics {
        let tape = Tape::new();
        let x = tape.var(Tensor::scalar(2.0, DType::F64));
        let mut d = quartic(&x).unwrap();
        let mut got = vec![];
        for _ in 0..5 {
            d = grad(&d, &[&x], true).unwrap().remove(0);
            got.push(d.value().to_scalar().unwrap());
        }
        assert_eq!(got, vec![32.0, 48.0, 48.0, 24.0, 0.0]);
    }
}

/// max routes the gradient to the first maximum on ties.
#[test]
fn exact_max_gradient_goes_to_first_maximum() {
    let tape = Tape::new();
    let x = tape.var(Tensor::from_vec(vec![1.0, 3.0, 3.0, 2.0, 5.0, 5.0], [2, 3]).unwrap());
    let g = grad(&x.max(1, false).unwrap().sum_all().unwrap(), &[&x], false).unwrap();
    assert_eq!(vals(g[0].value()), vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
}

/// Zero-size tensors (a 0 after the reduced axis made `sum_axis` panic): forward, gradient and HVP run
/// and give empty or zero results of the right shapes.
#[test]
fn zero_size_tensors_first_and_second_order() {
    fn z(d: &[usize]) -> Tensor {
        Tensor::zeros(d.to_vec(), DType::F64)
    }
    let cases: Vec<(&str, Vec<usize>, Box<UnaryFn>)> = vec![
        ("sum over axis 0 of [2, 0]", vec![2, 0], Box::new(|v| v.sum(&[0], false))),
        ("mean over axis 0 of [2, 0]", vec![2, 0], Box::new(|v| v.mean(&[0], true))),
        ("max over axis 0 of [3, 0]", vec![3, 0], Box::new(|v| v.max(0, false))),
        ("logsumexp over axis 0 of [2, 0]", vec![2, 0], Box::new(|v| v.logsumexp(0, false))),
        ("softmax over axis 0 of [3, 0]", vec![3, 0], Box::new(|v| v.softmax(0))),
        ("log_softmax over axis 0 of [3, 0]", vec![3, 0], Box::new(|v| v.log_softmax(0))),
        ("sum_to [2, 0] -> [0]", vec![2, 0], Box::new(|v| v.sum_to(&metagrad::Shape::new([0])))),
        ("[2, 0] + [1, 0]", vec![2, 0], Box::new(|v| v.add(&Var::constant(z(&[1, 0]))))),
        ("[1, 0] * [3, 0]", vec![1, 0], Box::new(|v| v.mul(&Var::constant(z(&[3, 0]))))),
        ("matmul [2, 0] x [0, 3]", vec![2, 0], Box::new(|v| v.matmul(&Var::constant(z(&[0, 3]))))),
        ("matmul [0, 2, 2] x [2, 3]", vec![0, 2, 2], Box::new(|v| v.matmul(&Var::constant(z(&[2, 3]))))),
        ("narrow to length 0", vec![2, 3], Box::new(|v| v.narrow(1, 1, 0))),
        ("index_select of nothing", vec![2, 3], Box::new(|v| v.index_select(1, &[]))),
    ];
    for (name, d, f) in cases {
        let tape = Tape::new();
        let x = tape.var(z(&d));
        let y = f(&x).unwrap_or_else(|e| panic!("{name}: {e}"));
        let l = y.square().unwrap().sum_all().unwrap().add(&y.sum_all().unwrap()).unwrap();
        let g = grad(&l, &[&x], true).unwrap().remove(0);
        let h = grad(&g.sum_all().unwrap(), &[&x], false).unwrap().remove(0);
        assert_eq!(g.dims(), &d[..], "{name}");
        assert_eq!(h.dims(), &d[..], "{name}");
        assert!(g.value().to_vec_f64().iter().chain(&h.value().to_vec_f64()).all(|&e| e == 0.0), "{name}");
    }
}

/// sin and cos against f64 `std` (f64: within 2 ulps, as two libms may differ in the last bit; f32:
/// within one f32 ulp of the f64 value rounded), and their first and second derivatives: sin' = cos,
/// sin'' = −sin, cos' = −sin, cos'' = −cos.
#[test]
fn exact_sin_cos_values_and_derivatives() {
    let xs = [-7.5, -3.0, -1.0, -0.0, 0.0, 1e-8, 0.5, std::f64::consts::FRAC_PI_2, 3.0, 10.0, 123.456, 1e6];
    type Pair = (&'static str, fn(f64) -> f64, fn(f64) -> f64, fn(f64) -> f64, &'static UnaryFn);
    let ops: [Pair; 2] =
        [("sin", f64::sin, f64::cos, |x| -x.sin(), &|x| x.sin()), ("cos", f64::cos, |x| -x.sin(), |x| -x.cos(), &|x| x.cos())];
    for (name, f, d1, d2, op) in ops {
        let tape = Tape::new();
        let x = tape.var(t1(&xs));
        let y = op(&x).unwrap();
        let g = grad(&y.sum_all().unwrap(), &[&x], true).unwrap().remove(0);
        let g2 = grad(&g.sum_all().unwrap(), &[&x], false).unwrap().remove(0);
        let (y, g, g2) = (vals(y.value()), vals(g.value()), vals(g2.value()));
        for (i, &xi) in xs.iter().enumerate() {
            assert_relative_eq!(y[i], f(xi), max_relative = 4.5e-16, epsilon = 1e-300);
            assert_relative_eq!(g[i], d1(xi), max_relative = 4.5e-16, epsilon = 1e-300);
            assert_relative_eq!(g2[i], d2(xi), max_relative = 4.5e-16, epsilon = 1e-300);
        }
        // sin(±0) keeps the sign; f32 values are the f64 values rounded (to within one ulp).
        let y32 = op(&Var::constant(t1(&xs).to_dtype(DType::F32))).unwrap().value().to_vec::<f32>().unwrap();
        for (i, &xi) in xs.iter().enumerate() {
            let want = f(xi as f32 as f64) as f32;
            let ulp = (want.abs().max(f32::MIN_POSITIVE) * f32::EPSILON) as f64;
            assert!((y32[i] as f64 - want as f64).abs() <= ulp, "{name}_f32({xi}) = {:e}, want {want:e}", y32[i]);
        }
    }
    let z = Tensor::from_vec(vec![-0.0f32, 0.0], [2]).unwrap();
    let s = z.sin().unwrap().to_vec::<f32>().unwrap();
    assert!(s[0].is_sign_negative() && s[0] == 0.0 && s[1].is_sign_positive() && s[1] == 0.0);
    let special = Tensor::from_vec(vec![f64::INFINITY, f64::NEG_INFINITY, f64::NAN], [3]).unwrap();
    assert!(special.sin().unwrap().to_vec_f64().iter().chain(&special.cos().unwrap().to_vec_f64()).all(|v| v.is_nan()));
}

/// maximum and minimum: values (NaN propagates from either side, ties keep a's value) and gradients
/// (the cotangent goes to the operand taken; a tie or a NaN sends all of it to a), with broadcasting.
#[test]
fn exact_maximum_minimum_values_and_tie_rule() {
    let a = [1.0, 2.0, 3.0, f64::NAN, 5.0, -0.0, f64::NEG_INFINITY];
    let b = [2.0, 2.0, 1.0, 0.0, f64::NAN, 0.0, f64::NEG_INFINITY];
    let tape = Tape::new();
    let (va, vb) = (tape.var(t1(&a)), tape.var(t1(&b)));
    let mx = va.maximum(&vb).unwrap();
    let mn = va.minimum(&vb).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| if x.is_nan() { u64::MAX } else { x.to_bits() }).collect::<Vec<u64>>();
    assert_eq!(bits(&vals(mx.value())), bits(&[2.0, 2.0, 3.0, f64::NAN, f64::NAN, -0.0, f64::NEG_INFINITY]));
    assert_eq!(bits(&vals(mn.value())), bits(&[1.0, 2.0, 1.0, f64::NAN, f64::NAN, -0.0, f64::NEG_INFINITY]));
    let ga = grad(&mx.sum_all().unwrap(), &[&va, &vb], false).unwrap();
    assert_eq!(vals(ga[0].value()), vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    assert_eq!(vals(ga[1].value()), vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let tape = Tape::new();
    let (va, vb) = (tape.var(t1(&a)), tape.var(t1(&b)));
    let gi = grad(&va.minimum(&vb).unwrap().sum_all().unwrap(), &[&va, &vb], false).unwrap();
    assert_eq!(vals(gi[0].value()), vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    assert_eq!(vals(gi[1].value()), vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    // Broadcasting: max(x [2, 3], 0 [] ) is relu with the tie at 0 going to x; the scalar's gradient
    // sums the positions it wins.
    let tape = Tape::new();
    let x = tape.var(Tensor::from_vec(vec![-1.0, 0.0, 2.0, -3.0, 4.0, -0.5], [2, 3]).unwrap());
    let z = tape.var(Tensor::scalar(0.0, DType::F64));
    let y = x.maximum(&z).unwrap();
    assert_eq!(vals(y.value()), vec![0.0, 0.0, 2.0, 0.0, 4.0, 0.0]);
    let g = grad(&y.sum_all().unwrap(), &[&x, &z], true).unwrap();
    assert_eq!(vals(g[0].value()), vec![0.0, 1.0, 1.0, 0.0, 1.0, 0.0]);
    assert_eq!(vals(g[1].value()), vec![3.0]);
    // The gradient is itself differentiable (second derivative zero).
    let h = grad(&g[0].sum_all().unwrap().add(&g[1].sum_all().unwrap()).unwrap(), &[&x, &z], false).unwrap();
    assert!(h.iter().all(|h| vals(h.value()).iter().all(|&v| v == 0.0)));
    // The Tensor forms give the same values.
    assert!(t1(&a).maximum(&t1(&b)).unwrap().bit_eq(mx.value()));
    assert!(t1(&a).minimum(&t1(&b)).unwrap().bit_eq(mn.value()));
}

/// where_ and masked_fill: exact selection (an ∞ or NaN in the branch not taken never leaks, −0 is
/// kept), broadcasting of all three operands, conditions of another dtype (f32 for f64 operands, bf16,
/// any nonzero value and NaN counting as true), and gradients routed by the condition.
#[test]
fn exact_where_and_masked_fill() {
    let cond = Tensor::from_vec(vec![1.0f32, 0.0, 1.0, 0.0, -2.5, f32::NAN], [6]).unwrap();
    let a = [f64::INFINITY, 1.0, -0.0, f64::NAN, 5.0, 6.0];
    let b = [1.0, f64::NEG_INFINITY, 3.0, -0.0, f64::NAN, 7.0];
    let tape = Tape::new();
    let (va, vb) = (tape.var(t1(&a)), tape.var(t1(&b)));
    let y = Var::where_(&cond, &va, &vb).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
    assert_eq!(bits(&vals(y.value())), bits(&[f64::INFINITY, f64::NEG_INFINITY, -0.0, -0.0, 5.0, 6.0]));
    assert!(Tensor::where_(&cond.to_dtype(DType::BF16), &t1(&a), &t1(&b)).unwrap().bit_eq(y.value()));
    let g = grad(&y.sum_all().unwrap(), &[&va, &vb], true).unwrap();
    assert_eq!(vals(g[0].value()), vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0]);
    assert_eq!(vals(g[1].value()), vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    // d(Σ g_a·x)/dx for x = a through a second backward: zero (the VJP is a selection).
    let h = grad(&g[0].mul(&va).unwrap().sum_all().unwrap(), &[&vb], false).unwrap();
    assert_eq!(vals(h[0].value()), vec![0.0; 6]);

    // Broadcasting: cond [2, 1], a [3], b [] → [2, 3]; a's gradient sums the rows it is picked in.
    let tape = Tape::new();
    let c2 = Tensor::from_vec(vec![1.0, 0.0], [2, 1]).unwrap();
    let (va, vb) = (tape.var(t1(&[1.0, 2.0, 3.0])), tape.var(Tensor::scalar(-1.0, DType::F64)));
    let y = Var::where_(&c2, &va, &vb).unwrap();
    assert_eq!(y.dims(), &[2, 3]);
    assert_eq!(vals(y.value()), vec![1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
    let w = Var::constant(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap());
    let g = grad(&y.mul(&w).unwrap().sum_all().unwrap(), &[&va, &vb], false).unwrap();
    assert_eq!(vals(g[0].value()), vec![1.0, 2.0, 3.0]);
    assert_eq!(vals(g[1].value()), vec![15.0]);

    // masked_fill with −∞ before a softmax: the filled logits get probability 0 and gradient 0.
    let tape = Tape::new();
    let x = tape.var(Tensor::from_vec(vec![0.5, 1.0, -2.0, 3.0, 0.0, 1.0], [2, 3]).unwrap());
    let mask = Tensor::from_vec(vec![0.0, 1.0, 0.0], [3]).unwrap();
    let p = x.masked_fill(&mask, f64::NEG_INFINITY).unwrap().softmax(-1).unwrap();
    let pv = vals(p.value());
    assert_eq!((pv[1], pv[4]), (0.0, 0.0));
    let z: f64 = (0.5f64).exp() + (-2.0f64).exp();
    assert_relative_eq!(pv[0], 0.5f64.exp() / z, max_relative = 1e-15);
    let r = Var::constant(Tensor::from_vec(vec![1.0, -1.0, 2.0, 0.5, 3.0, -2.0], [2, 3]).unwrap());
    let g = grad(&p.mul(&r).unwrap().sum_all().unwrap(), &[&x], false).unwrap();
    let gv = vals(g[0].value());
    assert!(gv.iter().all(|v| v.is_finite()), "{gv:?}");
    assert_eq!((gv[1], gv[4]), (0.0, 0.0));
    // Tensor::masked_fill keeps the tensor's shape and gives the same values.
    let t = Tensor::from_vec(vec![0.5, 1.0, -2.0, 3.0, 0.0, 1.0], [2, 3]).unwrap();
    assert_eq!(vals(&t.masked_fill(&mask, 9.0).unwrap()), vec![0.5, 9.0, -2.0, 3.0, 9.0, 1.0]);
}

/// argmax over every axis of a [2, 3, 4] tensor against a hand-written loop; ties go to the first
/// index, the first NaN wins, and a negative axis counts from the end.
#[test]
fn exact_argmax() {
    let d = [2usize, 3, 4];
    // Values with many ties (12 distinct values over 24 elements).
    let v: Vec<f64> = (0..24).map(|i| ((i * 7) % 12) as f64 - 5.0).collect();
    let t = Tensor::from_vec(v.clone(), d.to_vec()).unwrap();
    for axis in 0..3usize {
        let (outer, n, inner): (usize, usize, usize) = (d[..axis].iter().product(), d[axis], d[axis + 1..].iter().product());
        let mut want = vec![];
        for o in 0..outer {
            for i in 0..inner {
                let mut best = 0;
                for j in 1..n {
                    if v[(o * n + j) * inner + i] > v[(o * n + best) * inner + i] {
                        best = j;
                    }
                }
                want.push(best);
            }
        }
        assert_eq!(t.argmax(axis as isize).unwrap(), want, "axis {axis}");
        assert_eq!(t.argmax(axis as isize - 3).unwrap(), want, "axis {}", axis as isize - 3);
        assert_eq!(t.to_dtype(DType::F32).argmax(axis as isize).unwrap(), want, "f32 axis {axis}");
    }
    let rows = Tensor::from_vec(vec![1.0, 3.0, 3.0, 2.0, f64::NAN, 5.0, f64::NAN, 0.0, -0.0, 0.0, -1.0, -2.0], [3, 4]).unwrap();
    assert_eq!(rows.argmax(-1).unwrap(), vec![1, 0, 0]);
    assert_eq!(rows.argmax(0).unwrap(), vec![1, 1, 1, 0]);
    // A scalar-like axis of size 1, and an empty outer axis.
    assert_eq!(Tensor::zeros([3, 1], DType::F64).argmax(1).unwrap(), vec![0, 0, 0]);
    assert_eq!(Tensor::zeros([0, 4], DType::F64).argmax(1).unwrap(), Vec::<usize>::new());
    // argmax(-1) of logits are labels cross_entropy takes: the loss of logits at their argmax labels is
    // the smallest over all labellings of each row.
    let logits = Tensor::randn([5, 4], DType::F64, 3);
    let labels = logits.argmax(-1).unwrap();
    let ce = Var::constant(logits.clone()).cross_entropy_per_example(&labels).unwrap();
    for (i, &l) in labels.iter().enumerate() {
        for k in 0..4 {
            let other = Var::constant(logits.narrow(0, i, 1).unwrap()).cross_entropy_per_example(&[k]).unwrap();
            assert!(vals(ce.value())[i] <= vals(other.value())[0], "row {i}: label {l} vs {k}");
        }
    }
}

/// cross_entropy_with against a hand-written loop over logits [2, 3, 4] with ignored positions, label
/// smoothing and weights (value and gradient), the default options against cross_entropy bit for bit,
/// and the all-ignored case.
#[test]
fn exact_cross_entropy_with() {
    let (lead, c) = ([2usize, 3], 4usize);
    let n = 6;
    let x: Vec<f64> = vals(&Tensor::randn([2, 3, 4], DType::F64, 11)).iter().map(|v| 2.0 * v).collect();
    let w: Vec<f64> = vec![0.5, 1.0, 2.0, -1.0, 0.25, 3.0];
    const IGN: usize = usize::MAX;
    let labels = [2, IGN, 0, 3, IGN, 1];
    let eps = 0.1;
    // By hand: ℓᵢ = −Σ_c qᵢ_c log pᵢ_c with q = (1 − ε)·onehot + ε/C; L = Σ_{kept} wᵢ ℓᵢ / K, and
    // ∂L/∂xᵢ = wᵢ·(pᵢ − qᵢ)/K for kept rows, 0 for ignored ones.
    let kept: Vec<usize> = (0..n).filter(|&i| labels[i] != IGN).collect();
    let k = kept.len() as f64;
    let (mut want, mut want_g) = (0.0, vec![0.0; n * c]);
    for &i in &kept {
        let row = &x[i * c..(i + 1) * c];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let mut l = 0.0;
        for j in 0..c {
            let logp = row[j] - m - z.ln();
            let q = if j == labels[i] { 1.0 - eps } else { 0.0 } + eps / c as f64;
            l -= q * logp;
            want_g[i * c + j] = w[i] * (logp.exp() - q) / k;
        }
        want += w[i] * l / k;
    }
    let tape = Tape::new();
    let xv = tape.var(Tensor::from_vec(x.clone(), [2, 3, 4]).unwrap());
    let wv = tape.var(Tensor::from_vec(w.clone(), lead.to_vec()).unwrap());
    let opts = CrossEntropyOpts { ignore_index: Some(IGN), label_smoothing: eps, weights: Some(&wv) };
    let loss = xv.cross_entropy_with(&labels, opts).unwrap();
    assert_relative_eq!(loss.value().to_scalar().unwrap(), want, max_relative = 1e-14);
    let g = grad(&loss, &[&xv, &wv], false).unwrap();
    for (got, want) in vals(g[0].value()).iter().zip(&want_g) {
        assert_abs_diff_eq!(*got, *want, epsilon = 1e-15);
    }
    // ∂L/∂wᵢ = ℓᵢ/K for kept positions, 0 for ignored ones.
    let gw = vals(g[1].value());
    assert_eq!((gw[1], gw[4]), (0.0, 0.0));
    // Ignored positions take no part: NaN logits there change nothing.
    let mut xn = x.clone();
    xn[4..8].fill(f64::NAN);
    let tape = Tape::new();
    let xnv = tape.var(Tensor::from_vec(xn, [2, 3, 4]).unwrap());
    let opts = CrossEntropyOpts {
        ignore_index: Some(IGN),
        label_smoothing: eps,
        weights: Some(&Var::constant(Tensor::from_vec(w.clone(), lead.to_vec()).unwrap())),
    };
    let ln = xnv.cross_entropy_with(&labels, opts).unwrap();
    assert!(ln.value().bit_eq(loss.value()));
    assert!(vals(grad(&ln, &[&xnv], false).unwrap()[0].value()).iter().all(|v| v.is_finite()));

    // Default options on [N, C] logits: cross_entropy, bit for bit (value and gradient), also weighted.
    let logits = Tensor::randn([5, 3], DType::F64, 12);
    let lab = [0, 2, 1, 1, 0];
    let wt = Var::constant(Tensor::randn([5], DType::F64, 13));
    for weights in [None, Some(&wt)] {
        let tape = Tape::new();
        let xv = tape.var(logits.clone());
        let a = xv.cross_entropy(&lab, weights).unwrap();
        let b = xv.cross_entropy_with(&lab, CrossEntropyOpts { weights, ..Default::default() }).unwrap();
        assert!(a.value().bit_eq(b.value()));
        let (ga, gb) = (grad(&a, &[&xv], false).unwrap(), grad(&b, &[&xv], false).unwrap());
        assert!(ga[0].value().bit_eq(gb[0].value()));
    }
    // ε = 1: the target is uniform, and the label does not matter.
    let uniform = |l: &[usize]| {
        Var::constant(logits.clone())
            .cross_entropy_with(l, CrossEntropyOpts { label_smoothing: 1.0, ..Default::default() })
            .unwrap()
            .value()
            .to_scalar()
            .unwrap()
    };
    assert_relative_eq!(uniform(&lab), uniform(&[1, 1, 0, 2, 2]), max_relative = 1e-15);
    // Rank 1: one position.
    let one = Var::constant(t1(&[0.5, -1.0, 2.0])).cross_entropy_with(&[2], CrossEntropyOpts::default()).unwrap();
    let z: f64 = [0.5f64, -1.0, 2.0].iter().map(|v| v.exp()).sum();
    assert_relative_eq!(one.value().to_scalar().unwrap(), z.ln() - 2.0, max_relative = 1e-15);
    // Everything ignored (or nothing there): 0, with a zero gradient.
    let tape = Tape::new();
    let xv = tape.var(logits.clone());
    let l = xv.cross_entropy_with(&[4; 5], CrossEntropyOpts { ignore_index: Some(4), ..Default::default() }).unwrap();
    assert_eq!(l.value().to_scalar().unwrap(), 0.0);
    assert!(vals(grad(&l, &[&xv], false).unwrap()[0].value()).iter().all(|&v| v == 0.0));
    let empty = tape.var(Tensor::zeros([0, 3], DType::F64));
    assert_eq!(empty.cross_entropy_with(&[], CrossEntropyOpts::default()).unwrap().value().to_scalar().unwrap(), 0.0);
}

/// The one-pass GELU gives the bits of its composite x/2 · (1 + erf(x/√2)) (the ops it replaced), in
/// f32 and f64, at ±0, ±∞, NaN, subnormals and a sweep; its derivative at ±∞ and far out is Φ(x)
/// (0 or 1), not the NaN of ∞·φ(∞).
#[test]
fn gelu_is_its_erf_composite_bit_for_bit_and_its_derivative_is_finite_far_out() {
    let mut xs: Vec<f64> = (-4000..=4000).map(|i| i as f64 * 0.0037).collect();
    xs.extend([0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e-310, -1e-310, 1e-40, 30.0, -30.0, 1e30, -1e30]);
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_vec(xs.clone(), [xs.len()]).unwrap().to_dtype(dtype);
        let composite = x
            .mul_scalar(0.5)
            .unwrap()
            .mul(&x.mul_scalar(std::f64::consts::FRAC_1_SQRT_2).unwrap().erf().unwrap().add_scalar(1.0).unwrap())
            .unwrap();
        let fused = Var::constant(x.clone()).gelu().unwrap();
        assert!(fused.value().bit_eq(&composite), "{dtype}");
        let tape = Tape::new();
        let far = tape.var(Tensor::from_vec(vec![f64::INFINITY, f64::NEG_INFINITY, 40.0, -40.0], [4]).unwrap().to_dtype(dtype));
        let g = grad(&far.gelu().unwrap().sum_all().unwrap(), &[&far], false).unwrap();
        assert_eq!(vals(g[0].value()), vec![1.0, 0.0, 1.0, 0.0], "{dtype}");
    }
}
