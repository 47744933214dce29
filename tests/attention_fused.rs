//! The fused attention ops (forward, backward, backward-over-backward) against the composite path
//! (matmul + softmax) and finite differences; bitwise determinism across thread counts; the third-order
//! error; input checks.
use metagrad::*;
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
struct Case {
    batch: (usize, usize),
    nq: usize,
    nk: usize,
    d: usize,
    dv: usize,
    scale: f64,
    causal: bool,
    seed: u64,
}

impl Case {
    fn shapes(&self) -> [Vec<usize>; 3] {
        let (b0, b1) = self.batch;
        let lead: Vec<usize> = [b0, b1].into_iter().filter(|&b| b > 0).collect();
        let with = |n: usize, w: usize| lead.iter().copied().chain([n, w]).collect::<Vec<_>>();
        [with(self.nq, self.d), with(self.nk, self.d), with(self.nk, self.dv)]
    }
    /// Random normal values drawn in f32 and widened to `dt`, so that the f32 and f64 runs of a case
    /// see exactly the same numbers (the f64 run is then an exact reference for the f32 one).
    fn randn(shape: Vec<usize>, dt: DType, seed: u64) -> Tensor {
        Tensor::randn(shape, DType::F32, seed).to_dtype(dt)
    }
    fn inputs(&self, dt: DType) -> [Tensor; 3] {
        let [qs, ks, vs] = self.shapes();
        [Self::randn(qs, dt, self.seed), Self::randn(ks, dt, self.seed + 1), Self::randn(vs, dt, self.seed + 2)]
    }
    fn directions(&self, dt: DType) -> [Tensor; 3] {
        let [qs, ks, vs] = self.shapes();
        [Self::randn(qs, dt, self.seed + 3), Self::randn(ks, dt, self.seed + 4), Self::randn(vs, dt, self.seed + 5)]
    }
    /// The loss weights R, shaped like O.
    fn weights(&self, dt: DType) -> Tensor {
        let mut s = self.shapes()[0].clone();
        *s.last_mut().unwrap() = self.dv;
        Self::randn(s, dt, self.seed + 6)
    }
}

fn attn(fused: bool, q: &Var, k: &Var, v: &Var, c: &Case) -> Result<Var> {
    if fused {
        q.attention(k, v, c.scale, c.causal)
    } else {
        q.attention_composite(k, v, c.scale, c.causal)
    }
}

/// Σ O∘R, or Σ O²∘R (`square`: then dO depends on Q, K, V and the HVP needs the dŌ output).
fn loss(o: &Var, r: &Tensor, square: bool) -> Result<Var> {
    let r = Var::constant(r.clone());
    if square {
        o.square()?.mul(&r)?.sum_all()
    } else {
        o.mul(&r)?.sum_all()
    }
}

/// Forward value, gradient and HVP of the loss w.r.t. (Q, K, V).
fn derivatives(fused: bool, c: &Case, dt: DType, square: bool) -> Vec<Tensor> {
    let tape = Tape::new();
    let [q, k, v] = c.inputs(dt).map(|t| tape.var(t));
    let o = attn(fused, &q, &k, &v, c).unwrap();
    let l = loss(&o, &c.weights(dt), square).unwrap();
    let mut out = vec![o.value().clone()];
    out.extend(grad(&l, &[&q, &k, &v], false).unwrap().iter().map(|g| g.value().clone()));
    let tape = Tape::new();
    let [q, k, v] = c.inputs(dt).map(|t| tape.var(t));
    let l = loss(&attn(fused, &q, &k, &v, c).unwrap(), &c.weights(dt), square).unwrap();
    out.extend(hvp(&l, &[&q, &k, &v], &c.directions(dt)).unwrap());
    out
}

/// max |a − b| / max(scale, max |b|, 1): relative to the result's own scale, a stated larger scale, or
/// the inputs' (O(1)) where the result vanishes.
fn rel_err(a: &Tensor, b: &Tensor, scale: f64) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec_f64(), b.to_vec_f64());
    let diff = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / b.iter().fold(scale.max(1.0), |m, x| m.max(x.abs()))
}

fn max_abs(ts: &[Tensor]) -> f64 {
    ts.iter().flat_map(|t| t.to_vec_f64()).fold(0.0, |m, x| m.max(x.abs()))
}

const NAMES: [&str; 7] = ["O", "dQ", "dK", "dV", "HVP_Q", "HVP_K", "HVP_V"];

/// In f64 each fused result agrees with the composite's within `tol` of its own scale. In f32 both
/// paths round differently, so the fused result is compared with the composite in f64 on the same
/// (f32-representable) inputs, relative to the scale of its group (dQ, dK, dV; or the three HVPs): a
/// member that vanishes exactly is computed as a difference of terms of the group's size (dK with one
/// key: the fused path gets D = rowsum(dO∘O) and dP = dO·V as two roundings of the same number), so
/// its rounding is of the group's size, not its own.
fn fused_matches_composite(c: &Case, dt: DType, tol: f64) -> std::result::Result<(), TestCaseError> {
    for square in [false, true] {
        let f = derivatives(true, c, dt, square);
        let (r, group) = match dt {
            DType::F64 => (derivatives(false, c, dt, square), false),
            _ => (derivatives(false, c, DType::F64, square), true),
        };
        for (i, ((name, a), b)) in NAMES.iter().zip(&f).zip(&r).enumerate() {
            let members = &r[if i == 0 { 0..1 } else { (i - 1) / 3 * 3 + 1..(i - 1) / 3 * 3 + 4 }];
            let e = rel_err(a, b, if group { max_abs(members) } else { 0.0 });
            prop_assert!(e <= tol, "{name} (square {square}) differs by {e:.3e} (tol {tol:.0e}) for {c:?}");
        }
    }
    Ok(())
}

fn case_strategy(max_n: usize) -> impl Strategy<Value = Case> {
    (
        (0usize..3, 0usize..3),
        1..max_n,
        1..max_n,
        prop::sample::select(vec![1usize, 3, 32, 64]),
        prop::sample::select(vec![1usize, 2, 5, 17, 40]),
        0.05f64..0.6,
        any::<bool>(),
        0u64..1_000_000,
    )
        .prop_map(|(batch, nq, nk, d, dv, scale, causal, seed)| Case { batch, nq, nk, d, dv, scale, causal, seed })
}

proptest! {
    // 64 cases by default; PROPTEST_CASES=N for a longer sweep.
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)))]

    #[test]
    fn fused_matches_composite_f64(c in case_strategy(90)) {
        fused_matches_composite(&c, DType::F64, 1e-10)?;
    }

    #[test]
    fn fused_matches_composite_f32(c in case_strategy(90)) {
        fused_matches_composite(&c, DType::F32, 2e-4)?;
    }
}

/// Long sequences (several row and key blocks; past 1024 keys or rows the blocks shrink below 64)
/// and d = 128 against the composite path.
#[test]
fn fused_matches_composite_multi_block() {
    for causal in [false, true] {
        let c = Case { batch: (2, 0), nq: 700, nk: 600, d: 32, dv: 24, scale: 0.2, causal, seed: 7 };
        fused_matches_composite(&c, DType::F64, 1e-10).unwrap();
        let c = Case { batch: (0, 0), nq: 1100, nk: 1300, d: 8, dv: 5, scale: 0.4, causal, seed: 10 };
        fused_matches_composite(&c, DType::F64, 1e-10).unwrap();
        let c = Case { batch: (1, 2), nq: 130, nk: 200, d: 128, dv: 64, scale: 0.09, causal, seed: 8 };
        fused_matches_composite(&c, DType::F64, 1e-10).unwrap();
        fused_matches_composite(&c, DType::F32, 2e-4).unwrap();
    }
}

/// Gradients and HVPs with only some of Q, K, V tracked (the kernels then skip passes).
#[test]
fn subsets_of_inputs_match_composite() {
    let c = Case { batch: (2, 0), nq: 70, nk: 45, d: 32, dv: 17, scale: 0.3, causal: true, seed: 9 };
    for tracked in [[true, false, false], [false, true, false], [false, false, true], [false, true, true], [true, false, true]] {
        for square in [false, true] {
            let run = |fused: bool| {
                let tape = Tape::new();
                let vars: Vec<Var> =
                    c.inputs(DType::F64).into_iter().zip(tracked).map(|(t, on)| if on { tape.var(t) } else { Var::constant(t) }).collect();
                let wrt: Vec<&Var> = vars.iter().zip(tracked).filter(|(_, t)| *t).map(|(v, _)| v).collect();
                let l = loss(&attn(fused, &vars[0], &vars[1], &vars[2], &c).unwrap(), &c.weights(DType::F64), square).unwrap();
                let dirs: Vec<Tensor> = c.directions(DType::F64).into_iter().zip(tracked).filter(|(_, t)| *t).map(|(d, _)| d).collect();
                let mut out: Vec<Tensor> = grad(&l, &wrt, true).unwrap().iter().map(|g| g.value().clone()).collect();
                out.extend(hvp(&l, &wrt, &dirs).unwrap());
                out
            };
            for (a, b) in run(true).iter().zip(&run(false)) {
                let e = rel_err(a, b, 0.0);
                assert!(e < 1e-10, "tracked {tracked:?} square {square}: differs by {e:.3e}");
            }
        }
    }
}

#[test]
fn jvp_matches_composite() {
    for causal in [false, true] {
        let c = Case { batch: (2, 0), nq: 9, nk: 13, d: 5, dv: 4, scale: 0.4, causal, seed: 11 };
        let run = |fused: bool| {
            let tape = Tape::new();
            let [q, k, v] = c.inputs(DType::F64).map(|t| tape.var(t));
            let o = attn(fused, &q, &k, &v, &c).unwrap();
            jvp(&tape, &o, &[&q, &k, &v], &c.directions(DType::F64)).unwrap()
        };
        let e = rel_err(&run(true), &run(false), 0.0);
        assert!(e < 1e-10, "jvp differs by {e:.3e}");
    }
}

#[test]
fn gradient_and_hvp_match_finite_differences() {
    for causal in [false, true] {
        let c = Case { batch: (2, 0), nq: 5, nk: 6, d: 3, dv: 4, scale: 0.7, causal, seed: 21 };
        let r = c.weights(DType::F64);
        let f = |x: &[Var]| x[0].attention(&x[1], &x[2], c.scale, c.causal)?.square()?.mul(&Var::constant(r.clone()))?.sum_all();
        let xs = c.inputs(DType::F64).to_vec();
        let g = gradcheck::check_grad(f, &xs, 1e-6).unwrap();
        assert!(g.within(1e-7, 1e-6), "grad (causal {causal}): {g}");
        let h = gradcheck::check_hvp(f, &xs, &c.directions(DType::F64), 1e-5).unwrap();
        assert!(h.within(1e-6, 1e-5), "hvp (causal {causal}): {h}");
    }
}

/// Every output of the three ops, as bits, computed on a rayon pool of `threads` threads.
fn bits_on(threads: usize, c: &Case, dt: DType) -> Vec<Vec<u8>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut out = derivatives(true, c, dt, false);
        out.extend(derivatives(true, c, dt, true));
        out.iter().map(|t| t.as_bytes().unwrap().to_vec()).collect()
    })
}

#[test]
fn bitwise_deterministic_across_thread_counts() {
    for (dt, causal) in [(DType::F32, false), (DType::F32, true), (DType::F64, true)] {
        let c = Case { batch: (2, 2), nq: 150, nk: 130, d: 32, dv: 24, scale: 0.18, causal, seed: 3 };
        let one = bits_on(1, &c, dt);
        for threads in [2, 8] {
            assert!(bits_on(threads, &c, dt) == one, "{dt} causal {causal}: {threads} threads differ from 1");
        }
    }
}

#[test]
fn third_derivative_is_a_clear_error() {
    let c = Case { batch: (1, 0), nq: 4, nk: 4, d: 2, dv: 2, scale: 0.5, causal: false, seed: 5 };
    let tape = Tape::new();
    let [q, k, v] = c.inputs(DType::F64).map(|t| tape.var(t));
    let l = loss(&q.attention(&k, &v, c.scale, c.causal).unwrap(), &c.weights(DType::F64), false).unwrap();
    let g = grad(&l, &[&q], true).unwrap().remove(0);
    let d = Var::constant(c.directions(DType::F64)[0].clone());
    let h = grad(&g.mul(&d).unwrap().sum_all().unwrap(), &[&q], true).unwrap().remove(0);
    let err = grad(&h.sum_all().unwrap(), &[&q], false).unwrap_err();
    assert!(matches!(err, Error::Autodiff { .. }), "{err}");
    assert!(err.to_string().contains("third derivative") && err.to_string().contains("attention_composite"), "{err}");
    // The composite path differentiates a third time.
    let tape = Tape::new();
    let [q, k, v] = c.inputs(DType::F64).map(|t| tape.var(t));
    let l = loss(&q.attention_composite(&k, &v, c.scale, c.causal).unwrap(), &c.weights(DType::F64), false).unwrap();
    let g = grad(&l, &[&q], true).unwrap().remove(0);
    let h = grad(&g.mul(&d).unwrap().sum_all().unwrap(), &[&q], true).unwrap().remove(0);
    grad(&h.sum_all().unwrap(), &[&q], false).unwrap();
}

#[test]
fn bad_inputs_are_errors() {
    let t = |s: &[usize], dt: DType| Var::constant(Tensor::zeros(s.to_vec(), dt));
    let f = DType::F32;
    let q = t(&[2, 4, 3], f);
    let cases = [
        q.attention(&t(&[2, 5, 4], f), &t(&[2, 5, 2], f), 1.0, false), // d mismatch
        q.attention(&t(&[2, 5, 3], f), &t(&[2, 6, 2], f), 1.0, false), // nk mismatch
        q.attention(&t(&[3, 5, 3], f), &t(&[3, 5, 2], f), 1.0, false), // batch mismatch
        q.attention(&t(&[5, 3], f), &t(&[5, 2], f), 1.0, false),       // rank mismatch
        t(&[3], f).attention(&t(&[3], f), &t(&[3], f), 1.0, false),    // rank 1
    ];
    for r in cases {
        assert!(matches!(r, Err(Error::Shape { op: "attention", .. })), "{r:?}");
    }
    let r = q.attention(&t(&[2, 5, 3], DType::F64), &t(&[2, 5, 2], f), 1.0, false);
    assert!(matches!(r, Err(Error::DType { op: "attention", .. })), "{r:?}");
    let r = t(&[2, 4, 3], DType::BF16).attention(&t(&[2, 5, 3], DType::BF16), &t(&[2, 5, 2], DType::BF16), 1.0, false);
    assert!(matches!(r, Err(Error::DType { op: "attention", .. })), "{r:?}");
    let r = q.attention(&t(&[2, 5, 3], f), &t(&[2, 5, 2], f), f64::NAN, false);
    assert!(matches!(r, Err(Error::Invalid { op: "attention", .. })), "{r:?}");
}

#[test]
fn empty_keys_give_zero_output_and_gradients() {
    let c = Case { batch: (1, 0), nq: 3, nk: 0, d: 2, dv: 2, scale: 1.0, causal: true, seed: 1 };
    let f = derivatives(true, &c, DType::F64, false);
    assert!(f.iter().all(|t| t.to_vec_f64().iter().all(|&x| x == 0.0)));
}

/// A case a random run once found past the old fixed f32 tolerance: with one key, dK and its HVP are
/// exactly 0 but computed as differences of terms of size ~10, so f32 rounding alone leaves ~2e-4.
#[test]
fn one_key_f32_rounding_is_judged_at_the_group_scale() {
    let c = Case { batch: (0, 0), nq: 31, nk: 1, d: 32, dv: 40, scale: 0.5139781775979633, causal: false, seed: 530492 };
    fused_matches_composite(&c, DType::F32, 2e-4).unwrap();
}
