//! Bitwise-identical results across runs and across thread counts (rayon pools of 1, 2 and 8 threads,
//! the equivalent of RAYON_NUM_THREADS=1, 2, 8): the order of every reduction depends only on shapes.
//!
//! Every op family is run inside each pool, twice, and its forward value, the gradient of a scalar loss
//! (with `create_graph` on and off) and a Hessian-vector product of that loss are compared bit for bit.
//! Sizes are chosen so that the parallel paths really split: element-wise work over several 16384-element
//! chunks, reductions and softmax over hundreds of rows, matmuls with many 4-row blocks and shapes that
//! are not multiples of the 4×16 register tile, scatter-adds (adjoints of index_select and gather) with
//! repeated indices.
use metagrad::{grad, hvp, no_grad, random, Conv2dOpts, DType, Result, Tape, Tensor, Var};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::OnceLock;

const THREADS: [usize; 3] = [1, 2, 8];

fn pools() -> &'static [(usize, ThreadPool)] {
    static POOLS: OnceLock<Vec<(usize, ThreadPool)>> = OnceLock::new();
    POOLS.get_or_init(|| THREADS.iter().map(|&n| (n, ThreadPoolBuilder::new().num_threads(n).build().unwrap())).collect())
}

/// Panics with the first differing element if two lists of tensors are not bit-identical.
fn assert_bits(name: &str, what: &str, a: &[Tensor], b: &[Tensor]) {
    assert_eq!(a.len(), b.len(), "{name}: different number of outputs {what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.bit_eq(y) {
            continue;
        }
        assert_eq!((x.dtype(), x.dims()), (y.dtype(), y.dims()), "{name}: output {i} has another dtype or shape {what}");
        let (u, v) = (x.to_vec_f64(), y.to_vec_f64());
        let j = (0..u.len()).find(|&j| u[j].to_bits() != v[j].to_bits()).unwrap_or(0);
        let n = (0..u.len()).filter(|&j| u[j].to_bits() != v[j].to_bits()).count();
        panic!("{name}: output {i} {:?} differs {what}: {n} elements, first at {j}: {:e} vs {:e}", x.dims(), u[j], v[j]);
    }
}

/// Runs `f` twice in each pool and asserts that all runs give the same bits.
fn check(name: &str, f: impl Fn() -> Result<Vec<Tensor>> + Sync) {
    let mut reference: Option<Vec<Tensor>> = None;
    for (n, pool) in pools() {
        assert_eq!(pool.install(rayon::current_num_threads), *n);
        let a = pool.install(&f).unwrap_or_else(|e| panic!("{name} on {n} threads: {e}"));
        let b = pool.install(&f).unwrap_or_else(|e| panic!("{name} on {n} threads: {e}"));
        assert_bits(name, &format!("between two runs on {n} threads"), &a, &b);
        match &reference {
            None => {
                // The comparison is only meaningful if something was computed.
                for (i, t) in a.iter().enumerate() {
                    assert!(t.all_finite(), "{name}: output {i} is not finite");
                }
                assert!(a.iter().any(|t| t.to_vec_f64().iter().any(|&x| x != 0.0)), "{name}: all outputs are zero");
                reference = Some(a);
            }
            Some(r) => assert_bits(name, &format!("between 1 and {n} threads"), r, &a),
        }
    }
}

fn randn(dims: &[usize], dt: DType, seed: u64) -> Tensor {
    Tensor::randn(dims.to_vec(), dt, seed)
}

/// Flattens and concatenates several outputs into one vector (so one loss covers them all).
fn flat(vs: &[Var]) -> Result<Var> {
    let f: Vec<Var> = vs.iter().map(|v| v.reshape([v.value().numel()])).collect::<Result<_>>()?;
    Var::concat(&f.iter().collect::<Vec<_>>(), 0)
}

/// For `y = f(inputs)`: the forward value, the scalar loss L = Σ w∘y² (w fixed random weights, so
/// the cotangent and the curvature are not trivial), ∇L with `create_graph` on, ∇L on a fresh graph
/// with `create_graph` off (must be the same bits), and the Hessian-vector product H·v for a random v.
fn derivatives(inputs: &[Tensor], f: &dyn Fn(&[Var]) -> Result<Var>) -> Result<Vec<Tensor>> {
    // (inputs, output, loss, gradients); the variables keep their tape alive.
    type Run = (Vec<Var>, Var, Var, Vec<Var>);
    let run = |create_graph: bool| -> Result<Run> {
        let tape = Tape::new();
        let xs: Vec<Var> = inputs.iter().map(|t| tape.var(t.clone())).collect();
        let y = f(&xs)?;
        let w = Var::constant(Tensor::randn(y.shape().clone(), DType::F64, 999).to_dtype(y.dtype()));
        let loss = y.square()?.mul(&w)?.sum_all()?;
        let g = grad(&loss, &xs.iter().collect::<Vec<_>>(), create_graph)?;
        Ok((xs, y, loss, g))
    };
    let (xs, y, loss, g) = run(true)?;
    let refs: Vec<&Var> = xs.iter().collect();
    let v: Vec<Tensor> = inputs.iter().enumerate().map(|(i, t)| Tensor::randn(t.shape().clone(), t.dtype(), 500 + i as u64)).collect();
    let hv = hvp(&loss, &refs, &v)?;
    let (_, _, _, g_plain) = run(false)?;
    for (i, (a, b)) in g.iter().zip(&g_plain).enumerate() {
        assert!(a.value().bit_eq(b.value()), "gradient {i} differs between create_graph = true and false");
    }
    let mut out = vec![y.value().clone(), loss.value().clone()];
    out.extend(g.iter().map(|g| g.value().clone()));
    out.extend(hv);
    Ok(out)
}

/// `check` of `derivatives` for inputs of the given shapes (random, seeded), in f32 and in f64.
fn check_op(name: &str, shapes: &[&[usize]], f: impl Fn(&[Var]) -> Result<Var> + Sync) {
    for dt in [DType::F32, DType::F64] {
        let inputs: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| randn(s, dt, 10 * i as u64 + 1)).collect();
        check(&format!("{name} ({dt})"), || derivatives(&inputs, &f));
    }
}

// ---------------------------------------------------------------------------------------------------

#[test]
fn random_numbers_are_the_same_on_any_thread_count() {
    for dt in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        check(&format!("randn/rand_uniform ({dt})"), || {
            Ok(vec![
                Tensor::randn([100_003], dt, 17),
                Tensor::randn([37, 2, 1351], dt, random::derive_seed(17, 3)),
                Tensor::rand_uniform([100_003], -2.0, 3.0, dt, 18),
                Tensor::from_vec(random::normal_vec(19, 70_001), [70_001])?,
                Tensor::from_vec(random::uniform_vec(19, 70_001), [70_001])?,
            ])
        });
    }
}

#[test]
fn elementwise_unary_ops() {
    // 300 × 257 = 77 100 elements: five 16384-element chunks.
    check_op("unary", &[&[300, 257]], |x| {
        let x = &x[0];
        let parts = [
            x.tanh()?,
            x.sigmoid()?.mul(&x.erf()?)?,
            x.abs()?.add_scalar(1.0)?.sqrt()?,
            x.square()?.add_scalar(1.0)?.log()?,
            x.gelu()?,
            x.gelu_tanh()?,
            x.relu()?.mul(x)?,
            x.clamp(-0.5, 0.7)?,
            x.abs()?.add_scalar(0.5)?.rsqrt()?,
            x.abs()?.add_scalar(0.1)?.powf(1.5)?,
            x.mul_scalar(-0.5)?.exp()?.neg()?,
            x.affine(0.3, -0.2)?.abs()?,
            x.sin()?.mul(&x.mul_scalar(3.0)?.cos()?)?,
        ];
        let mut acc = parts[0].clone();
        for p in &parts[1..] {
            acc = acc.add(p)?;
        }
        Ok(acc)
    });
}

#[test]
fn broadcast_binary_ops() {
    check_op("broadcast", &[&[300, 257], &[257], &[300, 1], &[], &[300, 257]], |v| {
        let (a, b, c, s, d) = (&v[0], &v[1], &v[2], &v[3], &v[4]);
        let den = c.square()?.add_scalar(1.0)?;
        a.mul(b)?.add(&a.div(&den)?)?.sub(&c.mul(b)?)?.add(&d.mul(a)?)?.mul(&s.tanh()?)?.add(&b.div(&d.square()?.add_scalar(1.0)?)?)
    });
}

#[test]
fn selection_ops() {
    // maximum and minimum with broadcasting, where_ with a [300, 1] condition and masked_fill with a
    // [257] mask: the VJPs are selections themselves.
    let bits = |d: &[usize], seed: u64| {
        let v: Vec<f64> =
            Tensor::randn(d.to_vec(), DType::F64, seed).to_vec_f64().iter().map(|&x| if x > 0.0 { 1.0 } else { 0.0 }).collect();
        Tensor::from_vec(v, d.to_vec()).unwrap()
    };
    let (rows, cols) = (bits(&[300, 1], 77), bits(&[257], 78));
    check_op("selection", &[&[300, 257], &[257], &[300, 1]], |v| {
        let (a, b, c) = (&v[0], &v[1], &v[2]);
        let m = a.maximum(b)?.add(&a.minimum(c)?)?;
        m.add(&Var::where_(&rows, a, b)?)?.add(&a.masked_fill(&cols, -0.5)?)
    });
}

#[test]
fn reductions_over_axes() {
    // [6, 500, 37]: reductions over every axis and pairs of axes, with hundreds of output rows.
    check_op("reductions", &[&[6, 500, 37]], |v| {
        let x = &v[0];
        flat(&[
            x.sum(&[1], false)?,
            x.sum(&[0, 2], true)?,
            x.sum(&[-1], false)?,
            x.mean(&[0, 1], false)?,
            x.mean_all()?.reshape([1])?,
            x.sum_all()?.reshape([1])?,
            x.max(1, false)?,
            x.max(2, true)?,
            x.max(0, false)?,
            x.logsumexp(1, false)?,
            x.logsumexp(-1, true)?,
            x.logsumexp(0, false)?,
        ])
    });
}

#[test]
fn matmul_large_and_ragged() {
    // 257 × 300 × 131: neither 257 rows nor 131 columns is a multiple of the 4×16 (f32) or 4×8 (f64)
    // tile, and the 65 row blocks are spread over the threads.
    check_op("matmul 257x300x131", &[&[257, 300], &[300, 131]], |v| v[0].matmul(&v[1]));
    check_op("matmul small", &[&[3, 5], &[5, 7], &[7, 1]], |v| v[0].matmul(&v[1])?.matmul(&v[2]));
}

#[test]
fn batched_matmul() {
    check_op("batched matmul", &[&[3, 65, 70], &[3, 70, 33]], |v| v[0].matmul(&v[1]));
    // Broadcast batch dimensions: the adjoint sums over the broadcast batch.
    check_op("broadcast batched matmul", &[&[2, 1, 33, 40], &[3, 40, 17]], |v| v[0].matmul(&v[1]));
}

#[test]
fn softmax_and_log_softmax() {
    check_op("softmax", &[&[512, 100]], |v| flat(&[v[0].softmax(-1)?, v[0].softmax(0)?.mul_scalar(10.0)?]));
    check_op("log_softmax", &[&[512, 100]], |v| flat(&[v[0].log_softmax(1)?, v[0].log_softmax(0)?]));
    check_op("softmax middle axis", &[&[8, 50, 40]], |v| v[0].softmax(1));
}

#[test]
fn cross_entropy() {
    let labels: Vec<usize> = (0..1024).map(|i| (i * 37 + 11) % 50).collect();
    check_op("cross_entropy", &[&[1024, 50], &[1024]], |v| {
        let w = v[1].sigmoid()?;
        flat(&[v[0].cross_entropy(&labels, Some(&w))?.reshape([1])?, v[0].cross_entropy_per_example(&labels)?])
    });
}

#[test]
fn layer_norm_and_batch_norm() {
    check_op("layer_norm", &[&[256, 300], &[300], &[300]], |v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5));
    check_op("batch_norm", &[&[16, 8, 12, 12], &[8], &[8]], |v| v[0].batch_norm(&v[1], &v[2], 1e-5));
}

#[test]
fn conv2d_and_pooling() {
    check_op("conv2d", &[&[4, 6, 20, 20], &[8, 6, 3, 3], &[8]], |v| v[0].conv2d(&v[1], Some(&v[2]), Conv2dOpts::new(1, 1)));
    let strided = Conv2dOpts { stride: (2, 1), padding: (2, 1), dilation: (2, 1) };
    check_op("conv2d strided dilated + avg_pool2d", &[&[3, 5, 17, 19], &[7, 5, 3, 2]], |v| {
        v[0].conv2d(&v[1], None, strided)?.tanh()?.avg_pool2d((2, 3), Conv2dOpts::new(2, 1))
    });
    check_op("avg_pool2d", &[&[8, 16, 24, 24]], |v| v[0].avg_pool2d((3, 3), Conv2dOpts::new(1, 1)));
}

#[test]
fn index_select_and_gather_scatter_add() {
    // Indices repeat many times, so the adjoints accumulate several contributions per row.
    let rows: Vec<usize> = (0..500).map(|i| (i * 131 + 7) % 200).collect();
    let cols: Vec<usize> = (0..150).map(|i| (i * 17 + 3) % 64).collect();
    check_op("index_select", &[&[200, 64]], |v| flat(&[v[0].index_select(0, &rows)?, v[0].index_select(1, &cols)?]));
    let g1: Vec<usize> = (0..300 * 90).map(|i| (i * 7919 + i / 90) % 40).collect();
    let g0: Vec<usize> = (0..120 * 300).map(|i| (i * 104_729 + 13) % 50).collect();
    check_op("gather", &[&[300, 40], &[50, 300]], |v| flat(&[v[0].gather(1, &g1, [300, 90])?, v[1].gather(0, &g0, [120, 300])?]));
}

#[test]
fn data_movement() {
    check_op("permute/transpose/narrow/concat/broadcast", &[&[16, 30, 40], &[16, 12, 40], &[40]], |v| {
        let a = v[0].permute(&[2, 0, 1])?.transpose(0, 2)?; // [30, 16, 40]
        let b = Var::concat(&[&v[0], &v[1]], 1)?.narrow(1, 5, 30)?; // [16, 30, 40]
        let c = v[2].broadcast_to(&metagrad::Shape::new([16, 30, 40]))?;
        a.permute(&[1, 0, 2])?.mul(&b)?.add(&c.mul(&b)?)
    });
}

#[test]
fn attention() {
    check_op("attention", &[&[2, 4, 64, 16], &[2, 4, 80, 16], &[2, 4, 80, 24]], |v| v[0].attention(&v[1], &v[2], 0.25, false));
    check_op("causal attention", &[&[2, 3, 72, 16], &[2, 3, 72, 16], &[2, 3, 72, 8]], |v| v[0].attention(&v[1], &v[2], 0.25, true));
}

#[test]
fn mlp_sgd_with_curvature_five_steps() {
    // A two-layer MLP trained for five steps; each step computes the loss, its gradient (create_graph)
    // and a Hessian-vector product in a per-step random direction, and the update uses both
    // (p ← p − lr·(g + 0.1·Hv)), so any nondeterminism anywhere compounds into the final parameters.
    let x = Tensor::randn([256, 64], DType::F32, 1);
    let labels: Vec<usize> = (0..256).map(|i| (i * 7 + 3) % 10).collect();
    let init = vec![
        Tensor::randn([64, 128], DType::F64, 2).to_dtype(DType::F32),
        Tensor::zeros([128], DType::F32),
        Tensor::randn([128, 10], DType::F64, 3).to_dtype(DType::F32),
        Tensor::zeros([10], DType::F32),
    ];
    check("mlp sgd", || {
        let mut params = init.clone();
        let mut out = Vec::new();
        for step in 0..5u64 {
            let tape = Tape::new();
            let p: Vec<Var> = params.iter().map(|t| tape.var(t.clone())).collect();
            let h = Var::constant(x.clone()).matmul(&p[0].mul_scalar(0.125)?)?.add(&p[1])?.gelu()?;
            let logits = h.matmul(&p[2].mul_scalar(0.09)?)?.add(&p[3])?;
            let loss = logits.cross_entropy(&labels, None)?;
            let refs: Vec<&Var> = p.iter().collect();
            let g = grad(&loss, &refs, true)?;
            let seed = random::derive_seed(42, step);
            let dirs: Vec<Tensor> =
                params.iter().enumerate().map(|(i, t)| Tensor::randn(t.shape().clone(), DType::F32, seed + i as u64)).collect();
            let hv = hvp(&loss, &refs, &dirs)?;
            out.push(loss.value().clone());
            out.extend(g.iter().map(|g| g.value().clone()));
            out.extend(hv.iter().cloned());
            params = no_grad(|| -> Result<Vec<Tensor>> {
                params
                    .iter()
                    .zip(&g)
                    .zip(&hv)
                    .map(|((p, g), hv)| {
                        let step = g.add(&Var::constant(hv.clone()).mul_scalar(0.1)?)?.mul_scalar(0.5)?;
                        Ok(Var::constant(p.clone()).sub(&step)?.value().clone())
                    })
                    .collect()
            })?;
        }
        out.extend(params);
        Ok(out)
    });
}

#[test]
fn independent_training_jobs_in_parallel() {
    // Users run independent tapes as parallel jobs (one per seed, one per data subset...). A rayon
    // worker that waits inside a parallel kernel of one job may run another job on the same thread:
    // the second job must not see the first one's grad mode (grad_with with create_graph off and
    // no_grad both switch recording off while their kernels run).
    let job = |i: u64| -> Result<Vec<Tensor>> {
        let tape = Tape::new();
        let x = tape.var(Tensor::randn([600, 257], DType::F32, i));
        let w = tape.var(Tensor::randn([257, 64], DType::F32, 100 + i));
        let loss = x.matmul(&w)?.tanh()?.square()?.mean_all()?;
        let g = grad(&loss, &[&x, &w], false)?;
        // Some work in no_grad mode, as REPLAY's training steps do.
        let extra = no_grad(|| x.exp()?.sum(&[0], false))?;
        let loss2 = x.matmul(&w)?.sigmoid()?.sum_all()?;
        let hv = hvp(&loss2, &[&w], &[Tensor::ones([257, 64], DType::F32)])?;
        Ok(vec![loss.value().clone(), g[0].value().clone(), g[1].value().clone(), extra.value().clone(), hv[0].clone()])
    };
    const JOBS: u64 = 16;
    let serial: Vec<Vec<Tensor>> = (0..JOBS).map(|i| pools()[0].1.install(|| job(i)).unwrap()).collect();
    let compare = |par: &[Vec<Tensor>], what: &str| {
        for (i, (a, b)) in serial.iter().zip(par).enumerate() {
            assert_bits(&format!("job {i}"), what, a, b);
        }
    };
    for (n, pool) in pools() {
        // Jobs as parallel iterations ...
        use rayon::prelude::*;
        let par: Vec<Vec<Tensor>> = pool.install(|| (0..JOBS).into_par_iter().map(job).collect::<Result<_>>()).unwrap();
        compare(&par, &format!("between serial jobs and a parallel iterator of jobs on {n} threads"));
        // ... and submitted to the pool from several threads at once (a few times: stealing is timing).
        for round in 0..if *n > 1 { 3 } else { 1 } {
            let par: Vec<Vec<Tensor>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..JOBS).map(|i| s.spawn(move || pool.install(|| job(i)))).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect::<Result<_>>()
            })
            .unwrap();
            compare(&par, &format!("between serial jobs and jobs submitted from {JOBS} threads to {n} threads (round {round})"));
        }
    }
}

/// A digest of a mixed workload (forward, gradient, HVP of several op families) on rayon's *global*
/// pool, printed when METAGRAD_DIGEST is set; see `rayon_num_threads_env_var`.
#[test]
fn global_pool_digest() {
    if std::env::var_os("METAGRAD_DIGEST").is_none() {
        return;
    }
    let mut outs = Vec::new();
    let x = randn(&[257, 300], DType::F32, 1);
    let w = randn(&[300, 131], DType::F32, 2);
    outs.extend(derivatives(&[x, w], &|v| v[0].matmul(&v[1])?.log_softmax(1)).unwrap());
    let img = randn(&[4, 6, 20, 20], DType::F64, 3);
    let k = randn(&[8, 6, 3, 3], DType::F64, 4);
    outs.extend(
        derivatives(&[img, k], &|v| v[0].conv2d(&v[1], None, Conv2dOpts::new(1, 1))?.avg_pool2d((2, 2), Conv2dOpts::new(2, 0))).unwrap(),
    );
    let rows: Vec<usize> = (0..500).map(|i| (i * 131 + 7) % 200).collect();
    outs.extend(derivatives(&[randn(&[200, 64], DType::F32, 5)], &|v| v[0].index_select(0, &rows)?.layer_norm(None, None, 1e-5)).unwrap());
    outs.push(Tensor::randn([100_003], DType::F32, 6));
    // FNV-1a over every output's bytes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in &outs {
        for &b in t.as_bytes().unwrap() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    println!("DIGEST={h:016x} threads={}", rayon::current_num_threads());
}

#[test]
fn rayon_num_threads_env_var() {
    // The same workload in fresh processes whose global pool has RAYON_NUM_THREADS = 1, 2 and 8.
    if std::env::var_os("METAGRAD_DIGEST").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let digests: Vec<(String, String)> = ["1", "2", "8"]
        .iter()
        .map(|n| {
            let out = std::process::Command::new(&exe)
                .args(["--exact", "global_pool_digest", "--nocapture", "--test-threads", "1"])
                .env("METAGRAD_DIGEST", "1")
                .env("RAYON_NUM_THREADS", n)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "RAYON_NUM_THREADS={n}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
            // libtest prints "test global_pool_digest ... " on the same line.
            let at = stdout.find("DIGEST=").unwrap_or_else(|| panic!("no digest in {stdout}"));
            let mut words = stdout[at..].split_whitespace();
            let digest = words.next().unwrap().to_string();
            assert_eq!(words.next(), Some(format!("threads={n}").as_str()), "{stdout}");
            (n.to_string(), digest)
        })
        .collect();
    assert!(digests.iter().all(|(_, d)| *d == digests[0].1), "digests differ across RAYON_NUM_THREADS: {digests:?}");
}
