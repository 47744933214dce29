//! The fused convolution ([`Var::conv2d`]) against the im2col composite ([`Var::conv2d_composite`]) and
//! against finite differences: forward values, gradients, Hessian-vector products and third
//! derivatives, in f64 and f32, over random geometries; bitwise determinism across thread pools; errors.
use metagrad::*;
use proptest::prelude::*;

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), dtype, seed)
}

/// A convolution problem: shapes, options and whether a bias is used.
#[derive(Clone, Debug)]
struct Case {
    x: [usize; 4],
    w: [usize; 4],
    opts: Conv2dOpts,
    bias: bool,
}

impl Case {
    fn out_hw(&self) -> Option<(usize, usize)> {
        let o = self.opts;
        let span = |k: usize, d: usize| d * (k - 1) + 1;
        let (hp, wp) = (self.x[2] + 2 * o.padding.0, self.x[3] + 2 * o.padding.1);
        let (sh, sw) = (span(self.w[2], o.dilation.0), span(self.w[3], o.dilation.1));
        (hp >= sh && wp >= sw).then(|| ((hp - sh) / o.stride.0 + 1, (wp - sw) / o.stride.1 + 1))
    }

    /// Inputs [x, w, (b)] and a cotangent-like weighting R of the output.
    fn inputs(&self, dtype: DType, seed: u64) -> (Vec<Tensor>, Tensor) {
        let (ho, wo) = self.out_hw().expect("valid case");
        let mut v = vec![randn(&self.x, dtype, seed), randn(&self.w, dtype, seed + 1)];
        if self.bias {
            v.push(randn(&[self.w[0]], dtype, seed + 2));
        }
        (v, randn(&[self.x[0], self.w[0], ho, wo], dtype, seed + 3))
    }

    fn conv(&self, v: &[Var], fused: bool) -> Result<Var> {
        let b = if self.bias { Some(&v[2]) } else { None };
        if fused {
            v[0].conv2d(&v[1], b, self.opts)
        } else {
            v[0].conv2d_composite(&v[1], b, self.opts)
        }
    }

    /// Σ tanh(conv(x, w) + b) ∘ R: nonlinear, so its Hessian has every kind of term.
    fn loss(&self, v: &[Var], r: &Var, fused: bool) -> Result<Var> {
        self.conv(v, fused)?.tanh()?.mul(r)?.sum_all()
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        (1usize..=3, 1usize..=4, 1usize..=9, 1usize..=9),
        (1usize..=5, 1usize..=3, 1usize..=3),
        ((1usize..=3, 1usize..=3), (0usize..=2, 0usize..=2), (1usize..=2, 1usize..=2)),
        any::<bool>(),
    )
        .prop_map(|((n, c, h, w), (o, kh, kw), (stride, padding, dilation), bias)| Case {
            x: [n, c, h, w],
            w: [o, c, kh, kw],
            opts: Conv2dOpts { stride, padding, dilation },
            bias,
        })
        .prop_filter("kernel larger than the padded input", |c| c.out_hw().is_some())
}

/// Largest |a − b| / (atol + |b|).
fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let (a, b) = (a.to_vec_f64(), b.to_vec_f64());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        assert!((p - q).abs() <= tol * scale, "{what}[{i}]: fused {p} vs composite {q} (tol {tol} × scale {scale})");
    }
}

/// Forward (bitwise), gradient and HVP of the fused path against the composite path.
fn fused_matches_composite(case: &Case, dtype: DType, tol: f64, seed: u64) {
    let (xs, r) = case.inputs(dtype, seed);
    let r = Var::constant(r);
    let dirs: Vec<Tensor> = xs.iter().enumerate().map(|(i, x)| randn(x.dims(), dtype, seed + 10 + i as u64)).collect();
    let run = |fused: bool| -> (Tensor, Vec<Tensor>, Vec<Tensor>) {
        let consts: Vec<Var> = xs.iter().map(|x| Var::constant(x.clone())).collect();
        let y = case.conv(&consts, fused).unwrap().value().clone();
        let tape = Tape::new();
        let vars: Vec<Var> = xs.iter().map(|x| tape.var(x.clone())).collect();
        let refs: Vec<&Var> = vars.iter().collect();
        let l = case.loss(&vars, &r, fused).unwrap();
        let g = grad(&l, &refs, false).unwrap().iter().map(|g| g.value().clone()).collect();
        let tape = Tape::new();
        let vars: Vec<Var> = xs.iter().map(|x| tape.var(x.clone())).collect();
        let refs: Vec<&Var> = vars.iter().collect();
        let l = case.loss(&vars, &r, fused).unwrap();
        (y, g, hvp(&l, &refs, &dirs).unwrap())
    };
    let (yf, gf, hf) = run(true);
    let (yc, gc, hc) = run(false);
    // The forward reduces over (c, ki, kj) in the same order as im2col + matmul: the same bits.
    assert!(yf.bit_eq(&yc), "{case:?}: forward differs from the composite");
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        assert_close(&format!("{case:?} grad {i}"), a, b, tol);
    }
    for (i, (a, b)) in hf.iter().zip(&hc).enumerate() {
        assert_close(&format!("{case:?} hvp {i}"), a, b, tol);
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer sweep.
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)))]
    #[test]
    fn fused_equals_composite_f64(case in case_strategy(), seed in 0u64..1000) {
        fused_matches_composite(&case, DType::F64, 1e-12, seed);
    }

    #[test]
    fn fused_equals_composite_f32(case in case_strategy(), seed in 0u64..1000) {
        fused_matches_composite(&case, DType::F32, 2e-5, seed);
    }
}

/// The standalone backward ops equal the composite's VJPs.
#[test]
fn backward_ops_equal_composite_vjps() {
    for (case, seed) in [
        (Case { x: [2, 3, 7, 8], w: [4, 3, 3, 2], opts: Conv2dOpts { stride: (2, 1), padding: (1, 2), dilation: (1, 2) }, bias: false }, 1),
        (Case { x: [3, 2, 6, 5], w: [3, 2, 2, 3], opts: Conv2dOpts { stride: (3, 2), padding: (0, 1), dilation: (2, 1) }, bias: false }, 2),
    ] {
        let (xs, dy) = case.inputs(DType::F64, seed);
        let tape = Tape::new();
        let (x, w) = (tape.var(xs[0].clone()), tape.var(xs[1].clone()));
        let y = x.conv2d_composite(&w, None, case.opts).unwrap();
        let want = vjp(&y, &[&x, &w], &dy).unwrap();
        let dyv = Var::constant(dy.clone());
        let dx = Var::conv2d_backward_input(&dyv, &w.detach(), (case.x[2], case.x[3]), case.opts).unwrap();
        let dw = Var::conv2d_backward_weight(&x.detach(), &dyv, (case.w[2], case.w[3]), case.opts).unwrap();
        assert_close("dx", dx.value(), &want[0], 1e-12);
        assert_close("dw", dw.value(), &want[1], 1e-12);
    }
}

/// Third derivatives: ∇⟨∇⟨∇L, v⟩, u⟩ through the fused path (conv nodes all the way down) against the
/// composite, and the fused path's second derivative of ⟨∇L, u⟩ against finite differences.
#[test]
fn third_derivatives_are_exact() {
    let case =
        Case { x: [2, 2, 5, 6], w: [3, 2, 3, 2], opts: Conv2dOpts { stride: (2, 1), padding: (1, 1), dilation: (1, 2) }, bias: true };
    let (xs, r) = case.inputs(DType::F64, 7);
    let r = Var::constant(r);
    let dir =
        |s: u64| -> Vec<Var> { xs.iter().enumerate().map(|(i, x)| Var::constant(randn(x.dims(), DType::F64, s + i as u64))).collect() };
    let (v, u) = (dir(100), dir(200));
    let dot = |a: &[Var], b: &[Var]| -> Var {
        let mut s = a[0].mul(&b[0]).unwrap().sum_all().unwrap();
        for (p, q) in a.iter().zip(b).skip(1) {
            s = s.add(&p.mul(q).unwrap().sum_all().unwrap()).unwrap();
        }
        s
    };
    let third = |fused: bool| -> Vec<Tensor> {
        let tape = Tape::new();
        let vars: Vec<Var> = xs.iter().map(|x| tape.var(x.clone())).collect();
        let refs: Vec<&Var> = vars.iter().collect();
        let l = case.loss(&vars, &r, fused).unwrap();
        let g = grad(&l, &refs, true).unwrap();
        let h = grad(&dot(&g, &v), &refs, true).unwrap();
        grad(&dot(&h, &u), &refs, false).unwrap().iter().map(|t| t.value().clone()).collect()
    };
    for (i, (a, b)) in third(true).iter().zip(&third(false)).enumerate() {
        assert_close(&format!("third derivative {i}"), a, b, 1e-11);
    }
    // f(p) = ⟨∇L(p), u⟩; its HVP is L's third derivative applied to (u, v).
    let f = |p: &[Var]| -> Result<Var> {
        let l = case.loss(p, &r, true)?;
        let refs: Vec<&Var> = p.iter().collect();
        let g = grad(&l, &refs, true)?;
        Ok(dot(&g, &u))
    };
    let vt: Vec<Tensor> = v.iter().map(|t| t.value().clone()).collect();
    let rep = gradcheck::check_hvp(f, &xs, &vt, 1e-5).unwrap();
    assert!(rep.within(1e-6, 1e-5), "third derivative vs finite differences: {rep}");
}

type Model = Box<dyn Fn(&[Var]) -> Result<Var>>;

/// Gradients and HVPs of the fused path against finite differences (f64), for a lone convolution and
/// small conv nets with batch norm before the activation, average pooling, tanh and GELU.
#[test]
fn fused_conv_nets_match_finite_differences() {
    let t = |s: &[usize], seed: u64| randn(s, DType::F64, seed);
    let cases: Vec<(&str, Model, Vec<Tensor>)> = vec![
        (
            "conv",
            Box::new(|v: &[Var]| {
                v[0].conv2d(&v[1], Some(&v[2]), Conv2dOpts { stride: (2, 1), padding: (1, 2), dilation: (2, 1) })?
                    .tanh()?
                    .square()?
                    .sum_all()
            }),
            vec![t(&[2, 2, 6, 5], 1), t(&[3, 2, 2, 3], 2), t(&[3], 3)],
        ),
        (
            "conv_bn_tanh_pool_conv_gelu",
            Box::new(|v: &[Var]| {
                let h = v[0].conv2d(&v[1], None, Conv2dOpts::new(1, 1))?.batch_norm(&v[2], &v[3], 1e-5)?.tanh()?;
                let h = h.avg_pool2d((2, 2), Conv2dOpts::new(2, 0))?;
                h.conv2d(&v[4], Some(&v[5]), Conv2dOpts::new(1, 1))?.gelu()?.mean_all()
            }),
            vec![t(&[2, 2, 6, 6], 4), t(&[3, 2, 3, 3], 5), t(&[3], 6), t(&[3], 7), t(&[2, 3, 3, 3], 8), t(&[2], 9)],
        ),
        (
            "conv_bn_gelu_strided_conv",
            Box::new(|v: &[Var]| {
                let h = v[0].conv2d(&v[1], None, Conv2dOpts { stride: (1, 2), padding: (1, 0), dilation: (1, 1) })?;
                let h = h.batch_norm(&v[2], &v[3], 1e-5)?.gelu()?;
                h.conv2d(&v[4], None, Conv2dOpts::new(2, 1))?.avg_pool2d((2, 1), Conv2dOpts::new(1, 0))?.tanh()?.sum_all()
            }),
            vec![t(&[3, 1, 5, 7], 10), t(&[2, 1, 2, 3], 11), t(&[2], 12), t(&[2], 13), t(&[2, 2, 3, 2], 14)],
        ),
    ];
    for (name, f, xs) in cases {
        let r = gradcheck::check_grad(&f, &xs, 1e-6).unwrap();
        assert!(r.within(1e-6, 1e-5), "{name} grad: {r}");
        let v: Vec<Tensor> = xs.iter().enumerate().map(|(i, x)| t(x.dims(), 100 + i as u64)).collect();
        let r = gradcheck::check_hvp(&f, &xs, &v, 1e-5).unwrap();
        assert!(r.within(1e-5, 1e-4), "{name} hvp: {r}");
    }
}

/// Forward, gradient and HVP bits of a small conv net, computed in a rayon pool of `threads` threads.
fn net_bits(threads: usize, dtype: DType) -> Vec<Vec<u8>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        // 18 images: more than the weight gradient's 16 partial sums, in uneven groups.
        let x = Var::constant(randn(&[18, 3, 11, 10], dtype, 1));
        let ps = [randn(&[8, 3, 3, 3], dtype, 2), randn(&[5, 8, 3, 2], dtype, 3), randn(&[5], dtype, 4)];
        let dirs: Vec<Tensor> = ps.iter().enumerate().map(|(i, p)| randn(p.dims(), dtype, 10 + i as u64)).collect();
        let loss = |p: &[Var]| -> Result<Var> {
            let h = x.conv2d(&p[0], None, Conv2dOpts::new(1, 1))?.tanh()?;
            h.conv2d(&p[1], Some(&p[2]), Conv2dOpts { stride: (2, 1), padding: (1, 0), dilation: (1, 2) })?.gelu()?.mean_all()
        };
        let tape = Tape::new();
        let vars: Vec<Var> = ps.iter().map(|p| tape.var(p.clone())).collect();
        let refs: Vec<&Var> = vars.iter().collect();
        let l = loss(&vars).unwrap();
        let mut out = vec![l.value().as_bytes().unwrap().to_vec()];
        out.extend(grad(&l, &refs, false).unwrap().iter().map(|g| g.value().as_bytes().unwrap().to_vec()));
        let tape = Tape::new();
        let vars: Vec<Var> = ps.iter().map(|p| tape.var(p.clone())).collect();
        let refs: Vec<&Var> = vars.iter().collect();
        let l = loss(&vars).unwrap();
        out.extend(hvp(&l, &refs, &dirs).unwrap().iter().map(|h| h.as_bytes().unwrap().to_vec()));
        out
    })
}

#[test]
fn bitwise_deterministic_across_thread_pools() {
    for dtype in [DType::F32, DType::F64] {
        let one = net_bits(1, dtype);
        assert_eq!(one, net_bits(1, dtype), "{dtype}: repeated runs differ");
        for threads in [2, 8] {
            assert_eq!(one, net_bits(threads, dtype), "{dtype}: {threads} threads differ from 1");
        }
    }
}

#[test]
fn bad_shapes_are_clear_errors() {
    let v = |s: &[usize]| Var::constant(Tensor::zeros(s.to_vec(), DType::F64));
    let o = Conv2dOpts::new(1, 0);
    let msg = |r: Result<Var>| r.unwrap_err().to_string();
    assert!(msg(v(&[1, 2, 5, 5]).conv2d(&v(&[3, 4, 3, 3]), None, o)).contains("conv2d"));
    assert!(msg(v(&[1, 2, 5, 5]).conv2d(&v(&[3, 2, 3, 3]), Some(&v(&[2])), o)).contains("bias"));
    assert!(msg(v(&[1, 2, 2, 2]).conv2d(&v(&[3, 2, 3, 3]), None, o)).contains("smaller than"));
    assert!(msg(v(&[2, 5, 5]).conv2d(&v(&[3, 2, 3, 3]), None, o)).contains("[N, C, H, W]"));
    let e = msg(Var::conv2d_backward_input(&v(&[1, 3, 4, 4]), &v(&[3, 2, 3, 3]), (5, 5), o));
    assert!(e.contains("conv2d_backward_input") && e.contains("[1, 3, 4, 4]"), "{e}");
    let e = msg(Var::conv2d_backward_weight(&v(&[1, 2, 5, 5]), &v(&[2, 3, 3, 3]), (3, 3), o));
    assert!(e.contains("conv2d_backward_weight"), "{e}");
    let f32w = Var::constant(Tensor::zeros([3, 2, 3, 3], DType::F32));
    assert!(msg(v(&[1, 2, 5, 5]).conv2d(&f32w, None, o)).contains("dtype"));
}

/// Regression (found by the no-panic proptest in tests/errors.rs): an input of width 0 with padding has
/// a non-empty output (all padding, so zeros); the fused kernels used to panic on a zero-size chunk.
#[test]
fn zero_width_input_with_padding_is_all_zeros() {
    let o = Conv2dOpts::new(2, 2);
    let tape = Tape::new();
    let x = tape.var(Tensor::zeros([2, 3, 4, 0], DType::F32));
    let w = tape.var(randn(&[1, 3, 1, 1], DType::F32, 1));
    let y = x.conv2d(&w, None, o).unwrap();
    assert_eq!(y.dims(), &[2, 1, 4, 2]);
    assert!(y.value().to_vec_f64().iter().all(|&v| v == 0.0));
    let yc = x.conv2d_composite(&w, None, o).unwrap();
    assert_eq!(yc.value().to_vec_f64(), y.value().to_vec_f64());
    let loss = y.square().unwrap().sum_all().unwrap();
    let g = grad(&loss, &[&x, &w], true).unwrap();
    assert_eq!(g[0].dims(), &[2, 3, 4, 0]);
    assert!(g[1].value().to_vec_f64().iter().all(|&v| v == 0.0));
}
