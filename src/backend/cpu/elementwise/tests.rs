//! The element-wise kernels against their one-by-one definitions and across instruction sets.

use super::*;

/// Every instruction-set level this CPU runs (the best, then the lower ones).
fn isas() -> Vec<Isa> {
    match super::super::detect() {
        Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Portable],
        Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
        Isa::Portable => vec![Isa::Portable],
    }
}

/// Arguments over many magnitudes and both signs, with ±0, ±∞, NaN and subnormals.
fn args<T: Float>() -> Vec<T> {
    let mut v: Vec<T> = (0..4000).map(|i| T::from_f64(((i as f64) * 0.7717 - 1500.0) * if i % 3 == 0 { 1e-3 } else { 1.0 })).collect();
    v.extend([0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e-310, 1e30, -1e30].map(T::from_f64));
    v
}

fn bits<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

fn same<T: Float>(a: &[T], b: &[T]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits() || (x.is_nan() && y.is_nan())) && a.len() == b.len()
}

fn unary_agrees_across_isas<T: Float>() {
    let xs = args::<T>();
    let ops =
        [UnaryOp::Sin, UnaryOp::Cos, UnaryOp::NonZero, UnaryOp::Tanh, UnaryOp::Erf, UnaryOp::Gelu, UnaryOp::GeluGrad, UnaryOp::Sigmoid];
    for f in ops {
        let run = |isa: Isa| {
            let mut out = vec![T::ZERO; xs.len()];
            unary_slice(isa, &mut out, &xs, f);
            out
        };
        let reference = run(Isa::Portable);
        for isa in isas() {
            assert!(same(&run(isa), &reference), "{f:?} differs on {isa:?}: {:?}", bits(&run(isa)));
        }
    }
}

/// The block path of the loops (exp, tanh, erf, the GELUs) against [`UnaryOp::apply`] on each
/// value, bit for bit, on every ISA; 4,008 arguments, so a partial block is left over.
fn unary_blocks_give_the_bits_of_apply<T: Float>() {
    let xs = args::<T>();
    for f in [UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Erf, UnaryOp::Gelu, UnaryOp::GeluGrad] {
        assert!(f.has_block_form(), "{f:?} has a block form");
        let want: Vec<T> = xs.iter().map(|&x| f.apply(x)).collect();
        for isa in isas() {
            let mut out = vec![T::ZERO; xs.len()];
            unary_slice(isa, &mut out, &xs, f);
            assert!(same(&out, &want), "{f:?} in blocks differs from one by one on {isa:?}");
        }
    }
}

#[test]
fn unary_blocks_give_the_bits_of_apply_f32() {
    unary_blocks_give_the_bits_of_apply::<f32>();
}

#[test]
fn unary_blocks_give_the_bits_of_apply_f64() {
    unary_blocks_give_the_bits_of_apply::<f64>();
}

fn binary_agrees_across_isas<T: Float>() {
    let xs = args::<T>();
    let ys: Vec<T> = xs.iter().rev().copied().collect();
    for f in [BinaryOp::Max, BinaryOp::Min, BinaryOp::Select] {
        for (sa, sb) in [(1, 1), (1, 0), (0, 1)] {
            let run = |isa: Isa| {
                let mut out = vec![T::ZERO; xs.len()];
                zip_row_dispatch(isa, &mut out, &xs, sa, &ys, sb, &move |p: T, q: T| f.apply(p, q));
                out
            };
            let reference = run(Isa::Portable);
            for isa in isas() {
                assert!(same(&run(isa), &reference), "{f:?} ({sa}, {sb}) differs on {isa:?}");
            }
        }
    }
}

#[test]
fn new_unary_and_binary_ops_agree_bitwise_across_instruction_sets() {
    unary_agrees_across_isas::<f32>();
    unary_agrees_across_isas::<f64>();
    binary_agrees_across_isas::<f32>();
    binary_agrees_across_isas::<f64>();
}

#[test]
fn max_min_select_semantics() {
    let nan = f64::NAN;
    assert_eq!(BinaryOp::Max.apply(1.0, 2.0), 2.0);
    assert_eq!(BinaryOp::Max.apply(-0.0f64, 0.0).to_bits(), (-0.0f64).to_bits()); // a tie keeps a
    assert!(BinaryOp::Max.apply(nan, 1.0).is_nan() && BinaryOp::Max.apply(1.0, nan).is_nan());
    assert_eq!(BinaryOp::Min.apply(1.0, 2.0), 1.0);
    assert_eq!(BinaryOp::Min.apply(0.0f64, -0.0).to_bits(), 0.0f64.to_bits());
    assert!(BinaryOp::Min.apply(nan, 1.0).is_nan() && BinaryOp::Min.apply(1.0, nan).is_nan());
    assert_eq!(BinaryOp::Select.apply(f64::INFINITY, 1.0), f64::INFINITY);
    assert!(BinaryOp::Select.apply(7.0, nan) == 7.0); // NaN counts as true
    assert_eq!(BinaryOp::Select.apply(f64::INFINITY, 0.0).to_bits(), (-0.0f64).to_bits());
    assert_eq!(BinaryOp::Select.apply(nan, -0.0).to_bits(), (-0.0f64).to_bits());
    assert_eq!(UnaryOp::NonZero.apply(nan), 1.0);
    assert_eq!(UnaryOp::NonZero.apply(-0.0f64), 0.0);
}
