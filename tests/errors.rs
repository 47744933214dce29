//! Bad input: a shape or dtype mismatch returns an [`Error`] that names the op and the offending shapes
//! or dtypes; misuse of the tape is an [`Error::Autodiff`]; nothing panics on user input (a proptest
//! throws random ops at random, mostly incompatible, shapes under `catch_unwind`).
use metagrad::{
    grad, grad_with, gradcheck, hvp, jvp, vjp, Conv2dOpts, CrossEntropyOpts, DType, Error, GradOptions, Result, Shape, Tape, Tensor, Var,
};
use proptest::prelude::*;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Shape,
    DType,
    Invalid,
    Autodiff,
}

/// Asserts that `r` is an error of `kind` raised by `op`, whose message names `op` and contains every
/// string of `needles` (shapes such as "[2, 3]", dtypes such as "bf16").
#[track_caller]
fn expect<T: Debug>(r: Result<T>, kind: Kind, op: &str, needles: &[&str]) -> Error {
    let e = match r {
        Ok(v) => panic!("expected a {kind:?} error from {op}, got Ok({v:?})"),
        Err(e) => e,
    };
    let (k, o) = match &e {
        Error::Shape { op, .. } => (Kind::Shape, Some(*op)),
        Error::DType { op, .. } => (Kind::DType, Some(*op)),
        Error::Invalid { op, .. } => (Kind::Invalid, Some(*op)),
        Error::Autodiff { .. } => (Kind::Autodiff, None),
        other => panic!("unexpected error variant {other:?}"),
    };
    assert_eq!(k, kind, "wrong error kind for {op}: {e:?}");
    if let Some(o) = o {
        assert_eq!(o, op, "error names the wrong op: {e}");
    }
    let msg = e.to_string();
    assert!(msg.contains(op), "message {msg:?} does not name {op:?}");
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} does not contain {n:?}");
    }
    e
}

fn tv(tape: &Tape, dims: &[usize], dt: DType) -> Var {
    tape.var(Tensor::randn(dims.to_vec(), DType::F64, dims.iter().sum::<usize>() as u64).to_dtype(dt))
}
fn f32v(tape: &Tape, dims: &[usize]) -> Var {
    tv(tape, dims, DType::F32)
}

// ---------------------------------------------------------------------------------------------------
// Element-wise and broadcasting
// ---------------------------------------------------------------------------------------------------

type BinOp = fn(&Var, &Var) -> Result<Var>;
const BINARY: [(&str, BinOp); 6] =
    [("add", Var::add), ("sub", Var::sub), ("mul", Var::mul), ("div", Var::div), ("maximum", Var::maximum), ("minimum", Var::minimum)];

#[test]
fn binary_ops_reject_shapes_that_do_not_broadcast() {
    let t = Tape::new();
    for (name, f) in BINARY {
        for (a, b) in [(&[2usize, 3][..], &[4usize, 3][..]), (&[2, 3], &[2]), (&[5], &[4]), (&[2, 1, 3], &[4, 2])] {
            let (x, y) = (f32v(&t, a), f32v(&t, b));
            let sa = Shape::from(a).to_string();
            let sb = Shape::from(b).to_string();
            expect(f(&x, &y), Kind::Shape, name, &[&sa, &sb]);
            expect(f(&y, &x), Kind::Shape, name, &[&sa, &sb]);
        }
        // Broadcasting that works.
        assert_eq!(f(&f32v(&t, &[2, 1, 3]), &f32v(&t, &[4, 1])).unwrap().dims(), &[2, 4, 3]);
    }
}

#[test]
fn binary_ops_reject_mixed_and_storage_dtypes() {
    let t = Tape::new();
    for (name, f) in BINARY {
        let (a, b) = (tv(&t, &[2, 3], DType::F32), tv(&t, &[2, 3], DType::F64));
        expect(f(&a, &b), Kind::DType, name, &["f32", "f64", "[2, 3]"]);
        expect(f(&b, &a), Kind::DType, name, &["f32", "f64"]);
        for dt in [DType::BF16, DType::F16] {
            let (c, d) = (tv(&t, &[2, 3], dt), tv(&t, &[2, 3], dt));
            expect(f(&c, &d), Kind::DType, name, &[&dt.to_string()]);
            expect(f(&a, &c), Kind::DType, name, &["f32", &dt.to_string()]);
        }
    }
}

type UnOp = Box<dyn Fn(&Var) -> Result<Var>>;
fn unary_ops() -> Vec<(&'static str, UnOp)> {
    vec![
        ("neg", Box::new(|x: &Var| x.neg())),
        ("exp", Box::new(|x: &Var| x.exp())),
        ("log", Box::new(|x: &Var| x.log())),
        ("tanh", Box::new(|x: &Var| x.tanh())),
        ("sigmoid", Box::new(|x: &Var| x.sigmoid())),
        ("relu", Box::new(|x: &Var| x.relu())),
        ("sqrt", Box::new(|x: &Var| x.sqrt())),
        ("rsqrt", Box::new(|x: &Var| x.rsqrt())),
        ("abs", Box::new(|x: &Var| x.abs())),
        ("square", Box::new(|x: &Var| x.square())),
        ("erf", Box::new(|x: &Var| x.erf())),
        ("sin", Box::new(|x: &Var| x.sin())),
        ("cos", Box::new(|x: &Var| x.cos())),
        ("maximum", Box::new(|x: &Var| x.maximum(x))),
        ("minimum", Box::new(|x: &Var| x.minimum(x))),
        ("where", Box::new(|x: &Var| Var::where_(&Tensor::ones([3], DType::F32), x, x))),
        ("masked_fill", Box::new(|x: &Var| x.masked_fill(&Tensor::zeros([2, 1], DType::F64), -1.0))),
        ("cross_entropy_with", Box::new(|x: &Var| x.cross_entropy_with(&[0, 1], CrossEntropyOpts::default()))),
        ("powf", Box::new(|x: &Var| x.powf(2.0))),
        ("clamp", Box::new(|x: &Var| x.clamp(-1.0, 1.0))),
        ("affine", Box::new(|x: &Var| x.affine(2.0, 1.0))),
        ("add_scalar", Box::new(|x: &Var| x.add_scalar(1.0))),
        ("mul_scalar", Box::new(|x: &Var| x.mul_scalar(2.0))),
        ("gelu", Box::new(|x: &Var| x.gelu())),
        ("gelu_tanh", Box::new(|x: &Var| x.gelu_tanh())),
        ("sum", Box::new(|x: &Var| x.sum(&[0], false))),
        ("sum", Box::new(|x: &Var| x.sum_all())),
        ("mean", Box::new(|x: &Var| x.mean(&[1], true))),
        ("mean", Box::new(|x: &Var| x.mean_all())),
        ("max", Box::new(|x: &Var| x.max(0, false))),
        ("logsumexp", Box::new(|x: &Var| x.logsumexp(1, false))),
        ("softmax", Box::new(|x: &Var| x.softmax(-1))),
        ("log_softmax", Box::new(|x: &Var| x.log_softmax(0))),
        ("matmul", Box::new(|x: &Var| x.matmul(&x.clone().reshape([3, 2])?))),
        ("permute", Box::new(|x: &Var| x.permute(&[1, 0]))),
        ("transpose", Box::new(|x: &Var| x.transpose(0, 1))),
        ("broadcast_to", Box::new(|x: &Var| x.broadcast_to(&Shape::new([4, 2, 3])))),
        ("sum_to", Box::new(|x: &Var| x.sum_to(&Shape::new([1, 3])))),
        ("narrow", Box::new(|x: &Var| x.narrow(1, 1, 2))),
        ("concat", Box::new(|x: &Var| Var::concat(&[x, x], 0))),
        ("index_select", Box::new(|x: &Var| x.index_select(1, &[0, 2]))),
        ("gather", Box::new(|x: &Var| x.gather(1, &[0, 1], [2, 1]))),
        ("cross_entropy", Box::new(|x: &Var| x.cross_entropy(&[0, 1], None))),
        ("cross_entropy", Box::new(|x: &Var| x.cross_entropy_per_example(&[0, 1]))),
        ("layer_norm", Box::new(|x: &Var| x.layer_norm(None, None, 1e-5))),
        ("batch_norm", Box::new(|x: &Var| x.batch_norm(&x.sum(&[0], false)?, &x.sum(&[0], false)?, 1e-5))),
        ("attention", Box::new(|x: &Var| x.attention(x, x, 1.0, false))),
        ("avg_pool2d", Box::new(|x: &Var| x.reshape([1, 1, 2, 3])?.avg_pool2d((1, 1), Conv2dOpts::default()))),
    ]
}

#[test]
fn compute_ops_reject_storage_only_dtypes() {
    // bf16 and f16 are storage formats: every compute op refuses them with a DType error that names
    // the op the caller used and the dtype, and suggests converting. (batch_norm's parameters are
    // made with `sum`, so on a storage dtype that is the op that fails first: skip it here.)
    let t = Tape::new();
    for dt in [DType::BF16, DType::F16] {
        for (name, f) in unary_ops() {
            if name == "batch_norm" {
                continue;
            }
            for x in [tv(&t, &[2, 3], dt), Var::constant(Tensor::zeros([2, 3], dt))] {
                let e = expect(f(&x), Kind::DType, name, &[&dt.to_string()]);
                assert!(e.to_string().contains("to_dtype") || e.to_string().contains("convert"), "{e}");
            }
        }
        let x = tv(&t, &[2, 3], dt);
        let p = tv(&t, &[3], dt);
        expect(x.batch_norm(&p, &p, 1e-5), Kind::DType, "batch_norm", &[&dt.to_string()]);
        let img = tv(&t, &[1, 1, 3, 3], dt);
        expect(img.conv2d(&img, None, Conv2dOpts::default()), Kind::DType, "conv2d", &[&dt.to_string()]);
    }
    // Storage-only ops work: conversion and reshape.
    let x = tv(&t, &[2, 3], DType::BF16);
    assert_eq!(x.reshape([3, 2]).unwrap().dims(), &[3, 2]);
    assert_eq!(x.value().to_dtype(DType::F32).dtype(), DType::F32);
    // And every op above works in f32 and f64 (the table is not testing broken calls).
    for dt in [DType::F32, DType::F64] {
        for (name, f) in unary_ops() {
            let y = f(&tv(&t, &[2, 3], dt)).unwrap_or_else(|e| panic!("{name} in {dt}: {e}"));
            assert_eq!(y.dtype(), dt, "{name}");
        }
    }
}

#[test]
fn composite_ops_reject_mixed_dtypes_and_name_themselves() {
    let t = Tape::new();
    let x32 = f32v(&t, &[4, 5]);
    let p64 = tv(&t, &[5], DType::F64);
    expect(x32.layer_norm(Some(&p64), None, 1e-5), Kind::DType, "layer_norm", &["f32", "f64"]);
    expect(x32.layer_norm(None, Some(&p64), 1e-5), Kind::DType, "layer_norm", &["f32", "f64"]);
    let img = f32v(&t, &[2, 3, 4, 4]);
    let c64 = tv(&t, &[3], DType::F64);
    let c32 = f32v(&t, &[3]);
    expect(img.batch_norm(&c64, &c32, 1e-5), Kind::DType, "batch_norm", &["f32", "f64"]);
    expect(img.batch_norm(&c32, &c64, 1e-5), Kind::DType, "batch_norm", &["f32", "f64"]);
    let w = f32v(&t, &[3, 3, 3, 3]);
    expect(img.conv2d(&tv(&t, &[3, 3, 3, 3], DType::F64), None, Conv2dOpts::default()), Kind::DType, "conv2d", &["f32", "f64"]);
    expect(img.conv2d(&w, Some(&c64), Conv2dOpts::default()), Kind::DType, "conv2d", &["f32", "f64"]);
    let q = f32v(&t, &[2, 3, 4]);
    let k64 = tv(&t, &[2, 3, 4], DType::F64);
    expect(q.attention(&k64, &q, 0.5, false), Kind::DType, "attention", &["f32", "f64"]);
    expect(q.attention(&q, &k64, 0.5, true), Kind::DType, "attention", &["f32", "f64"]);
    let logits = f32v(&t, &[3, 4]);
    expect(logits.cross_entropy(&[0, 1, 2], Some(&tv(&t, &[3], DType::F64))), Kind::DType, "cross_entropy", &["f32", "f64"]);
    let w64 = tv(&t, &[3], DType::F64);
    let opts = CrossEntropyOpts { weights: Some(&w64), ..Default::default() };
    expect(logits.cross_entropy_with(&[0, 1, 2], opts), Kind::DType, "cross_entropy_with", &["f32", "f64"]);
    expect(Var::where_(&Tensor::ones([3, 4], DType::F32), &logits, &tv(&t, &[3, 4], DType::F64)), Kind::DType, "where", &["f32", "f64"]);
    expect(
        Tensor::where_(&Tensor::ones([1], DType::F64), &Tensor::ones([2], DType::F64), &Tensor::ones([2], DType::BF16)),
        Kind::DType,
        "where",
        &["bf16"],
    );
    expect(Var::concat(&[&q, &k64], 0), Kind::DType, "concat", &["f32", "f64"]);
    expect(q.matmul(&k64.transpose(-1, -2).unwrap()), Kind::DType, "matmul", &["f32", "f64"]);
}

// ---------------------------------------------------------------------------------------------------
// Matmul, convolution, pooling
// ---------------------------------------------------------------------------------------------------

#[test]
fn matmul_shape_errors() {
    let t = Tape::new();
    let m = |a: &[usize], b: &[usize]| f32v(&t, a).matmul(&f32v(&t, b));
    expect(m(&[2, 3], &[4, 5]), Kind::Shape, "matmul", &["[2, 3]", "[4, 5]"]);
    expect(m(&[3], &[3, 4]), Kind::Shape, "matmul", &["[3]", "[3, 4]"]);
    expect(m(&[2, 3], &[3]), Kind::Shape, "matmul", &["[2, 3]", "[3]"]);
    expect(f32v(&t, &[]).matmul(&f32v(&t, &[])), Kind::Shape, "matmul", &["[]"]);
    expect(m(&[5, 2, 3], &[5, 4, 2]), Kind::Shape, "matmul", &["[5, 2, 3]", "[5, 4, 2]"]);
    // Batch dimensions that do not broadcast.
    expect(m(&[2, 2, 3], &[5, 3, 4]), Kind::Shape, "matmul", &["[2]", "[5]"]);
    // What does work: broadcast batches, and empty products.
    assert_eq!(m(&[2, 1, 2, 3], &[4, 3, 5]).unwrap().dims(), &[2, 4, 2, 5]);
    assert_eq!(m(&[2, 0], &[0, 3]).unwrap().value().to_vec_f64(), vec![0.0; 6]);
}

#[test]
fn conv2d_and_pool_errors() {
    let t = Tape::new();
    let o = Conv2dOpts::default();
    let x = f32v(&t, &[1, 3, 8, 8]);
    // Channel mismatch.
    expect(x.conv2d(&f32v(&t, &[4, 2, 3, 3]), None, o), Kind::Shape, "conv2d", &["[1, 3, 8, 8]", "[4, 2, 3, 3]"]);
    // Wrong ranks.
    expect(f32v(&t, &[3, 8, 8]).conv2d(&f32v(&t, &[4, 3, 3, 3]), None, o), Kind::Shape, "conv2d", &["[3, 8, 8]"]);
    expect(x.conv2d(&f32v(&t, &[4, 3, 3]), None, o), Kind::Shape, "conv2d", &["[4, 3, 3]"]);
    // Kernel bigger than the (padded) input.
    let small = f32v(&t, &[1, 1, 4, 4]);
    expect(small.conv2d(&f32v(&t, &[1, 1, 5, 5]), None, o), Kind::Shape, "conv2d", &["4x4", "5x5"]);
    expect(small.conv2d(&f32v(&t, &[1, 1, 7, 1]), None, Conv2dOpts::new(1, 1)), Kind::Shape, "conv2d", &["6x6", "7x1"]);
    assert_eq!(small.conv2d(&f32v(&t, &[1, 1, 5, 5]), None, Conv2dOpts::new(1, 1)).unwrap().dims(), &[1, 1, 2, 2]);
    // Dilation makes the kernel span larger than the input.
    let dil = Conv2dOpts { dilation: (4, 1), ..o };
    expect(small.conv2d(&f32v(&t, &[1, 1, 2, 2]), None, dil), Kind::Shape, "conv2d", &["4x4", "dilation"]);
    // Zero stride, dilation, or kernel size.
    let w = f32v(&t, &[2, 3, 3, 3]);
    for bad in [Conv2dOpts { stride: (0, 1), ..o }, Conv2dOpts { stride: (1, 0), ..o }, Conv2dOpts { dilation: (0, 1), ..o }] {
        expect(x.conv2d(&w, None, bad), Kind::Invalid, "conv2d", &["stride", "dilation"]);
    }
    expect(x.conv2d(&f32v(&t, &[2, 3, 0, 3]), None, o), Kind::Invalid, "conv2d", &["0x3"]);
    // Bias of the wrong shape.
    expect(x.conv2d(&w, Some(&f32v(&t, &[3])), o), Kind::Shape, "conv2d", &["[3]", "[2]"]);
    expect(x.conv2d(&w, Some(&f32v(&t, &[1, 2])), o), Kind::Shape, "conv2d", &["[1, 2]"]);
    // Absurd padding and dilation are errors (no wrapping arithmetic); absurd strides are fine.
    for huge in [usize::MAX, usize::MAX / 2, (1 << 62) + 1] {
        let e = x.conv2d(&w, None, Conv2dOpts { padding: (huge, 0), ..o }).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "conv2d", .. }), "padding {huge}: {e}");
        let e = x.conv2d(&w, None, Conv2dOpts { padding: (1, huge), ..o }).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "conv2d", .. }), "padding {huge}: {e}");
        let e = x.conv2d(&w, None, Conv2dOpts { dilation: (huge, 1), ..o }).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "conv2d", .. }), "dilation {huge}: {e}");
        let e = x.avg_pool2d((huge, 1), o).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "avg_pool2d", .. }), "kernel {huge}: {e}");
        let e = x.avg_pool2d((2, 2), Conv2dOpts { padding: (huge, huge), ..o }).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "avg_pool2d", .. }), "padding {huge}: {e}");
        assert_eq!(x.conv2d(&w, None, Conv2dOpts { stride: (huge, huge), ..o }).unwrap().dims(), &[1, 2, 1, 1]);
    }

    // Pooling.
    expect(x.avg_pool2d((0, 2), o), Kind::Invalid, "avg_pool2d", &["0x2"]);
    expect(x.avg_pool2d((2, 2), Conv2dOpts { stride: (0, 0), ..o }), Kind::Invalid, "avg_pool2d", &["stride"]);
    expect(x.avg_pool2d((9, 2), o), Kind::Shape, "avg_pool2d", &["8x8", "9x2"]);
    expect(f32v(&t, &[3, 8, 8]).avg_pool2d((2, 2), o), Kind::Shape, "avg_pool2d", &["[3, 8, 8]"]);
    assert_eq!(x.avg_pool2d((2, 2), Conv2dOpts::new(2, 0)).unwrap().dims(), &[1, 3, 4, 4]);
}

// ---------------------------------------------------------------------------------------------------
// Shape and data-movement ops
// ---------------------------------------------------------------------------------------------------

#[test]
fn reshape_permute_transpose_broadcast_errors() {
    let t = Tape::new();
    let x = f32v(&t, &[2, 3]);
    expect(x.reshape([4, 2]), Kind::Shape, "reshape", &["[2, 3]", "[4, 2]"]);
    expect(x.reshape([7]), Kind::Shape, "reshape", &["[2, 3]", "[7]"]);
    expect(x.reshape(()), Kind::Shape, "reshape", &["[2, 3]", "[]"]);
    expect(x.value().reshape([5]), Kind::Shape, "reshape", &["[2, 3]", "[5]"]);
    for perm in [&[0usize, 0][..], &[0], &[0, 2], &[1, 0, 2], &[]] {
        expect(x.permute(perm), Kind::Shape, "permute", &["[2, 3]", &format!("{perm:?}")]);
    }
    expect(x.transpose(0, 2), Kind::Shape, "transpose", &["[2, 3]", "2"]);
    expect(x.transpose(-3, 0), Kind::Shape, "transpose", &["[2, 3]", "-3"]);
    expect(x.broadcast_to(&Shape::new([3, 3])), Kind::Shape, "broadcast_to", &["[2, 3]", "[3, 3]"]);
    expect(x.broadcast_to(&Shape::new([3])), Kind::Shape, "broadcast_to", &["[2, 3]", "[3]"]);
    expect(x.sum_to(&Shape::new([3, 3])), Kind::Shape, "sum_to", &["[2, 3]", "[3, 3]"]);
    expect(x.sum_to(&Shape::new([2, 1, 3])), Kind::Shape, "sum_to", &["[2, 3]", "[2, 1, 3]"]);
    assert_eq!(x.sum_to(&Shape::new([1, 3])).unwrap().dims(), &[1, 3]);
}

#[test]
fn narrow_and_concat_errors() {
    let t = Tape::new();
    let x = f32v(&t, &[2, 3]);
    expect(x.narrow(1, 2, 2), Kind::Shape, "narrow", &["[2, 3]", "2..4"]);
    expect(x.narrow(0, 3, 0), Kind::Shape, "narrow", &["[2, 3]"]);
    expect(x.narrow(2, 0, 1), Kind::Shape, "narrow", &["[2, 3]", "axis 2"]);
    // Overflowing ranges are errors, not arithmetic panics.
    expect(x.narrow(1, usize::MAX, 2), Kind::Shape, "narrow", &["[2, 3]"]);
    expect(x.narrow(1, 1, usize::MAX), Kind::Shape, "narrow", &["[2, 3]"]);
    assert_eq!(x.narrow(1, 3, 0).unwrap().dims(), &[2, 0]);

    let y = f32v(&t, &[2, 4]);
    expect(Var::concat(&[&x, &y], 0), Kind::Shape, "concat", &["[2, 3]", "[2, 4]"]);
    expect(Var::concat(&[&x, &f32v(&t, &[2, 3, 1])], 0), Kind::Shape, "concat", &["[2, 3]", "[2, 3, 1]"]);
    expect(Var::concat(&[&x, &f32v(&t, &[6])], 0), Kind::Shape, "concat", &["[2, 3]", "[6]"]);
    expect(Var::concat(&[&x, &y], 2), Kind::Shape, "concat", &["[2, 3]", "axis 2"]);
    expect(Var::concat(&[], 0), Kind::Invalid, "concat", &[]);
    expect(Var::concat(&[&f32v(&t, &[])], 0), Kind::Shape, "concat", &["[]"]);
    assert_eq!(Var::concat(&[&x, &y], 1).unwrap().dims(), &[2, 7]);
}

#[test]
fn index_errors() {
    let t = Tape::new();
    let x = f32v(&t, &[3, 2]);
    expect(x.index_select(0, &[0, 5]), Kind::Shape, "index_select", &["5", "[3, 2]"]);
    expect(x.index_select(1, &[usize::MAX]), Kind::Shape, "index_select", &[&usize::MAX.to_string(), "[3, 2]"]);
    expect(x.index_select(2, &[0]), Kind::Shape, "index_select", &["[3, 2]", "axis 2"]);
    // gather: index out of range, index shape that does not match, wrong index count.
    expect(x.gather(1, &[0, 1, 2], [3, 1]), Kind::Shape, "gather", &["2", "[3, 2]"]);
    expect(x.gather(1, &[0, 1], [2, 1]), Kind::Shape, "gather", &["[2, 1]", "[3, 2]"]);
    expect(x.gather(1, &[0, 1], [3, 1]), Kind::Shape, "gather", &["[3, 1]", "2 values"]);
    expect(x.gather(1, &[0, 1, 0], [3]), Kind::Shape, "gather", &["[3]", "[3, 2]"]);
    expect(x.gather(-3, &[0], [1, 1]), Kind::Shape, "gather", &["[3, 2]"]);
    // Labels out of range in cross-entropy.
    let logits = f32v(&t, &[3, 4]);
    expect(logits.cross_entropy(&[0, 4, 1], None), Kind::Invalid, "cross_entropy", &["label 4", "4 classes"]);
    expect(logits.cross_entropy_per_example(&[0, 1, usize::MAX]), Kind::Invalid, "cross_entropy", &["4 classes"]);
    expect(logits.cross_entropy(&[0, 1], None), Kind::Shape, "cross_entropy", &["[3, 4]", "2 labels"]);
    expect(f32v(&t, &[3, 4, 1]).cross_entropy(&[0, 1, 2], None), Kind::Shape, "cross_entropy", &["[3, 4, 1]"]);
    expect(f32v(&t, &[4]).cross_entropy(&[0], None), Kind::Shape, "cross_entropy", &["[4]"]);
    expect(logits.cross_entropy(&[0, 1, 2], Some(&f32v(&t, &[2]))), Kind::Shape, "cross_entropy", &["[2]", "[3]"]);
    expect(logits.cross_entropy(&[0, 1, 2], Some(&f32v(&t, &[3, 1]))), Kind::Shape, "cross_entropy", &["[3, 1]"]);
}

#[test]
fn cross_entropy_with_errors() {
    let t = Tape::new();
    let d = CrossEntropyOpts::default;
    let logits = f32v(&t, &[2, 3, 4]);
    // A label count other than the number of positions (2·3 = 6), a label out of range (also with an
    // ignore value that is not it), logits of rank 0.
    expect(logits.cross_entropy_with(&[0; 5], d()), Kind::Shape, "cross_entropy_with", &["[2, 3, 4]", "6 positions", "5 labels"]);
    expect(
        logits.cross_entropy_with(&[0, 1, 2, 3, 4, 0], d()),
        Kind::Invalid,
        "cross_entropy_with",
        &["label 4", "position 4", "4 classes"],
    );
    let ign = CrossEntropyOpts { ignore_index: Some(9), ..d() };
    expect(
        logits.cross_entropy_with(&[0, 9, 2, 3, usize::MAX, 0], ign),
        Kind::Invalid,
        "cross_entropy_with",
        &["4 classes", "ignore_index is 9"],
    );
    assert!(logits.cross_entropy_with(&[0, 9, 2, 3, 9, 0], ign).is_ok());
    expect(f32v(&t, &[]).cross_entropy_with(&[], d()), Kind::Shape, "cross_entropy_with", &["[]"]);
    // Label smoothing outside [0, 1] (NaN included).
    for eps in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let o = CrossEntropyOpts { label_smoothing: eps, ..d() };
        expect(logits.cross_entropy_with(&[0; 6], o), Kind::Invalid, "cross_entropy_with", &["label smoothing", &eps.to_string()]);
    }
    // Weights of the wrong shape ([6] for leading shape [2, 3]).
    for dims in [&[6usize][..], &[3, 2], &[2, 3, 1]] {
        let w = f32v(&t, dims);
        let o = CrossEntropyOpts { weights: Some(&w), ..d() };
        expect(logits.cross_entropy_with(&[0; 6], o), Kind::Shape, "cross_entropy_with", &[&Shape::from(dims).to_string(), "[2, 3]"]);
    }
    let w = f32v(&t, &[2, 3]);
    assert!(logits.cross_entropy_with(&[0; 6], CrossEntropyOpts { weights: Some(&w), label_smoothing: 0.2, ..d() }).is_ok());
}

#[test]
fn where_masked_fill_and_argmax_errors() {
    let t = Tape::new();
    let (a, b) = (f32v(&t, &[2, 3]), f32v(&t, &[3]));
    // A condition that does not broadcast with the operands: the error names all three shapes.
    let cond = Tensor::ones([4, 1, 1], DType::F32);
    expect(Var::where_(&Tensor::ones([2], DType::F32), &a, &b), Kind::Shape, "where", &["[2]", "[2, 3]", "[3]"]);
    expect(Var::where_(&cond, &a, &f32v(&t, &[2])), Kind::Shape, "where", &["[4, 1, 1]", "[2, 3]", "[2]"]);
    expect(Tensor::where_(&Tensor::ones([5], DType::F32), a.value(), b.value()), Kind::Shape, "where", &["[5]"]);
    assert_eq!(Var::where_(&cond, &a, &b).unwrap().dims(), &[4, 2, 3]);
    // masked_fill keeps the tensor's shape: a mask must broadcast to it, not merely with it.
    expect(b.masked_fill(&Tensor::ones([2, 3], DType::F32), 0.0), Kind::Shape, "masked_fill", &["[2, 3]", "[3]"]);
    expect(a.masked_fill(&Tensor::ones([2], DType::F32), 0.0), Kind::Shape, "masked_fill", &["[2]", "[2, 3]"]);
    expect(a.value().masked_fill(&Tensor::ones([4], DType::F32), 0.0), Kind::Shape, "masked_fill", &["[4]", "[2, 3]"]);
    expect(Tensor::ones([2], DType::F16).masked_fill(&Tensor::ones([2], DType::F32), 0.0), Kind::DType, "masked_fill", &["f16"]);
    assert_eq!(a.masked_fill(&Tensor::ones([2, 1], DType::BF16), 0.0).unwrap().dims(), &[2, 3]);
    // argmax: axis out of range, a scalar (no axis), an empty axis.
    let x = a.value();
    for axis in [2isize, -3, isize::MIN, isize::MAX] {
        expect(x.argmax(axis), Kind::Shape, "argmax", &["[2, 3]", &axis.to_string()]);
    }
    expect(Tensor::scalar(1.0, DType::F32).argmax(0), Kind::Shape, "argmax", &["[]"]);
    expect(Tensor::zeros([3, 0], DType::F32).argmax(1), Kind::Shape, "argmax", &["[3, 0]", "empty"]);
}

#[test]
fn bad_axes_are_shape_errors() {
    let t = Tape::new();
    let x = f32v(&t, &[2, 3]);
    type AxisOp = Box<dyn Fn(&Var, isize) -> Result<Var>>;
    let ops: Vec<(&str, AxisOp)> = vec![
        ("sum", Box::new(|x: &Var, a| x.sum(&[a], false))),
        ("mean", Box::new(|x: &Var, a| x.mean(&[a], true))),
        ("max", Box::new(|x: &Var, a| x.max(a, false))),
        ("logsumexp", Box::new(|x: &Var, a| x.logsumexp(a, true))),
        ("softmax", Box::new(|x: &Var, a| x.softmax(a))),
        ("log_softmax", Box::new(|x: &Var, a| x.log_softmax(a))),
        ("transpose", Box::new(|x: &Var, a| x.transpose(a, 0))),
        ("narrow", Box::new(|x: &Var, a| x.narrow(a, 0, 1))),
        ("concat", Box::new(|x: &Var, a| Var::concat(&[x, x], a))),
        ("index_select", Box::new(|x: &Var, a| x.index_select(a, &[0]))),
        ("gather", Box::new(|x: &Var, a| x.gather(a, &[0, 0], [2, 1]))),
    ];
    for (name, f) in &ops {
        for a in [2isize, -3, 17, isize::MIN, isize::MAX] {
            expect(f(&x, a), Kind::Shape, name, &["[2, 3]", &a.to_string()]);
        }
        // A scalar has no axis at all.
        expect(f(&f32v(&t, &[]), 0), Kind::Shape, name, &["[]"]);
    }
    // Repeated axes.
    expect(x.sum(&[0, -2], false), Kind::Shape, "sum", &["[2, 3]", "twice"]);
    expect(x.mean(&[1, 1], false), Kind::Shape, "mean", &["[2, 3]", "twice"]);
}

#[test]
fn reductions_over_empty_axes() {
    let t = Tape::new();
    let x = f32v(&t, &[0, 3]);
    expect(x.mean(&[0], false), Kind::Shape, "mean", &["[0, 3]"]);
    expect(x.mean_all(), Kind::Shape, "mean", &["[0, 3]"]);
    expect(x.max(0, false), Kind::Shape, "max", &["[0, 3]"]);
    // Well-defined on empty axes: sums are zero, logsumexp is −∞, softmax of nothing is nothing.
    assert_eq!(x.sum(&[0], false).unwrap().value().to_vec_f64(), vec![0.0; 3]);
    assert_eq!(x.logsumexp(0, false).unwrap().value().to_vec_f64(), vec![f64::NEG_INFINITY; 3]);
    assert_eq!(x.softmax(0).unwrap().dims(), &[0, 3]);
    assert_eq!(x.max(1, false).unwrap().dims(), &[0]);
    // Reducing a non-empty axis of an empty tensor (a zero-sized inner block) is fine too, with its
    // gradient.
    let z = f32v(&t, &[2, 0]);
    let s = z.sum(&[0], false).unwrap();
    assert_eq!(s.dims(), &[0]);
    let l = s.sum_all().unwrap();
    assert_eq!(grad(&l, &[&z], false).unwrap()[0].dims(), &[2, 0]);
    assert_eq!(f32v(&t, &[3, 0, 2]).mean(&[0, 1], true).map(|v| v.dims().to_vec()).ok(), None);
    assert_eq!(f32v(&t, &[3, 2, 0]).mean(&[0, 1], true).unwrap().dims(), &[1, 1, 0]);
}

#[test]
fn norm_parameter_errors() {
    let t = Tape::new();
    let x = f32v(&t, &[4, 5]);
    expect(x.layer_norm(Some(&f32v(&t, &[4])), None, 1e-5), Kind::Shape, "layer_norm", &["[4]", "[4, 5]"]);
    expect(x.layer_norm(None, Some(&f32v(&t, &[1, 5])), 1e-5), Kind::Shape, "layer_norm", &["[1, 5]", "[4, 5]"]);
    expect(f32v(&t, &[]).layer_norm(None, None, 1e-5), Kind::Shape, "layer_norm", &["scalar"]);
    expect(f32v(&t, &[4, 0]).layer_norm(None, None, 1e-5), Kind::Shape, "layer_norm", &["[4, 0]"]);
    for eps in [-1.0, f64::NAN] {
        expect(x.layer_norm(None, None, eps), Kind::Invalid, "layer_norm", &["eps"]);
    }
    let img = f32v(&t, &[2, 3, 4]);
    let (g3, g2) = (f32v(&t, &[3]), f32v(&t, &[2]));
    expect(img.batch_norm(&g2, &g3, 1e-5), Kind::Shape, "batch_norm", &["[2]", "[3]", "[2, 3, 4]"]);
    expect(img.batch_norm(&g3, &g2, 1e-5), Kind::Shape, "batch_norm", &["[2]", "[3]", "[2, 3, 4]"]);
    expect(img.batch_norm(&f32v(&t, &[1, 3]), &g3, 1e-5), Kind::Shape, "batch_norm", &["[1, 3]"]);
    expect(f32v(&t, &[3]).batch_norm(&g3, &g3, 1e-5), Kind::Shape, "batch_norm", &["[3]"]);
    expect(img.batch_norm(&g3, &g3, f64::NAN), Kind::Invalid, "batch_norm", &["eps"]);
    expect(f32v(&t, &[0, 3]).batch_norm(&g3, &g3, 1e-5), Kind::Shape, "batch_norm", &["[0, 3]"]);
}

#[test]
fn attention_errors() {
    let t = Tape::new();
    let (q, k, v) = (f32v(&t, &[2, 3, 4]), f32v(&t, &[2, 5, 4]), f32v(&t, &[2, 5, 6]));
    assert_eq!(q.attention(&k, &v, 0.5, false).unwrap().dims(), &[2, 3, 6]);
    let all = |q: &Var, k: &Var, v: &Var| [q.shape().to_string(), k.shape().to_string(), v.shape().to_string()];
    let cases = [
        (q.clone(), f32v(&t, &[2, 5, 3]), v.clone()),            // d mismatch
        (q.clone(), k.clone(), f32v(&t, &[2, 4, 6])),            // Nk mismatch between k and v
        (q.clone(), f32v(&t, &[3, 5, 4]), f32v(&t, &[3, 5, 6])), // batch mismatch
        (q.clone(), k.clone(), f32v(&t, &[5, 6])),               // rank mismatch
        (f32v(&t, &[4]), f32v(&t, &[4]), f32v(&t, &[4])),        // rank < 2
    ];
    for (q, k, v) in cases {
        let s = all(&q, &k, &v);
        expect(q.attention(&k, &v, 1.0, false), Kind::Shape, "attention", &[&s[0], &s[1], &s[2]]);
        expect(q.attention_composite(&k, &v, 1.0, true), Kind::Shape, "attention", &[&s[0], &s[1], &s[2]]);
    }
    for scale in [f64::NAN, f64::INFINITY] {
        expect(q.attention(&k, &v, scale, false), Kind::Invalid, "attention", &["scale"]);
    }
}

#[test]
fn bad_scalar_arguments() {
    let t = Tape::new();
    let x = f32v(&t, &[3]);
    for p in [f64::NAN, f64::INFINITY] {
        expect(x.powf(p), Kind::Invalid, "powf", &["exponent"]);
    }
    expect(x.clamp(1.0, -1.0), Kind::Invalid, "clamp", &["[1, -1]"]);
    expect(x.clamp(f64::NAN, 1.0), Kind::Invalid, "clamp", &["NaN"]);
    let f = |v: &[Var]| v[0].square()?.sum_all();
    let x0 = Tensor::ones([2], DType::F64);
    for h in [0.0, -1e-6, f64::NAN] {
        expect(gradcheck::check_grad(f, std::slice::from_ref(&x0), h), Kind::Invalid, "check_grad", &["step"]);
        expect(gradcheck::check_hvp(f, std::slice::from_ref(&x0), std::slice::from_ref(&x0), h), Kind::Invalid, "check_hvp", &["step"]);
    }
    expect(gradcheck::check_hvp(f, std::slice::from_ref(&x0), &[], 1e-5), Kind::Invalid, "check_hvp", &["1 inputs", "0 directions"]);
}

// ---------------------------------------------------------------------------------------------------
// Tensor constructors and accessors
// ---------------------------------------------------------------------------------------------------

#[test]
fn tensor_constructor_and_accessor_errors() {
    expect(Tensor::from_vec(vec![1.0f32; 5], [2, 3]), Kind::Shape, "from_vec", &["5 values", "[2, 3]"]);
    expect(Tensor::from_vec(Vec::<f64>::new(), ()), Kind::Shape, "from_vec", &["0 values", "[]"]);
    expect(Tensor::from_slice(&[1.0f64, 2.0], [3]), Kind::Shape, "from_vec", &["2 values", "[3]"]);
    expect(Tensor::from_bytes(&[0u8; 7], DType::F32, [2]), Kind::Shape, "from_bytes", &["7 bytes", "[2]", "f32"]);
    expect(Tensor::from_bytes(&[0u8; 8], DType::F64, [2, 1]), Kind::Shape, "from_bytes", &["8 bytes", "[2, 1]", "f64"]);
    expect(Tensor::from_bytes(&[0u8; 3], DType::BF16, [1]), Kind::Shape, "from_bytes", &["3 bytes", "bf16"]);
    let d = Tensor::ones([2, 2], DType::F64);
    expect(d.to_vec::<f32>(), Kind::DType, "as_slice", &["f64", "f32"]);
    expect(d.as_slice::<half::bf16>(), Kind::DType, "as_slice", &["f64", "bf16"]);
    expect(Tensor::ones([1], DType::F16).to_vec::<f64>(), Kind::DType, "as_slice", &["f16", "f64"]);
    expect(d.to_scalar(), Kind::Shape, "to_scalar", &["[2, 2]", "4 elements"]);
    expect(Tensor::zeros([0], DType::F32).to_scalar(), Kind::Shape, "to_scalar", &["[0]"]);
}

#[test]
fn shapes_whose_element_count_overflows_are_rejected() {
    // (2^63 + 1)·2 wraps to 2 in usize arithmetic: such a shape must not pass for 2 elements.
    let huge = (1usize << 63) + 1;
    expect(Tensor::from_vec(vec![1.0f32, 2.0], [huge, 2]), Kind::Shape, "from_vec", &[&huge.to_string()]);
    expect(Tensor::from_vec(vec![0.0f64; 4], [1 << 32, 1 << 32, 4]), Kind::Shape, "from_vec", &["4 values"]);
    expect(Tensor::from_bytes(&[0u8; 8], DType::F32, [huge, 2]), Kind::Shape, "from_bytes", &["8 bytes"]);
    expect(Tensor::from_bytes(&[0u8; 8], DType::F32, [1 << 62, 2]), Kind::Shape, "from_bytes", &["8 bytes"]);
    // (2^62 + 2)·4 bytes wraps to 8.
    expect(Tensor::from_bytes(&[0u8; 8], DType::F32, [(1 << 62) + 2]), Kind::Shape, "from_bytes", &["8 bytes"]);
    let x = Tensor::ones([2], DType::F32);
    expect(x.reshape([huge, 2]), Kind::Shape, "reshape", &["[2]"]);
    let t = Tape::new();
    let v = t.var(x);
    expect(v.reshape([huge, 2]), Kind::Shape, "reshape", &["[2]"]);
    expect(v.reshape([1, 0]), Kind::Shape, "reshape", &["[2]"]);
    let m = t.var(Tensor::ones([2, 3], DType::F32));
    expect(m.gather(1, &[0, 0], [2, huge]), Kind::Shape, "gather", &["2 values"]);
    // A zero dimension makes the count zero however large the others are.
    assert_eq!(Shape::new([usize::MAX, 2, 0]).numel(), 0);
    assert_eq!(Tensor::from_vec(Vec::<f32>::new(), [usize::MAX, 2, 0]).unwrap().numel(), 0);
}

/// Allocations no machine can satisfy (2^48 and more elements: past any 47-bit address space, so the
/// result does not depend on the overcommit policy) are `Error::OutOfMemory` naming the op and the
/// bytes, never an abort.
#[test]
fn impossible_allocations_are_out_of_memory_errors() {
    #[track_caller]
    fn oom<T: Debug>(r: Result<T>, op: &str) {
        match r {
            Err(Error::OutOfMemory { op: o, msg }) => {
                assert_eq!(o, op, "{msg}");
                assert!(msg.contains("bytes") || msg.contains("slots"), "{op}: {msg}");
            }
            other => panic!("{op}: expected OutOfMemory, got {other:?}"),
        }
    }
    let n = 1usize << 48;
    oom(Tensor::try_zeros([n], DType::F32), "full");
    oom(Tensor::try_full(1.0, [n], DType::F64), "full");
    oom(Tensor::try_randn([n], DType::F32, 1), "randn");
    oom(Tensor::try_rand_uniform([n], 0.0, 1.0, DType::F32, 1), "rand_uniform");
    oom(Tensor::try_arange(0.0, 1.0, n, DType::F32), "arange");
    oom(Tensor::full_on(0.0, [n], DType::F32, metagrad::Device::Cpu), "full");
    let t = Tape::new();
    // Outputs of 2^48 elements from 2^24-element inputs.
    let col = t.var(Tensor::ones([1 << 24, 1], DType::F32));
    let row = t.var(Tensor::ones([1, 1 << 24], DType::F32));
    oom(col.add(&row), "add");
    oom(col.matmul(&row), "matmul");
    oom(t.var(Tensor::ones([1, 1], DType::F32)).broadcast_to(&Shape::new([1 << 24, 1 << 24])), "broadcast_to");
    // Padding that makes the output 2^48 pixels.
    let img = t.var(Tensor::ones([1, 1, 2, 2], DType::F32));
    let pad = Conv2dOpts { padding: (1 << 23, 1 << 23), ..Conv2dOpts::default() };
    oom(img.avg_pool2d((1, 1), pad), "avg_pool2d");
    oom(img.conv2d(&t.var(Tensor::ones([1, 1, 1, 1], DType::F32)), None, pad), "conv2d");
    oom(metagrad::replay::arena::Arena::new(1 << 50, &[Tensor::ones([4], DType::F32)]), "Arena::new");
}

// ---------------------------------------------------------------------------------------------------
// Autodiff misuse
// ---------------------------------------------------------------------------------------------------

#[test]
fn grad_of_a_non_scalar_is_an_error() {
    let t = Tape::new();
    let x = f32v(&t, &[2, 3]);
    let y = x.tanh().unwrap();
    expect(grad(&y, &[&x], false), Kind::Autodiff, "grad", &["scalar", "[2, 3]"]);
    expect(grad(&y, &[&x], true), Kind::Autodiff, "grad", &["scalar", "[2, 3]"]);
    // A one-element non-scalar shape is fine.
    let s = y.sum(&[0, 1], true).unwrap();
    assert_eq!(s.dims(), &[1, 1]);
    assert_eq!(grad(&s, &[&x], false).unwrap()[0].dims(), &[2, 3]);
}

#[test]
fn cotangent_must_match_the_output() {
    let t = Tape::new();
    let x = f32v(&t, &[2, 3]);
    let y = x.exp().unwrap();
    let bad_shape = Var::constant(Tensor::ones([3, 2], DType::F32));
    expect(grad_with(&y, &[&x], &bad_shape, GradOptions::default()), Kind::Autodiff, "cotangent", &["[3, 2]", "[2, 3]"]);
    let bad_dtype = Var::constant(Tensor::ones([2, 3], DType::F64));
    expect(grad_with(&y, &[&x], &bad_dtype, GradOptions::default()), Kind::Autodiff, "cotangent", &["f64", "f32"]);
    expect(vjp(&y, &[&x], &Tensor::ones([6], DType::F32)), Kind::Autodiff, "cotangent", &["[6]", "[2, 3]"]);
}

#[test]
fn two_tapes_do_not_mix() {
    let (t1, t2) = (Tape::new(), Tape::new());
    let (a, b) = (f32v(&t1, &[3]), f32v(&t2, &[3]));
    for (name, f) in BINARY {
        expect(f(&a, &b), Kind::Autodiff, name, &["two different tapes"]);
    }
    expect(a.reshape([1, 3]).unwrap().matmul(&b.reshape([3, 1]).unwrap()), Kind::Autodiff, "matmul", &["two different tapes"]);
    expect(Var::concat(&[&a, &b], 0), Kind::Autodiff, "concat", &["two different tapes"]);
    // Gradient of a loss on one tape with respect to a variable on another.
    let loss = a.square().unwrap().sum_all().unwrap();
    expect(grad(&loss, &[&a, &b], false), Kind::Autodiff, "grad", &["another tape"]);
    expect(grad(&loss, &[&b], true), Kind::Autodiff, "grad", &["another tape"]);
    expect(hvp(&loss, &[&b], &[Tensor::ones([3], DType::F32)]), Kind::Autodiff, "grad", &["another tape"]);
    // A constant is not on any tape: it has no gradient, and asking for one is an error (issue #11: it
    // used to return zeros silently).
    let c = Var::constant(Tensor::ones([3], DType::F32));
    expect(grad(&loss, &[&c], false), Kind::Autodiff, "grad", &["not tracked"]);
    // jvp's dummy cotangent must live on the output's tape.
    let out = a.tanh().unwrap();
    let r = jvp(&t2, &out, &[&a], &[Tensor::ones([3], DType::F32)]);
    assert!(r.is_err(), "jvp with the wrong tape must fail, got {r:?}");
}

#[test]
fn backward_twice_through_a_freed_graph() {
    let t = Tape::new();
    let x = f32v(&t, &[4]);
    let loss = x.tanh().unwrap().square().unwrap().sum_all().unwrap();
    let g1 = grad(&loss, &[&x], false).unwrap()[0].value().clone();
    let e = expect(grad(&loss, &[&x], false), Kind::Autodiff, "autodiff", &["released", "retain_graph"]);
    assert!(e.to_string().contains("create_graph"), "{e}");
    // Also when the second backward starts from another output that shares the freed part.
    let t = Tape::new();
    let x = f32v(&t, &[4]);
    let h = x.tanh().unwrap();
    let l1 = h.sum_all().unwrap();
    let l2 = h.square().unwrap().sum_all().unwrap();
    grad(&l1, &[&x], false).unwrap();
    expect(grad(&l2, &[&x], false), Kind::Autodiff, "autodiff", &["released", "tanh"]);

    // retain_graph keeps it; the values are the same each time.
    let t = Tape::new();
    let x = t.var(Tensor::randn([4], DType::F32, 4));
    let loss = x.tanh().unwrap().square().unwrap().sum_all().unwrap();
    let seed = Var::constant(Tensor::ones((), DType::F32));
    let keep = GradOptions { create_graph: false, retain_graph: true };
    let a = grad_with(&loss, &[&x], &seed, keep).unwrap()[0].value().clone();
    let b = grad_with(&loss, &[&x], &seed, keep).unwrap()[0].value().clone();
    assert!(a.bit_eq(&b) && a.bit_eq(&g1));
    // create_graph keeps it too, and the result is differentiable.
    let c = grad(&loss, &[&x], true).unwrap();
    assert!(c[0].is_tracked() && c[0].value().bit_eq(&a));
    let d = grad(&loss, &[&x], true).unwrap();
    assert!(d[0].value().bit_eq(&a));
    // (Differentiating c needs the forward nodes too: retain them, or that backward releases them.)
    let hv = grad_with(&c[0].sum_all().unwrap(), &[&x], &seed, keep).unwrap();
    assert_eq!(hv[0].dims(), &[4]);
    // A last plain backward releases the graph; after it, backward fails again.
    grad_with(&loss, &[&x], &seed, GradOptions::default()).unwrap();
    expect(grad(&loss, &[&x], false), Kind::Autodiff, "autodiff", &["released"]);
    // hvp retains what it needs internally and can be called again on a fresh forward.
    let loss = x.tanh().unwrap().square().unwrap().sum_all().unwrap();
    let v = Tensor::ones([4], DType::F32);
    let h1 = hvp(&loss, &[&x], std::slice::from_ref(&v)).unwrap();
    assert_eq!(h1[0].dims(), &[4]);
}

#[test]
fn hvp_jvp_direction_mismatches() {
    let t = Tape::new();
    let x = tv(&t, &[3], DType::F64);
    let y = tv(&t, &[2, 2], DType::F64);
    let loss = x.square().unwrap().sum_all().unwrap().add(&y.exp().unwrap().sum_all().unwrap()).unwrap();
    let ok = [Tensor::ones([3], DType::F64), Tensor::ones([2, 2], DType::F64)];
    expect(hvp(&loss, &[&x, &y], &[Tensor::ones([2], DType::F64), ok[1].clone()]), Kind::Shape, "hvp", &["[2]", "[3]"]);
    expect(hvp(&loss, &[&x, &y], &[ok[0].clone(), Tensor::ones([4], DType::F64)]), Kind::Shape, "hvp", &["[4]", "[2, 2]"]);
    expect(hvp(&loss, &[&x, &y], &[Tensor::ones([3], DType::F32), ok[1].clone()]), Kind::Shape, "hvp", &["f32", "f64"]);
    expect(hvp(&loss, &[&x, &y], &ok[..1]), Kind::Invalid, "hvp", &["2 variables", "1 direction"]);
    expect(hvp(&loss, &[], &[]), Kind::Invalid, "hvp", &["no variables"]);
    assert_eq!(hvp(&loss, &[&x, &y], &ok).unwrap()[0].to_vec_f64(), vec![2.0; 3]);
    // hvp of a non-scalar.
    let z = x.square().unwrap();
    expect(hvp(&z, &[&x], &ok[..1]), Kind::Autodiff, "grad", &["scalar", "[3]"]);
    // jvp.
    let out = x.tanh().unwrap();
    expect(jvp(&t, &out, &[&x], &[Tensor::ones([4], DType::F64)]), Kind::Shape, "jvp", &["[4]", "[3]"]);
    expect(jvp(&t, &out, &[&x], &[]), Kind::Invalid, "jvp", &["1 variables", "0 direction"]);
}

// ---------------------------------------------------------------------------------------------------
// Nothing panics
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Case {
    op: usize,
    a: Vec<usize>,
    b: Vec<usize>,
    c: Vec<usize>,
    dts: (usize, usize),
    axes: (isize, isize),
    idx: Vec<usize>,
    flag: bool,
    opts: (usize, usize, usize),
    /// Input values: 0 tame, else every few elements a NaN, ±∞, a subnormal or −0.
    vals: u8,
}

const N_OPS: usize = 57;

fn dtype_of(i: usize) -> DType {
    // Mostly f32 so that shapes, not dtypes, are what varies; sometimes f64, bf16, f16.
    match i % 8 {
        0 => DType::F64,
        1 => DType::BF16,
        2 => DType::F16,
        _ => DType::F32,
    }
}

/// Runs one random op on random inputs, then (when it succeeds with a compute dtype) its gradient and
/// a Hessian-vector product, so the VJPs and their VJPs meet the same odd shapes.
fn run_case(c: &Case) -> Result<()> {
    let tape = Tape::new();
    let (da, db) = (dtype_of(c.dts.0), if c.dts.1.is_multiple_of(4) { dtype_of(c.dts.1) } else { dtype_of(c.dts.0) });
    let mk = |d: &[usize], dt: DType, seed: u64| {
        let n: usize = d.iter().product();
        const SPECIAL: [f64; 6] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e-310, 1e-40, -0.0];
        let vals: Vec<f64> = (0..n)
            .map(|i| match c.vals {
                v if v > 0 && (i + seed as usize).is_multiple_of(v as usize + 1) => SPECIAL[(i / 2 + seed as usize) % SPECIAL.len()],
                _ => ((i as u64 * 7 + seed) % 11) as f64 / 5.0 - 1.0,
            })
            .collect();
        tape.var(Tensor::from_vec(vals, d.to_vec()).unwrap().to_dtype(dt))
    };
    // Tensors are built from tame dims; the raw (possibly huge) dims are only passed as shape arguments.
    let tame = |d: &[usize]| d.iter().map(|&x| if x > 8 { 3 } else { x }).collect::<Vec<_>>();
    let (a, b, cc) = (mk(&tame(&c.a), da, 1), mk(&tame(&c.b), db, 2), mk(&tame(&c.c), db, 3));
    let (ax, ax2) = c.axes;
    let idx = &c.idx;
    let i0 = idx.first().copied().unwrap_or(0);
    let i1 = idx.get(1).copied().unwrap_or(1);
    let opts = Conv2dOpts { stride: (c.opts.0, c.opts.0.max(1)), padding: (c.opts.1, c.opts.1 / 2), dilation: (c.opts.2.max(1), c.opts.2) };
    let y: Var = match c.op {
        0 => a.add(&b)?,
        1 => a.sub(&b)?,
        2 => a.mul(&b)?,
        3 => a.div(&b)?,
        4 => a.matmul(&b)?,
        5 => a.sum(&[ax, ax2], c.flag)?,
        6 => a.mean(&[ax], c.flag)?,
        7 => a.max(ax, c.flag)?,
        8 => a.logsumexp(ax, c.flag)?,
        9 => a.softmax(ax)?,
        10 => a.log_softmax(ax)?,
        11 => a.reshape(c.b.clone())?,
        12 => a.permute(idx)?,
        13 => a.transpose(ax, ax2)?,
        14 => a.broadcast_to(&Shape::new(c.b.clone()))?,
        15 => a.sum_to(&Shape::new(c.b.clone()))?,
        16 => a.narrow(ax, i0, i1)?,
        17 => Var::concat(&[&a, &b], ax)?,
        18 => Var::concat(&[&a, &b, &cc], ax)?,
        19 => a.index_select(ax, idx)?,
        20 => a.gather(ax, idx, c.b.clone())?,
        21 => a.cross_entropy(idx, if c.flag { Some(&b) } else { None })?,
        22 => a.cross_entropy_per_example(idx)?,
        23 => a.layer_norm(if c.flag { Some(&b) } else { None }, Some(&cc), 1e-5)?,
        24 => a.batch_norm(&b, &cc, 1e-5)?,
        25 => a.conv2d(&b, if c.flag { Some(&cc) } else { None }, opts)?,
        26 => a.avg_pool2d((i0, i1), opts)?,
        27 => a.attention(&b, &cc, 0.5, c.flag)?,
        28 => a.exp()?.add(&a.tanh()?)?.mul(&a.sigmoid()?)?,
        29 => a.log()?.add(&a.sqrt()?)?.sub(&a.rsqrt()?)?,
        30 => a.relu()?.add(&a.abs()?)?.add(&a.erf()?)?,
        31 => a.powf(i0 as f64 - 2.0)?,
        32 => a.clamp(-(i0 as f64), i1 as f64 - 1.0)?,
        33 => a.gelu()?.add(&a.gelu_tanh()?)?,
        34 => a.sum_all()?,
        35 => a.mean_all()?,
        36 => a.affine(ax as f64, ax2 as f64)?.square()?,
        37 => a.neg()?.div(&b.add_scalar(1.0)?)?,
        38 => {
            // Tensor constructors with possibly inconsistent sizes.
            let n = i0.min(16) + i1.min(16);
            let t = Tensor::from_vec(vec![0.5f32; n], c.a.clone())?;
            let t = Tensor::from_bytes(&t.as_bytes().unwrap()[..t.size_in_bytes().saturating_sub(i1)], da, c.b.clone())?;
            tape.var(t.reshape(c.c.clone())?.to_dtype(DType::F32))
        }
        39 => {
            let _ = a.value().to_scalar();
            let _ = a.value().to_vec::<f32>();
            tape.var(a.value().reshape(c.b.clone())?)
        }
        40 => return grad(&a, &[&a, &b], c.flag).map(|_| ()),
        41 => {
            let l = a.square()?.sum_all()?;
            return hvp(&l, &[&a, &b], &[b.value().clone(), a.value().clone()]).map(|_| ());
        }
        42 => {
            let y = a.tanh()?;
            return jvp(&tape, &y, &[&a], &[b.value().clone()]).map(|_| ());
        }
        43 => {
            let y = a.tanh()?;
            return vjp(&y, &[&a], b.value()).map(|_| ());
        }
        44 => {
            let seed = Var::constant(Tensor::ones(tame(&c.b), db));
            let y = a.exp()?;
            let opts = GradOptions { create_graph: c.flag, retain_graph: !c.flag };
            return grad_with(&y, &[&a], &seed, opts).map(|_| ());
        }
        45 => a.attention_composite(&b, &cc, ax as f64, !c.flag)?,
        46 => a.index_select(ax, idx)?.index_select(ax2, idx)?,
        47 => a.matmul(&b)?.matmul(&cc)?,
        48 => a.conv2d(&b, None, opts)?.avg_pool2d((i1, i0), opts)?,
        49 => a.narrow(ax, i0, i1)?.permute(idx)?,
        50 => a.max(ax, c.flag)?.logsumexp(ax2, !c.flag)?,
        51 => a.softmax(ax)?.mul(&b)?.sum(&[ax2], c.flag)?,
        52 => a.maximum(&b)?.sub(&a.minimum(&b)?)?,
        53 => Var::where_(cc.value(), &a, &b)?.sin()?.add(&a.cos()?)?,
        54 => a.masked_fill(b.value(), ax as f64)?,
        55 => {
            let opts =
                CrossEntropyOpts { ignore_index: c.flag.then_some(i0), label_smoothing: ax2 as f64 * 0.25, weights: c.flag.then_some(&b) };
            a.cross_entropy_with(idx, opts)?
        }
        _ => {
            let l = a.value().argmax(ax)?;
            a.max(ax, c.flag)?.add_scalar(l.first().copied().unwrap_or(0) as f64)?
        }
    };
    // Differentiate what came out, twice (unless it has an absurd dimension: an empty tensor of shape
    // [usize::MAX, 0] is fine, but reducing its empty axis would allocate usize::MAX zeros).
    if y.dims().iter().any(|&d| d > 1 << 20) {
        return Ok(());
    }
    let loss = y.square()?.sum_all()?;
    let g = grad(&loss, &[&a, &b, &cc], true)?;
    let mut dot = g[0].sum_all()?;
    for gi in &g[1..] {
        dot = dot.add(&gi.mul(gi)?.sum_all()?)?;
    }
    grad(&dot, &[&a, &b, &cc], false)?;
    Ok(())
}

fn dims() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        4 => prop::collection::vec(0usize..5, 0..5),
        1 => prop::collection::vec(1usize..4, 4..5), // [N, C, H, W]-like, for conv and pooling
        1 => prop::collection::vec(prop_oneof![Just(0usize), Just(1), Just(2), Just(usize::MAX), Just(1 << 63)], 0..4),
    ]
}

/// Turns random material into shapes that fit `c.op` (mode 1), or that nearly fit: one dimension,
/// index or axis off (mode 2). Mode 0 keeps the raw random shapes, which mostly do not fit at all.
fn fit(mut c: Case, mode: u8, pert: (usize, usize)) -> Case {
    if mode == 0 {
        return c;
    }
    let small = |d: &[usize], min_rank: usize| {
        let mut v: Vec<usize> = d.iter().map(|&x| x.clamp(1, 4)).collect();
        while v.len() < min_rank {
            v.push(2 + v.len() % 2);
        }
        v
    };
    let pick = |k: usize, n: usize| if n == 0 { 0 } else { k % n };
    let seedv = c.idx.clone();
    let rnd = |i: usize| seedv.get(i).copied().unwrap_or(i).min(7);
    let mut a = small(&c.a, 0);
    let r = a.len();
    let ax = if r == 0 { 0 } else { c.axes.0.rem_euclid(r as isize) as usize };
    c.axes.0 = ax as isize - if c.flag { r as isize } else { 0 }; // sometimes negative, always valid
    if r > 0 {
        c.axes.1 = c.axes.1.rem_euclid(r as isize);
    }
    let mut b = small(&c.b, 0);
    let mut cc = small(&c.c, 0);
    match c.op {
        0..=3 | 37 | 51 | 52 | 54 => {
            // b: a suffix of a with some dimensions squeezed to 1.
            b = a[pick(rnd(0), r + 1)..].to_vec();
            for (i, d) in b.iter_mut().enumerate() {
                if rnd(i + 1) % 3 == 0 {
                    *d = 1;
                }
            }
        }
        4 | 47 => {
            a = small(&c.a, 2);
            let ra = a.len();
            b = a[..ra - 2].to_vec();
            b.push(a[ra - 1]);
            b.push(rnd(0) % 4 + 1);
            cc = vec![b[b.len() - 1], rnd(1) % 3 + 1];
        }
        11 => {
            b = if c.flag { vec![a.iter().product()] } else { a.iter().rev().copied().collect() };
        }
        12 | 49 => {
            let mut perm: Vec<usize> = (0..r).collect();
            perm.rotate_left(pick(rnd(0), r.max(1)));
            if r > 1 && c.flag {
                perm.swap(0, r - 1);
            }
            c.idx = perm;
        }
        14 => {
            b = vec![rnd(0) % 3 + 1];
            b.extend(&a);
        }
        15 => {
            b = a.iter().enumerate().map(|(i, &d)| if rnd(i) % 2 == 0 { 1 } else { d }).collect();
            b.drain(..pick(rnd(5), b.len() + 1));
        }
        16 if r > 0 => {
            let n = a[ax];
            let start = pick(rnd(0), n + 1);
            c.idx = vec![start, pick(rnd(1), n - start + 1)];
        }
        17 | 18 => {
            b = a.clone();
            cc = a.clone();
            if r > 0 {
                b[ax] = rnd(0) % 3 + 1;
                cc[ax] = rnd(1) % 3;
            }
        }
        19 | 46 => {
            let n = if r > 0 { a[ax] } else { 1 };
            c.idx = c.idx.iter().map(|&k| k % n).collect();
        }
        20 if r > 0 => {
            b = a.clone();
            b[ax] = rnd(0) % 4 + 1;
            let m: usize = b.iter().product();
            c.idx = (0..m).map(|i| (i * 7 + rnd(1)) % a[ax]).collect();
        }
        53 => {
            // b and cc: suffixes of a with some dimensions squeezed to 1.
            b = a[pick(rnd(0), r + 1)..].to_vec();
            cc = a[pick(rnd(1), r + 1)..].to_vec();
            for (i, d) in b.iter_mut().enumerate() {
                if rnd(i + 2) % 3 == 0 {
                    *d = 1;
                }
            }
            for (i, d) in cc.iter_mut().enumerate() {
                if rnd(i + 3) % 2 == 0 {
                    *d = 1;
                }
            }
        }
        55 => {
            // Logits [.., C], one label per position, weights of the leading shape.
            a = small(&c.a[..c.a.len().min(3)], 1);
            let (classes, lead) = a.split_last().map(|(&k, l)| (k, l.to_vec())).unwrap_or((1, vec![]));
            let n: usize = lead.iter().product();
            c.idx = (0..n).map(|i| (i + rnd(0)) % classes).collect();
            b = lead;
        }
        21 | 22 => {
            a = small(&c.a[..c.a.len().min(2)], 2);
            c.idx = (0..a[0]).map(|i| (i + rnd(0)) % a[1]).collect();
            b = vec![a[0]];
        }
        23 => {
            a = small(&c.a, 1);
            b = vec![a[a.len() - 1]];
            cc = b.clone();
        }
        24 => {
            a = small(&c.a, 2);
            b = vec![a[1]];
            cc = b.clone();
        }
        25 | 48 => {
            a = small(&c.a[..c.a.len().min(4)], 4);
            a[2] += 2;
            a[3] += 2;
            b = vec![rnd(0) % 3 + 1, a[1], rnd(1) % 3 + 1, rnd(2) % 3 + 1];
            cc = vec![b[0]];
        }
        26 => {
            a = small(&c.a[..c.a.len().min(4)], 4);
            c.idx = vec![rnd(0) % a[2] + 1, rnd(1) % a[3] + 1];
        }
        27 | 45 => {
            a = small(&c.a[..c.a.len().min(3)], 2);
            let ra = a.len();
            b = a.clone();
            b[ra - 2] = rnd(0) % 4 + 1;
            cc = b.clone();
            cc[ra - 1] = rnd(1) % 4 + 1;
        }
        38 | 39 | 41..=44 => {
            b = a.clone();
            cc = a.clone();
            c.idx = vec![a.iter().product::<usize>() % 16, 0];
        }
        _ => {}
    }
    if mode == 2 {
        // One thing off: a dimension of one operand (grown, shrunk to 0, or dropped), an index, an axis.
        let bump = |v: &mut Vec<usize>| {
            if v.is_empty() {
                v.push(2);
                return;
            }
            let k = pert.1 % v.len();
            match pert.1 % 3 {
                0 => v[k] += 1,
                1 => v[k] = 0,
                _ => {
                    v.remove(k);
                }
            }
        };
        match pert.0 % 5 {
            0 => bump(&mut a),
            1 => bump(&mut b),
            2 => bump(&mut cc),
            3 => {
                if c.idx.is_empty() {
                    c.idx.push(9);
                } else {
                    let k = pert.1 % c.idx.len();
                    c.idx[k] = c.idx[k].saturating_add(1 + pert.1 % 5);
                }
            }
            _ => c.axes.0 += if pert.1.is_multiple_of(2) { r as isize } else { -(r as isize) - 1 },
        }
    }
    c.a = a;
    c.b = b;
    c.c = cc;
    c
}

fn case() -> impl Strategy<Value = Case> {
    (
        (0..N_OPS, dims(), dims(), dims()),
        (0usize..64, 0usize..64),
        (-6isize..6, -6isize..6),
        prop::collection::vec(prop_oneof![8 => 0usize..6, 1 => Just(usize::MAX)], 0..7),
        any::<bool>(),
        (0usize..4, 0usize..4, 0usize..3),
        (prop_oneof![1 => Just(0u8), 2 => Just(1u8), 2 => Just(2u8)], 0usize..64, 0usize..64),
        prop_oneof![3 => Just(0u8), 1 => 1u8..5],
    )
        .prop_map(|((op, a, b, c), dts, axes, idx, flag, opts, (mode, p0, p1), vals)| {
            fit(Case { op, a, b, c, dts, axes, idx, flag, opts, vals }, mode, (p0, p1))
        })
}

fn fuzz_cases() -> u32 {
    std::env::var("METAGRAD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6000)
}

proptest! {
    // 6000 cases by default (about a minute in release); `METAGRAD_FUZZ_CASES=N` for more or fewer (CI
    // also runs a smaller count in a debug build, where arithmetic overflow panics).
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn nothing_panics_on_random_input(c in case()) {
        // Broadcasting to a huge target would allocate it: that op gets tame targets only.
        prop_assume!(!(c.op == 14 && c.b.iter().any(|&d| d > 8)));
        let r = catch_unwind(AssertUnwindSafe(|| run_case(&c)));
        prop_assert!(r.is_ok(), "panicked on {:?}", c);
    }
}

#[test]
fn every_random_op_is_reachable_with_valid_input() {
    // The proptest above is only useful if ops also succeed sometimes: check a valid call of each
    // family through the same runner.
    let ok = |op: usize, a: &[usize], b: &[usize], cc: &[usize], axes: (isize, isize), idx: &[usize], flag: bool| {
        let c =
            Case { op, a: a.to_vec(), b: b.to_vec(), c: cc.to_vec(), dts: (3, 3), axes, idx: idx.to_vec(), flag, opts: (1, 1, 1), vals: 0 };
        run_case(&c).unwrap_or_else(|e| panic!("op {op}: {e}"));
    };
    ok(0, &[2, 3], &[3], &[1], (0, 1), &[], false);
    ok(4, &[2, 3], &[3, 4], &[1], (0, 1), &[], false);
    ok(5, &[2, 3, 4], &[1], &[1], (0, -1), &[], true);
    ok(17, &[2, 3], &[2, 3], &[1], (1, 0), &[], false);
    ok(20, &[2, 3], &[2, 2], &[1], (1, 0), &[0, 2, 1, 1], false);
    ok(21, &[2, 3], &[2], &[1], (0, 0), &[0, 2], true);
    ok(23, &[2, 3], &[3], &[3], (0, 0), &[], true);
    ok(24, &[2, 3, 2], &[3], &[3], (0, 0), &[], true);
    ok(25, &[1, 2, 4, 4], &[3, 2, 2, 2], &[3], (0, 0), &[], true);
    ok(26, &[1, 2, 4, 4], &[1], &[1], (0, 0), &[2, 2], true);
    ok(27, &[2, 3, 4], &[2, 5, 4], &[2, 5, 2], (0, 0), &[], true);
    ok(28, &[70_000], &[1], &[1], (0, 0), &[], true);
    ok(52, &[2, 3], &[3], &[1], (0, 1), &[], false);
    ok(53, &[2, 3], &[1, 3], &[2, 1], (0, 1), &[], false);
    ok(54, &[2, 3], &[3], &[1], (0, 1), &[], false);
    ok(55, &[2, 3, 4], &[2, 3], &[1], (0, 2), &[0, 1, 2, 3, 0, 1], true);
    ok(56, &[2, 3], &[1], &[1], (1, 0), &[], false);
}

#[test]
fn random_cases_reach_both_outcomes_of_every_op() {
    // The proptest is only meaningful if every op both succeeds and fails on the generated inputs.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut ok, mut err) = (vec![0; N_OPS], vec![0; N_OPS]);
    for _ in 0..6000 {
        let c = case().new_tree(&mut runner).unwrap().current();
        if c.op == 14 && c.b.iter().any(|&d| d > 8) {
            continue;
        }
        match run_case(&c) {
            Ok(()) => ok[c.op] += 1,
            Err(_) => err[c.op] += 1,
        }
    }
    for op in 0..N_OPS {
        assert!(ok[op] > 0 && err[op] > 0, "op {op}: {} successes, {} errors", ok[op], err[op]);
    }
}

/// Inputs that used to give silent wrong answers (issue 14): each is now a clear error naming the op.
#[test]
fn hyperparameters_and_steps_out_of_range_are_errors() {
    use metagrad::gradcheck::{check_grad, check_hvp};
    use metagrad::optim::{scalar, Adam, Sgd};
    use metagrad::replay::{metasmoothness, reference::keypoint_lr};
    let x = Tensor::from_vec(vec![1.0f64, 2.0], [2]).unwrap();
    let f = |v: &[Var]| v[0].square()?.sum_all();
    // A step of ∞ gives (f(∞) − f(−∞)) / ∞: not a derivative.
    for h in [f64::INFINITY, f64::NAN, 0.0, -1e-6] {
        assert!(matches!(check_grad(f, std::slice::from_ref(&x), h), Err(Error::Invalid { op: "check_grad", .. })), "h = {h}");
        assert!(matches!(check_hvp(f, std::slice::from_ref(&x), std::slice::from_ref(&x), h), Err(Error::Invalid { op: "check_hvp", .. })));
        let a = |z: &[Tensor]| Ok(z.to_vec());
        assert!(matches!(metasmoothness(a, std::slice::from_ref(&x), std::slice::from_ref(&x), h), Err(Error::Invalid { .. })));
    }
    // keypoint_lr past the schedule's end extrapolated the last segment.
    let eta = Var::constant(Tensor::from_vec(vec![0.1f64, 0.2, 0.3], [3]).unwrap());
    assert!(keypoint_lr(&eta, 9, 10).is_ok());
    assert!(matches!(keypoint_lr(&eta, 10, 10), Err(Error::Invalid { op: "keypoint_lr", .. })));
    // Optimizers: extra gradients were ignored; β₁ = 1 divides by a zero bias correction; eps < 0.
    let p = vec![Var::constant(x.clone())];
    let g2 = vec![Var::constant(x.clone()), Var::constant(x.clone())];
    let p0 = &p[0];
    let sgd = Sgd { lr: scalar(0.1, p0), momentum: None, weight_decay: scalar(0.0, p0), nesterov: false };
    assert!(matches!(sgd.step(&p, &g2, &[]), Err(Error::Invalid { op: "sgd", .. })));
    let adam = |b1: f64, eps: f64| Adam {
        lr: scalar(1e-3, p0),
        beta1: scalar(b1, p0),
        beta2: scalar(0.999, p0),
        eps,
        eps_root: 0.0,
        weight_decay: scalar(0.0, p0),
        decoupled: true,
    };
    let zeros = vec![Var::constant(Tensor::zeros([2], DType::F64))];
    assert!(adam(0.9, 1e-8).step(0, &p, &p, &zeros, &zeros).is_ok());
    for (b1, eps) in [(1.0, 1e-8), (-0.1, 1e-8), (0.9, -1e-8), (0.9, f64::NAN)] {
        match adam(b1, eps).step(0, &p, &p, &zeros, &zeros) {
            Err(Error::Invalid { op: "adam", msg }) => assert!(msg.contains("beta1") || msg.contains("eps"), "{msg}"),
            other => panic!("β₁ = {b1}, eps = {eps}: expected an error, got {other:?}"),
        }
    }
    assert!(matches!(adam(0.9, 1e-8).step(0, &p, &g2, &zeros, &zeros), Err(Error::Invalid { op: "adam", .. })));
    // At a huge step the bias corrections are 1 (β^t underflows): finite, no overflow of t + 1.
    for t in [1 << 40, usize::MAX - 1, usize::MAX] {
        let (np, _, _) = adam(0.9, 1e-8).step(t, &p, &p, &zeros, &zeros).unwrap();
        assert!(np[0].value().all_finite(), "t = {t}");
    }
}

/// The overflows issue 14 named, which panicked in debug builds (CI runs this file in debug too).
#[test]
fn overflowing_geometry_is_an_error_or_a_correct_empty_result() {
    let t = Tape::new();
    // A zero and a huge dimension: the strides' product overflows, the tensor is empty.
    let e = Tensor::try_zeros([0, usize::MAX, 3], DType::F32).unwrap();
    assert_eq!(e.dims(), &[0, usize::MAX, 3]);
    let v = t.var(e);
    assert_eq!(v.permute(&[2, 1, 0]).unwrap().dims(), &[3, usize::MAX, 0]);
    assert_eq!(v.transpose(0, 1).unwrap().dims(), &[usize::MAX, 0, 3]);
    assert_eq!(v.sum(&[1], false).unwrap().dims(), &[0, 3]);
    // Summing the empty axis away leaves [usize::MAX, 3] zeros: more than any memory.
    assert!(matches!(v.sum(&[0], false), Err(Error::OutOfMemory { .. })));
    // Convolution and pooling with huge strides and dilations.
    let x = t.var(Tensor::ones([1, 1, 4, 4], DType::F64));
    let w = t.var(Tensor::ones([1, 1, 2, 2], DType::F64));
    for huge in [usize::MAX, 1 << 63, (1 << 32) + 1] {
        let o = Conv2dOpts { stride: (huge, huge), ..Conv2dOpts::default() };
        let y = x.conv2d(&w, None, o).unwrap();
        assert_eq!(y.value().to_vec_f64(), vec![4.0], "stride {huge}: one window, at the origin");
        let g = grad(&y.sum_all().unwrap(), &[&x, &w], false).unwrap();
        assert_eq!(g[1].value().to_vec_f64(), vec![1.0; 4]);
        assert_eq!(x.avg_pool2d((2, 2), o).unwrap().dims(), &[1, 1, 1, 1]);
        let dil = Conv2dOpts { dilation: (huge, huge), ..Conv2dOpts::default() };
        assert!(matches!(x.conv2d(&w, None, dil), Err(Error::Shape { op: "conv2d", .. })), "dilation {huge}");
    }
}
