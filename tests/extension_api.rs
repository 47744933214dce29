//! The API a library author builds on: arithmetic on tensors (methods and operators) with the same bits
//! as the differentiable ops, a differentiable dtype conversion, training steps reused outside REPLAY,
//! the per-step training observer, the trained state beside the metagradient, and the build without
//! CUDA.

use metagrad::replay::reference::{Reference, ReferenceProblem};
use metagrad::replay::{metagradient, train, train_with, ScheduleKind, StepCtx, Training};
use metagrad::{grad, hvp, DType, Device, Error, Result, Tape, Tensor, Var};

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap().to_dtype(DType::F32)
}

/// Tensor ops are the kernels of the Var ops: the same bits, without a tape.
#[test]
fn tensor_arithmetic_has_the_bits_of_the_variable_ops() -> Result<()> {
    let a = Tensor::randn([3, 4], DType::F32, 1);
    let b = Tensor::randn([4], DType::F32, 2);
    let (va, vb) = (Var::constant(a.clone()), Var::constant(b.clone()));
    let pairs: Vec<(Tensor, Var)> = vec![
        (a.add(&b)?, va.add(&vb)?),
        (a.mul(&b)?.tanh()?, va.mul(&vb)?.tanh()?),
        (a.div(&b)?.exp()?, va.div(&vb)?.exp()?),
        (a.matmul(&b.reshape([4, 1])?)?, va.matmul(&vb.reshape([4, 1])?)?),
        (a.softmax(-1)?, va.softmax(-1)?),
        (a.sum(&[0], true)?, va.sum(&[0], true)?),
        (a.transpose(0, 1)?.narrow(0, 1, 2)?, va.transpose(0, 1)?.narrow(0, 1, 2)?),
        (a.logsumexp(1, false)?, va.logsumexp(1, false)?),
    ];
    for (i, (x, y)) in pairs.iter().enumerate() {
        assert!(x.bit_eq(y.value()), "pair {i}: {x:?} vs {:?}", y.value());
    }
    Ok(())
}

/// `&a + &b`, `&a * 2.0`, `2.0 - &a`, ... on tensors and variables: the same values as the methods,
/// divisions exact (a quotient of the operands, not a product with a rounded reciprocal), and a
/// failing op an error, not a panic.
#[test]
fn operators_compute_like_the_methods_and_return_errors() -> Result<()> {
    let a = t(&[1.0, -2.0, 3.0], &[3]);
    let b = t(&[0.5, 4.0, -8.0], &[3]);
    assert!((&a + &b)?.bit_eq(&a.add(&b)?));
    assert!((&a - &b)?.bit_eq(&a.sub(&b)?));
    assert!((&a * &b)?.bit_eq(&a.mul(&b)?));
    assert!((&a / &b)?.bit_eq(&a.div(&b)?));
    assert_eq!((&a * 2.0)?.to_vec_f64(), vec![2.0, -4.0, 6.0]);
    assert_eq!((2.0 - &a)?.to_vec_f64(), vec![1.0, 4.0, -1.0]);
    assert_eq!((&a + 0.5)?.to_vec_f64(), vec![1.5, -1.5, 3.5]);
    assert_eq!((-&a)?.to_vec_f64(), vec![-1.0, 2.0, -3.0]);
    // x / 3 is the quotient rounded once: 1/3 in f32, not 1 · fl(1/3) rounded again.
    let three = (&Tensor::ones([1], DType::F32) / 3.0)?;
    assert_eq!(three.to_vec::<f32>()?, vec![1.0f32 / 3.0]);
    assert_eq!((6.0 / &t(&[4.0], &[1]))?.to_vec_f64(), vec![1.5]);
    // Variables: the same, and differentiable.
    let tape = Tape::new();
    let x = tape.var(a.clone());
    let y = ((((&x * 3.0)? - 1.0)? * &x)? / 2.0)?; // (3x − 1)·x / 2
    let g = grad(&y.sum_all()?, &[&x], false)?.remove(0);
    assert_eq!(g.value().to_vec_f64(), a.to_vec_f64().iter().map(|v| (6.0 * v - 1.0) / 2.0).collect::<Vec<_>>());
    // Errors stay errors.
    let bad = (&a + &t(&[1.0, 2.0], &[2])).unwrap_err();
    assert!(matches!(bad, Error::Shape { op: "add", .. }), "{bad}");
    let bad = (&x * &Var::constant(Tensor::ones([3], DType::F64))).unwrap_err();
    assert!(matches!(bad, Error::DType { op: "mul", .. }), "{bad}");
    Ok(())
}

/// Var::to_dtype is differentiable: the cotangent is converted back. For L = Σ (x as f32)², with x in
/// f64: ∇L = 2·(x as f32) (in f64, exactly), and H·v = 2·(v as f32).
#[test]
fn to_dtype_is_differentiable_to_second_order() -> Result<()> {
    let x0 = Tensor::from_vec(vec![0.1f64, -1.3, 2.7, 1e-3], [4])?;
    let v = Tensor::from_vec(vec![1.0f64, 0.5, -2.0, 3.0], [4])?;
    let tape = Tape::new();
    let x = tape.var(x0.clone());
    let loss = x.to_dtype(DType::F32)?.square()?.sum_all()?;
    assert_eq!(loss.dtype(), DType::F32);
    let g = grad(&loss, &[&x], true)?.remove(0);
    assert_eq!(g.dtype(), DType::F64);
    let want: Vec<f64> = x0.to_vec_f64().iter().map(|&v| (2.0 * (v as f32)) as f64).collect();
    assert_eq!(g.value().to_vec_f64(), want);
    let hv = hvp(&loss, &[&x], std::slice::from_ref(&v))?.remove(0);
    let want: Vec<f64> = v.to_vec_f64().iter().map(|&v| (2.0 * (v as f32)) as f64).collect();
    assert_eq!(hv.to_vec_f64(), want);
    // A no-op conversion is the same variable.
    assert!(x.to_dtype(DType::F64)?.value().bit_eq(&x0));
    Ok(())
}

/// A `Training::step` runs in a loop of one's own with `StepCtx::new(false)`, giving the bits of
/// `train`; `train_with` reports every step's loss and state, and the metagradient returns s_T.
#[test]
fn training_steps_are_reusable_and_observable() -> Result<()> {
    let r1 = ReferenceProblem::new(Reference::R1, DType::F64);
    let z = r1.initial_meta();
    let z_vars: Vec<Var> = z.iter().map(|m| Var::constant(m.clone())).collect();
    // Our own loop.
    let mut s = r1.initial_state()?;
    let mut losses = Vec::new();
    for step in 0..r1.steps() {
        let tape = Tape::new();
        let vars: Vec<Var> = s.iter().map(|x| tape.var(x.clone())).collect();
        let ctx = StepCtx::new(false);
        assert!(!ctx.taped());
        s = r1.step(&ctx, step, &vars, &z_vars)?.iter().map(|v| v.value().clone()).collect();
        losses.push(ctx.loss().expect("the step took a gradient").to_scalar()?);
    }
    let trained = train(&r1, &z)?;
    assert!(trained.iter().zip(&s).all(|(a, b)| a.bit_eq(b)), "own loop vs train");
    // The observer sees the same losses and states, step by step.
    let mut seen = Vec::new();
    let observed = train_with(&r1, &z, |info| {
        seen.push((info.step, info.loss.as_ref().map(|l| l.to_scalar()).transpose()?, info.state.len()));
        Ok(())
    })?;
    assert!(observed.iter().zip(&trained).all(|(a, b)| a.bit_eq(b)));
    assert_eq!(seen.len(), r1.steps());
    for (i, (step, loss, n)) in seen.iter().enumerate() {
        assert_eq!((*step, *n), (i, s.len()));
        assert_eq!(loss.map(f64::to_bits), Some(losses[i].to_bits()), "loss of step {i}");
    }
    // An observer's error stops training and comes back.
    let stop = train_with(&r1, &z, |info| if info.step == 3 { Err(Error::Invalid { op: "observer", msg: "stop".into() }) } else { Ok(()) });
    assert!(matches!(stop, Err(Error::Invalid { op: "observer", .. })));
    // The metagradient's s_T is the trained state, bit for bit.
    let mg = metagradient(&r1, &z, ScheduleKind::KAry { k: 3 })?;
    assert_eq!(mg.state.len(), trained.len());
    assert!(mg.state.iter().zip(&trained).all(|(a, b)| a.bit_eq(b)), "metagradient's s_T vs train");
    Ok(())
}

/// Without the `cuda` feature (CI builds and tests that way too) the CUDA API answers "no device" and
/// `Device::cuda` is an error saying why.
#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_cuda_feature_device_cuda_is_a_clear_error() {
    let e = Device::cuda(0).unwrap_err();
    assert!(matches!(e, Error::Device { op: "Device::cuda", .. }) && e.to_string().contains("`cuda` cargo feature"), "{e}");
    assert!(!metagrad::cuda::available());
    assert_eq!(Device::best(), Device::Cpu);
    let x = Tensor::ones([2], DType::F32);
    let e = x.to_device(Device::Cuda(0)).unwrap_err();
    assert!(e.to_string().contains("cuda:0"), "{e}");
}

/// Operands on two devices are rejected by the storage layer, with both devices named.
#[test]
fn mixed_devices_are_one_clear_error() {
    let Ok(d) = Device::cuda(0) else {
        println!("skipped: no CUDA device (set METAGRAD_CUDA_EMULATOR=1 for the kernel emulator)");
        return;
    };
    let a = Tensor::ones([3, 3], DType::F32);
    let b = a.to_device(d).unwrap();
    for e in [a.add(&b).unwrap_err(), a.matmul(&b).unwrap_err(), Tensor::concat(&[&a, &b], 0).unwrap_err()] {
        assert!(matches!(e, Error::Device { .. }) && e.to_string().contains("cpu") && e.to_string().contains("cuda:0"), "{e}");
    }
}

/// vjp_many seeds several outputs in one backward pass: the same bits as the gradient of the recorded
/// Σᵢ ⟨outputᵢ, cᵢ⟩ (outputs sharing nodes, one untracked), and a clear error on a count mismatch.
#[test]
fn vjp_many_equals_the_gradient_of_the_summed_inner_products() {
    use metagrad::{grad, vjp_many, GradOptions};
    let tape = Tape::new();
    let x = tape.var(Tensor::randn([5, 4], DType::F64, 1));
    let w = tape.var(Tensor::randn([4, 3], DType::F64, 2));
    let h = x.matmul(&w).unwrap().tanh().unwrap();
    let outs =
        [h.clone(), h.mul(&h).unwrap().sum(&[0], false).unwrap(), x.mul_scalar(2.0).unwrap(), Var::constant(Tensor::ones([2], DType::F64))];
    let cs: Vec<Var> =
        outs.iter().enumerate().map(|(i, o)| Var::constant(Tensor::randn(o.shape().clone(), DType::F64, 10 + i as u64))).collect();
    let got = vjp_many(
        &outs.iter().collect::<Vec<_>>(),
        &cs.iter().collect::<Vec<_>>(),
        &[&x, &w],
        GradOptions { create_graph: false, retain_graph: true },
    )
    .unwrap();
    let mut dot = outs[0].mul(&cs[0]).unwrap().sum_all().unwrap();
    for (o, c) in outs.iter().zip(&cs).skip(1) {
        dot = dot.add(&o.mul(c).unwrap().sum_all().unwrap()).unwrap();
    }
    let want = grad(&dot, &[&x, &w], false).unwrap();
    for (g, e) in got.iter().zip(&want) {
        assert!(g.value().bit_eq(e.value()), "{:?} vs {:?}", g.value(), e.value());
    }
    assert!(vjp_many(&[&h], &[], &[&x], GradOptions::default()).is_err());
}
