//! Every op on a CUDA device against the CPU backend in f64: forward value, gradient and
//! Hessian-vector product (backward-over-backward), in f64 and f32 on the GPU; bitwise repeatability on
//! the GPU; the caching allocator; the REPLAY reference problems R1 and R2 on the GPU.
//!
//! Each check builds loss = Σ f(inputs) ∘ R for a fixed random R and compares, on the GPU against the
//! CPU in f64: the value of f, ∂loss/∂inputs, and the HVP of loss with random directions. Errors are
//! measured norm-wise: max |gpu − cpu| / max(max |cpu|, 0.01) ≤ tol, with tol 1e-10 for f64 and 1e-4
//! for f32.
//!
//! Without a GPU these tests print that they skipped and pass, unless `METAGRAD_REQUIRE_CUDA=1` is
//! set, when they fail instead (that is how they run on the GPU machine). With
//! `METAGRAD_CUDA_EMULATOR=1` they run on the kernel emulator (src/backend/cuda/emulator.rs), which is
//! how CI checks the CUDA path on a machine without a GPU.

use metagrad::cuda;
use metagrad::replay::reference::{Reference, ReferenceProblem};
use metagrad::replay::{metagradient, train, ScheduleKind};
use metagrad::{grad, hvp, Conv2dOpts, DType, Device, Result, Tape, Tensor, Var};
use proptest::prelude::*;
use std::sync::{Mutex, MutexGuard};

/// The device and exclusive use of it: the tests share one device and its allocator, and the
/// allocator test counts driver allocations, so GPU work in this file runs one test at a time.
fn gpu() -> Option<(Device, MutexGuard<'static, ()>)> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match Device::cuda(0) {
        Ok(d) => Some((d, guard)),
        Err(e) => {
            let require = std::env::var("METAGRAD_REQUIRE_CUDA").is_ok_and(|v| v == "1");
            assert!(!require, "METAGRAD_REQUIRE_CUDA=1 but {e}");
            println!("skipped: {e} (set METAGRAD_CUDA_EMULATOR=1 to use the kernel emulator)");
            None
        }
    }
}

type F = dyn Fn(&[Var]) -> Result<Var>;

/// Value of f, gradient and HVP of Σ f ∘ R for inputs `xs` (on their device, in their dtype).
fn run(f: &F, xs: &[Tensor], r_seed: u64) -> (Tensor, Vec<Tensor>, Vec<Tensor>) {
    let tape = Tape::new();
    let vars: Vec<Var> = xs.iter().map(|x| tape.var(x.clone())).collect();
    let y = f(&vars).unwrap();
    let (dev, dt) = (xs[0].device(), xs[0].dtype());
    let r = Var::constant(Tensor::randn(y.shape().clone(), DType::F64, r_seed).to_dtype(dt).to_device(dev).unwrap());
    let loss = y.mul(&r).unwrap().sum_all().unwrap();
    let wrt: Vec<&Var> = vars.iter().collect();
    let g = metagrad::grad(&loss, &wrt, true).unwrap();
    let v: Vec<Tensor> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| Tensor::randn(x.shape().clone(), DType::F64, 1000 + i as u64).to_dtype(dt).to_device(dev).unwrap())
        .collect();
    // HVP through the gradient graph: Σ_i ⟨g_i, v_i⟩ differentiated again.
    let dot = g
        .iter()
        .zip(&v)
        .map(|(g, v)| g.mul(&Var::constant(v.clone())).unwrap().sum_all().unwrap())
        .reduce(|a, b| a.add(&b).unwrap())
        .unwrap();
    let h = metagrad::grad(&dot, &wrt, false).unwrap();
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap();
    (host(y.value()), g.iter().map(|g| host(g.value())).collect(), h.iter().map(|h| host(h.value())).collect())
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64(), b.to_vec_f64());
    assert_eq!(a.len(), b.len());
    // A floor of 0.01 on the scale: outputs that are zero in exact arithmetic (e.g. dQ when a query sees
    // one key) come out as rounding noise of the O(1) terms that cancel, which only an absolute
    // tolerance can judge.
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-2);
    a.iter().zip(&b).fold(0.0f64, |m, (x, y)| {
        if x.is_nan() != y.is_nan() {
            f64::INFINITY
        } else if x.is_nan() {
            m
        } else {
            m.max((x - y).abs())
        }
    }) / scale
}

/// Compares f on the GPU (f64 and f32) with the CPU in f64, for inputs `xs` (f64, CPU), and checks that
/// a second GPU run gives the same bits.
fn check(name: &str, xs: Vec<Tensor>, f: &F) {
    check_with(name, xs, f, &[(DType::F64, 1e-10), (DType::F32, 1e-4)], true)
}

/// [`check`] for the given (dtype, tolerance) pairs, with or without the repeatability check.
fn check_with(name: &str, xs: Vec<Tensor>, f: &F, dtypes: &[(DType, f64)], repeat: bool) {
    let Some((dev, _exclusive)) = gpu() else { return };
    let reference = run(f, &xs, 7);
    for &(dt, tol) in dtypes {
        let on: Vec<Tensor> = xs.iter().map(|x| x.to_dtype(dt).to_device(dev).unwrap()).collect();
        let got = run(f, &on, 7);
        let e = rel_err(&got.0, &reference.0);
        assert!(e <= tol, "{name} {dt}: forward error {e:e}");
        for (i, (a, b)) in got.1.iter().zip(&reference.1).enumerate() {
            let e = rel_err(a, b);
            assert!(e <= tol, "{name} {dt}: gradient {i} error {e:e}");
        }
        for (i, (a, b)) in got.2.iter().zip(&reference.2).enumerate() {
            let e = rel_err(a, b);
            assert!(e <= tol, "{name} {dt}: HVP {i} error {e:e}");
        }
        if !repeat {
            continue;
        }
        // Repeatability: the same op twice on the GPU gives the same bits.
        let again = run(f, &on, 7);
        assert!(
            again.0.bit_eq(&got.0)
                && again.1.iter().zip(&got.1).all(|(a, b)| a.bit_eq(b))
                && again.2.iter().zip(&got.2).all(|(a, b)| a.bit_eq(b)),
            "{name} {dt}: two GPU runs differ"
        );
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), DType::F64, seed)
}

fn positive(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(shape.to_vec(), 0.5, 2.0, DType::F64, seed)
}

#[test]
fn unary_ops_match_the_cpu() {
    let ops: Vec<(&str, Box<F>, bool)> = vec![
        ("neg", Box::new(|x| x[0].neg()), false),
        ("exp", Box::new(|x| x[0].exp()), false),
        ("log", Box::new(|x| x[0].log()), true),
        ("tanh", Box::new(|x| x[0].tanh()), false),
        ("sigmoid", Box::new(|x| x[0].sigmoid()), false),
        ("relu", Box::new(|x| x[0].relu()), false),
        ("sqrt", Box::new(|x| x[0].sqrt()), true),
        ("rsqrt", Box::new(|x| x[0].rsqrt()), true),
        ("powf", Box::new(|x| x[0].powf(1.7)), true),
        ("abs", Box::new(|x| x[0].abs()), false),
        ("square", Box::new(|x| x[0].square()), false),
        ("clamp", Box::new(|x| x[0].clamp(-0.5, 0.7)), false),
        ("erf", Box::new(|x| x[0].erf()), false),
        ("sin", Box::new(|x| x[0].sin()), false),
        ("cos", Box::new(|x| x[0].cos()), false),
        ("gelu", Box::new(|x| x[0].gelu()), false),
        ("gelu_tanh", Box::new(|x| x[0].gelu_tanh()), false),
        ("affine", Box::new(|x| x[0].affine(-1.5, 0.25)), false),
    ];
    for (i, (name, f, pos)) in ops.iter().enumerate() {
        let x = if *pos { positive(&[3, 257], i as u64) } else { randn(&[3, 257], i as u64) };
        check(name, vec![x], f.as_ref());
    }
}

#[test]
fn binary_ops_broadcast_like_the_cpu() {
    let ops: Vec<(&str, Box<F>)> = vec![
        ("add", Box::new(|x| x[0].add(&x[1]))),
        ("sub", Box::new(|x| x[0].sub(&x[1]))),
        ("mul", Box::new(|x| x[0].mul(&x[1]))),
        ("div", Box::new(|x| x[0].div(&x[1]))),
        ("maximum", Box::new(|x| x[0].maximum(&x[1]))),
        ("minimum", Box::new(|x| x[0].minimum(&x[1]))),
    ];
    for (name, f) in &ops {
        check(name, vec![randn(&[4, 5], 1), positive(&[4, 5], 2)], f.as_ref());
        check(name, vec![randn(&[3, 1, 5], 3), positive(&[4, 5], 4)], f.as_ref());
        check(name, vec![randn(&[2, 3, 4], 5), positive(&[], 6)], f.as_ref());
    }
}

#[test]
fn reductions_match_the_cpu() {
    let x = || vec![randn(&[3, 300, 5], 11)];
    check("sum(1)", x(), &|x| x[0].sum(&[1], false));
    check("sum(0,2)", x(), &|x| x[0].sum(&[0, 2], true));
    check("sum_all", x(), &|x| x[0].sum_all());
    check("mean", x(), &|x| x[0].mean(&[-1], false));
    check("max(1)", x(), &|x| x[0].max(1, false));
    check("max(-1)", x(), &|x| x[0].max(-1, true));
    check("logsumexp", x(), &|x| x[0].logsumexp(1, false));
    check("softmax(1)", x(), &|x| x[0].softmax(1));
    check("softmax(-1)", x(), &|x| x[0].softmax(-1));
    check("log_softmax", x(), &|x| x[0].log_softmax(-1));
    let labels: Vec<usize> = (0..12).map(|i| (i * 7) % 10).collect();
    check("cross_entropy", vec![randn(&[12, 10], 12), positive(&[12], 13)], &move |x| x[0].cross_entropy(&labels, Some(&x[1])));
}

#[test]
fn selection_ops_and_cross_entropy_with_match_the_cpu() {
    use metagrad::CrossEntropyOpts;
    // Conditions (0/1 in f64, and with other nonzero values) live on the operands' device.
    let cond = |d: &[usize], seed: u64| {
        let v: Vec<f64> = randn(d, seed)
            .to_vec_f64()
            .iter()
            .map(|&x| {
                if x > 0.3 {
                    1.0
                } else if x < -1.0 {
                    -2.0
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(v, d.to_vec()).unwrap()
    };
    let on = |c: &Tensor, x: &Var| c.to_device(x.value().device()).unwrap();
    let c1 = cond(&[3, 1, 5], 31);
    check("where", vec![randn(&[4, 5], 32), randn(&[3, 4, 1], 33)], &move |x| Var::where_(&on(&c1, &x[0]), &x[0], &x[1]));
    let c2 = cond(&[5], 34);
    check("masked_fill", vec![randn(&[4, 5], 35)], &move |x| x[0].masked_fill(&on(&c2, &x[0]), -0.75));
    // A condition of another dtype than the operands.
    let c3 = cond(&[4, 5], 36).to_dtype(DType::F32);
    check("where(f32 cond)", vec![randn(&[4, 5], 37), randn(&[], 38)], &move |x| Var::where_(&on(&c3, &x[0]), &x[0], &x[1]));
    // Cross-entropy over [2, 6, 10] logits with ignored positions, smoothing and weights.
    let labels: Vec<usize> = (0..12).map(|i| if i % 5 == 3 { usize::MAX } else { (i * 7) % 10 }).collect();
    check("cross_entropy_with", vec![randn(&[2, 6, 10], 39), positive(&[2, 6], 40)], &move |x| {
        x[0].cross_entropy_with(&labels, CrossEntropyOpts { ignore_index: Some(usize::MAX), label_smoothing: 0.1, weights: Some(&x[1]) })
    });
    // argmax downloads and agrees with the CPU (distinct values: no ties).
    let Some((dev, _exclusive)) = gpu() else { return };
    let x = randn(&[3, 7, 5], 41);
    for dt in [DType::F64, DType::F32] {
        let g = x.to_dtype(dt).to_device(dev).unwrap();
        for axis in [0, 1, -1] {
            assert_eq!(g.argmax(axis).unwrap(), x.argmax(axis).unwrap(), "argmax {dt} axis {axis}");
        }
    }
}

#[test]
fn matmul_matches_the_cpu_for_every_transpose_and_batch() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = if ta { randn(&[2, 70, 65], 21) } else { randn(&[2, 65, 70], 21) };
        let b = if tb { randn(&[2, 33, 70], 22) } else { randn(&[2, 70, 33], 22) };
        check(&format!("matmul_t({ta},{tb})"), vec![a, b], &move |x| x[0].matmul_t(&x[1], ta, tb));
    }
    check("matmul broadcast batch", vec![randn(&[3, 1, 4, 6], 23), randn(&[5, 6, 2], 24)], &|x| x[0].matmul(&x[1]));
    check("matmul k=1", vec![randn(&[7, 1], 25), randn(&[1, 9], 26)], &|x| x[0].matmul(&x[1]));
}

#[test]
fn data_movement_ops_match_the_cpu() {
    let x = || vec![randn(&[2, 3, 4, 5], 31)];
    check("reshape", x(), &|x| x[0].reshape([6, 20]));
    check("permute", x(), &|x| x[0].permute(&[3, 1, 0, 2]));
    check("transpose", x(), &|x| x[0].transpose(-1, -2));
    check("broadcast_to", vec![randn(&[3, 1, 5], 32)], &|x| x[0].broadcast_to(&[2, 3, 4, 5].into()));
    check("narrow", x(), &|x| x[0].narrow(2, 1, 2));
    check("concat", vec![randn(&[2, 3, 5], 33), randn(&[2, 4, 5], 34)], &|x| Var::concat(&[&x[0], &x[1]], 1));
    check("index_select", x(), &|x| x[0].index_select(1, &[2, 0, 2, 2, 1]));
    let idx: Vec<usize> = (0..2 * 3 * 2 * 5).map(|i| (i * 5 + 1) % 4).collect();
    check("gather", x(), &move |x| x[0].gather(2, &idx, [2, 3, 2, 5]));
}

#[test]
fn norms_conv_pool_and_attention_match_the_cpu() {
    check("layer_norm", vec![randn(&[4, 33], 41), randn(&[33], 42), randn(&[33], 43)], &|x| {
        x[0].layer_norm(Some(&x[1]), Some(&x[2]), 1e-5)
    });
    check("batch_norm", vec![randn(&[6, 3, 4, 4], 44), positive(&[3], 45), randn(&[3], 46)], &|x| x[0].batch_norm(&x[1], &x[2], 1e-5));
    for (stride, pad, dil) in [(1, 1, 1), (2, 0, 1), (2, 1, 2)] {
        let o = Conv2dOpts { stride: (stride, stride), padding: (pad, pad), dilation: (dil, dil) };
        check(
            &format!("conv2d s{stride} p{pad} d{dil}"),
            vec![randn(&[2, 3, 9, 8], 47), randn(&[4, 3, 3, 3], 48), randn(&[4], 49)],
            &move |x| x[0].conv2d(&x[1], Some(&x[2]), o)?.tanh(),
        );
    }
    // More than one 64-row tile of output channels, and a weight gradient long enough (2·70·64 > 8192
    // positions) to be split into chunks reduced in fixed order.
    check("conv2d split-K", vec![randn(&[2, 3, 70, 64], 54), randn(&[65, 3, 3, 3], 55)], &|x| {
        x[0].conv2d(&x[1], None, Conv2dOpts::new(1, 1))
    });
    let o = Conv2dOpts { stride: (2, 1), padding: (1, 0), dilation: (1, 2) };
    check("conv2d_backward_input", vec![randn(&[2, 4, 4, 5], 56), randn(&[4, 3, 3, 2], 57)], &move |x| {
        Var::conv2d_backward_input(&x[0], &x[1], (7, 7), o)
    });
    check("conv2d_backward_weight", vec![randn(&[2, 3, 7, 7], 58), randn(&[2, 4, 4, 5], 59)], &move |x| {
        Var::conv2d_backward_weight(&x[0], &x[1], (3, 2), o)
    });
    check("avg_pool2d", vec![randn(&[2, 3, 7, 7], 50)], &|x| x[0].avg_pool2d((3, 3), Conv2dOpts::new(2, 1)));
    // Fused attention kernels: tiles of 16, so N not a multiple of 16, Nq ≠ Nk both ways, d ≠ dv.
    for causal in [false, true] {
        for (nq, nk, d, dv) in [(9, 11, 8, 8), (37, 21, 20, 24), (18, 33, 64, 40)] {
            check(
                &format!("attention nq={nq} nk={nk} d={d} dv={dv} causal={causal}"),
                vec![randn(&[2, nq, d], 51), randn(&[2, nk, d], 52), randn(&[2, nk, dv], 53)],
                &move |x| x[0].attention(&x[1], &x[2], 0.35, causal),
            );
        }
    }
    // Wider than the fused kernels take: the composite path, same results.
    check("attention d=130", vec![randn(&[1, 5, 130], 60), randn(&[1, 6, 130], 61), randn(&[1, 6, 3], 62)], &|x| {
        x[0].attention(&x[1], &x[2], 0.1, false)
    });
}

#[test]
fn casts_fill_and_the_finite_check_on_the_gpu() {
    let Some((dev, _exclusive)) = gpu() else { return };
    let x = Tensor::randn([1000], DType::F64, 61).to_dtype(DType::F32);
    let on = x.to_device(dev).unwrap();
    assert!(on.is_cuda() && on.device() == dev);
    for dt in [DType::F64, DType::BF16, DType::F16] {
        let a = on.to_dtype(dt).to_device(Device::Cpu).unwrap();
        assert!(a.bit_eq(&x.to_dtype(dt)), "f32 → {dt} on the GPU differs from the CPU conversion");
        assert!(on.to_dtype(dt).to_dtype(DType::F32).bit_eq(&x.to_dtype(dt).to_dtype(DType::F32)), "{dt} → f32");
    }
    assert!(on.all_finite());
    let bad = Tensor::from_vec(vec![1.0f32, f32::NAN, 2.0], [3]).unwrap().to_device(dev).unwrap();
    assert!(!bad.all_finite());
    let f = Tensor::full_on(2.5, [3, 7], DType::F64, dev).unwrap();
    assert_eq!(f.to_vec_f64(), vec![2.5; 21]);
    // A CUDA tensor cannot be borrowed as a host slice: a clear error, not garbage.
    let e = on.as_slice::<f32>().unwrap_err().to_string();
    assert!(e.contains("cuda:0") && e.contains("to_device"), "{e}");
    // Mixing devices is an error naming both.
    let e = Var::constant(on.clone()).add(&Var::constant(x.clone())).unwrap_err().to_string();
    assert!(e.contains("cuda:0") && e.contains("cpu"), "{e}");
}

#[test]
fn steady_state_training_steps_make_no_driver_allocations() {
    let Some((dev, _exclusive)) = gpu() else { return };
    let step = || {
        let tape = Tape::new();
        let w = tape.var(Tensor::randn([64, 32], DType::F32, 71).to_device(dev).unwrap());
        let x = Var::constant(Tensor::randn([16, 64], DType::F32, 72).to_device(dev).unwrap());
        let loss = x.matmul(&w).unwrap().tanh().unwrap().square().unwrap().mean_all().unwrap();
        let v = [Tensor::full_on(1.0, [64, 32], DType::F32, dev).unwrap()];
        hvp(&loss, &[&w], &v).unwrap();
    };
    step();
    step();
    let before = cuda::memory_stats(dev).unwrap();
    for _ in 0..3 {
        step();
    }
    let after = cuda::memory_stats(dev).unwrap();
    assert_eq!(after.driver_allocs, before.driver_allocs, "steady-state steps allocated from the driver: {before:?} → {after:?}");
    assert!(after.cache_hits > before.cache_hits);
}

#[test]
fn reference_problems_r1_and_r2_on_the_gpu_match_the_cpu() {
    let Some((dev, _exclusive)) = gpu() else { return };
    for kind in [Reference::R1, Reference::R2] {
        let cpu = ReferenceProblem::new(kind, DType::F64);
        let meta = cpu.initial_meta();
        let want = metagradient(&cpu, &meta, ScheduleKind::KAry { k: 2 }).unwrap();
        for (dt, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-4)] {
            let p = ReferenceProblem::new(kind, dt).to_device(dev).unwrap();
            let m: Vec<Tensor> = meta.iter().map(|t| t.to_dtype(dt)).collect();
            let got = metagradient(&p, &m, ScheduleKind::KAry { k: 2 }).unwrap();
            let e = (got.phi - want.phi).abs() / want.phi.abs();
            assert!(e <= tol, "{kind:?} {dt}: φ {} vs {} (rel {e:e})", got.phi, want.phi);
            for (a, b) in got.grads.iter().zip(&want.grads) {
                let e = rel_err(a, b);
                assert!(e <= tol, "{kind:?} {dt}: metagradient error {e:e}");
            }
            // A whole metagradient is bitwise repeatable on the GPU.
            let again = metagradient(&p, &m, ScheduleKind::KAry { k: 2 }).unwrap();
            assert!(again.grads.iter().zip(&got.grads).all(|(a, b)| a.bit_eq(b)), "{kind:?} {dt}: two GPU metagradients differ");
            let s = train(&p, &m).unwrap();
            assert!(s.iter().all(|t| t.device() == dev));
        }
    }
}

/// Whether the GPU tests run here (a GPU, or the emulator); prints the skip notice once otherwise.
fn have_gpu() -> bool {
    gpu().is_some()
}

/// Cases per property: 16 (fast on the emulator), or `PROPTEST_CASES` when set.
fn config() -> ProptestConfig {
    match std::env::var("PROPTEST_CASES") {
        Ok(_) => ProptestConfig::default(), // reads PROPTEST_CASES
        Err(_) => ProptestConfig::with_cases(16),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Fused attention on the GPU against the CPU (f64: value, gradient, HVP): shapes not multiples of
    /// the 16-wide tiles, Nq ≠ Nk, d ≠ dv, causal or not.
    #[test]
    fn fused_attention_on_random_shapes(heads in 1usize..3, nq in 1usize..40, nk in 1usize..40, d in 1usize..70,
                                        dv in 1usize..40, causal in any::<bool>(), seed in 0u64..1000) {
        if have_gpu() {
            let xs = vec![randn(&[heads, nq, d], seed), randn(&[heads, nk, d], seed + 1), randn(&[heads, nk, dv], seed + 2)];
            let scale = 1.0 / (d as f64).sqrt();
            check_with("attention", xs, &move |x| x[0].attention(&x[1], &x[2], scale, causal), &[(DType::F64, 1e-10)], false);
        }
    }

    /// Fused convolution on the GPU against the CPU (f64: value, gradient, HVP w.r.t. x and w): odd
    /// sizes, strides, paddings, dilations.
    #[test]
    fn fused_conv_on_random_shapes(n in 1usize..3, c in 1usize..5, o in 1usize..6, h in 1usize..12, w in 1usize..12,
                                   k in 1usize..4, s in 1usize..3, p in 0usize..3, dil in 1usize..3, seed in 0u64..1000) {
        let span = dil * (k - 1) + 1;
        if have_gpu() && h + 2 * p >= span && w + 2 * p >= span {
            let opts = Conv2dOpts { stride: (s, s), padding: (p, p), dilation: (dil, dil) };
            let xs = vec![randn(&[n, c, h, w], seed), randn(&[o, c, k, k], seed + 1)];
            check_with("conv2d", xs, &move |x| x[0].conv2d(&x[1], None, opts)?.tanh(), &[(DType::F64, 1e-10)], false);
        }
    }
}

/// x_{t+1} = x_t·z + √(x_t·z − c) with c = x_t·z at step 5 only, on the GPU: the derivative of √ at 0
/// is infinite there, and the metagradient must say so, naming step 5 (as on the CPU).
struct BlowupOn(Device);
impl metagrad::replay::Training for BlowupOn {
    fn steps(&self) -> usize {
        8
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::from_vec(vec![1.0f64, 2.0], [2])?.to_device(self.0)?])
    }
    fn step(&self, _: &metagrad::replay::StepCtx, t: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        let x = s[0].mul(&z[0].to_device(self.0)?)?;
        let kink = if t == 5 { x.sub(&x.detach())?.sqrt()? } else { x.mul_scalar(0.0)? };
        Ok(vec![x.add(&kink)?])
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[0].sum_all()
    }
}

#[test]
fn a_non_finite_metagradient_on_the_gpu_names_the_step() {
    let Some((dev, _exclusive)) = gpu() else { return };
    let z = vec![Tensor::scalar(1.01, DType::F64)];
    match metagradient(&BlowupOn(dev), &z, ScheduleKind::KAry { k: 2 }) {
        Err(metagrad::Error::NonFinite { step, msg }) => assert_eq!(step, 5, "{msg}"),
        other => panic!("expected NonFinite at step 5, got {other:?}"),
    }
}

#[test]
fn the_checkpoint_arena_lives_in_device_memory() {
    use metagrad::replay::arena::Arena;
    let Some((dev, _exclusive)) = gpu() else { return };
    let state =
        vec![Tensor::randn([3, 5], DType::F32, 81).to_device(dev).unwrap(), Tensor::randn([7], DType::F64, 82).to_device(dev).unwrap()];
    let before = cuda::memory_stats(dev).unwrap();
    let mut arena = Arena::new(2, &state).unwrap();
    let after = cuda::memory_stats(dev).unwrap();
    assert!(after.bytes_in_use >= before.bytes_in_use + 2 * (3 * 5 * 4 + 7 * 8), "the slots are device memory");
    arena.store(1, 4, &state).unwrap();
    let back = arena.load(1).unwrap();
    assert!(back.iter().zip(&state).all(|(a, b)| a.device() == dev && a.bit_eq(b)));
    assert!(matches!(arena.store(2, 5, &state), Err(metagrad::Error::OutOfMemory { .. })));
    let mixed = [state[0].clone(), state[1].to_device(Device::Cpu).unwrap()];
    let e = Arena::new(1, &mixed).unwrap_err().to_string();
    assert!(e.contains("cuda:0") && e.contains("cpu"), "{e}");
}

#[test]
fn impossible_device_allocations_and_empty_batches_are_handled() {
    // Issue 14: numel·size used to wrap (full_on of 2^62 f32 returned Ok over garbage); a convolution
    // weight gradient over an empty batch divided by zero.
    let Some((dev, _exclusive)) = gpu() else { return };
    for n in [1usize << 48, 1 << 62, usize::MAX] {
        match Tensor::full_on(0.0, [n], DType::F32, dev) {
            Err(metagrad::Error::OutOfMemory { op, .. }) => assert_eq!(op, "full"),
            other => panic!("full_on of {n} f32 on {dev}: expected OutOfMemory, got {:?}", other.map(|t| t.dims().to_vec())),
        }
    }
    let tape = Tape::new();
    let x = tape.var(Tensor::zeros([0, 2, 5, 5], DType::F64).to_device(dev).unwrap());
    let w = tape.var(randn(&[3, 2, 3, 3], 5).to_device(dev).unwrap());
    let y = x.conv2d(&w, None, Conv2dOpts::default()).unwrap();
    assert_eq!(y.dims(), &[0, 3, 3, 3]);
    let g = grad(&y.square().unwrap().sum_all().unwrap(), &[&x, &w], false).unwrap();
    assert_eq!(g[1].value().to_device(Device::Cpu).unwrap().to_vec_f64(), vec![0.0; 54], "an empty batch has a zero weight gradient");
}

/// SGD with momentum on tanh(x·w)² for T steps, everything on `dev` (hyperparameters included).
struct SgdOn(Device, usize);
impl metagrad::replay::Training for SgdOn {
    fn steps(&self) -> usize {
        self.1
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        // Made on the device (fill kernels): the run's only host traffic is then its own.
        let w = Tensor::full_on(0.3, [16, 8], DType::F32, self.0)?;
        Ok(vec![w.clone(), Tensor::full_on(0.0, [16, 8], DType::F32, self.0)?, w.mul_scalar(-0.5)?])
    }
    fn step(&self, ctx: &metagrad::replay::StepCtx, _: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        let x = Var::constant(Tensor::full_on(0.25, [4, 16], DType::F32, self.0)?);
        let loss = x.matmul(&s[0])?.tanh()?.square()?.mean_all()?.add(&s[2].square()?.mean_all()?)?;
        let g = ctx.grad(&loss, &[&s[0], &s[2]])?;
        let opt = metagrad::optim::Sgd {
            lr: z[0].clone(),
            momentum: Some(metagrad::optim::scalar(0.9, &s[0])),
            weight_decay: metagrad::optim::scalar(0.0, &s[0]),
            nesterov: false,
        };
        let (p, v) = opt.step(&[s[0].clone(), s[2].clone()], &g, &[s[1].clone(), s[1].mul_scalar(0.0)?])?;
        let [p0, p2] = <[Var; 2]>::try_from(p).map_err(|_| metagrad::Error::Invalid { op: "test", msg: "two parameters".into() })?;
        Ok(vec![p0, v.into_iter().next().ok_or(metagrad::Error::Invalid { op: "test", msg: "a buffer".into() })?, p2])
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[0].square()?.sum_all()
    }
}

/// A training run on the device makes no host synchronization per step: the state's non-finite scan
/// is one download per `CHECK_EVERY` steps (kernels add into one device counter, whatever the number
/// of state tensors), hyperparameters stay on the device (no uploads), and nothing is allocated from
/// the driver once the cache is warm.
#[test]
fn training_on_the_gpu_downloads_once_per_checked_segment() {
    use metagrad::replay::CHECK_EVERY;
    let Some((dev, _exclusive)) = gpu() else { return };
    let steps = 4 * CHECK_EVERY;
    let p = SgdOn(dev, steps);
    let z = vec![Tensor::full_on(0.05, [], DType::F32, dev).unwrap()];
    let warm = train(&p, &z).unwrap();
    drop(train(&p, &z).unwrap()); // the cache then holds what a run needs beside a live result
    let before = cuda::memory_stats(dev).unwrap();
    let again = train(&p, &z).unwrap();
    let after = cuda::memory_stats(dev).unwrap();
    assert!(again.iter().zip(&warm).all(|(a, b)| a.bit_eq(b)), "two runs on the device differ");
    assert_eq!(after.downloads - before.downloads, (steps / CHECK_EVERY) as u64, "{before:?} → {after:?}");
    assert_eq!(after.uploads, before.uploads, "{before:?} → {after:?}");
    assert_eq!(after.synchronizations, before.synchronizations, "{before:?} → {after:?}");
    assert_eq!(after.driver_allocs, before.driver_allocs, "{before:?} → {after:?}");
}
