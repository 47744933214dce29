//! Ops: shape rules, the forward kernel call, and the VJP, for tensors and variables alike.
//!
//! Layout (one op family per file, everything about an op in one place):
//! - `binary.rs`: add, sub, mul, div with broadcasting, scalar forms, and the `+ - * /` operators;
//! - `unary.rs`: exp, log, tanh, sigmoid, gelu, relu, sqrt, rsqrt, powf, abs, square, clamp, erf, sin,
//!   cos, ...;
//! - `select.rs`: maximum and minimum (broadcasting), where_ and masked_fill (constant conditions),
//!   argmax (indices, untracked);
//! - `reduce.rs`: sum, mean, max over axes, logsumexp;
//! - `matmul.rs`: matmul and batched matmul;
//! - `linear.rs`: every *linear* data-movement op (reshape, permute, broadcast, sum_to, narrow, concat,
//!   index_select and gather with their scatter-add adjoints, dtype and device copies) through one
//!   mechanism;
//! - `softmax.rs`: softmax, log_softmax, cross-entropy (of [N, C] logits, and of [.., C] logits with
//!   ignore_index, label smoothing and weights: `cross_entropy_with`);
//! - `norm.rs`, `conv.rs`, `attention.rs`: the composite and fused layers.
//!
//! Each op exists twice: as a method on [`crate::Tensor`] (the kernel call, no tape: arithmetic for
//! library code) and as a method on [`crate::Var`] (the same value, recorded with its VJP). Every VJP is
//! written with the `Var` ops themselves, so differentiating a VJP works like differentiating anything
//! else: that is what makes double backward native. Ops return [`crate::Result`]; each checks dtypes
//! and shapes first and names itself in any error. Where operands live is the storage layer's
//! business (`backend/mod.rs`): ops never branch on the device.

pub mod attention;
pub mod binary;
pub mod conv;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod select;
pub mod softmax;
pub mod unary;

use crate::backend::spec::AxisView;
use crate::error::{Error, Result};
use crate::{Shape, Tensor, Var};

/// Checks that `t` has a compute dtype (f32 or f64).
pub(crate) fn compute(op: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_compute() {
        return Err(Error::DType { op, msg: format!("{} is a storage-only dtype; convert to f32 or f64 with to_dtype first", t.dtype()) });
    }
    Ok(())
}

/// Checks that two operands have the same compute dtype.
pub(crate) fn same_dtype_t(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            msg: format!("operands have dtypes {} {} and {} {}; convert one with to_dtype", a.shape(), a.dtype(), b.shape(), b.dtype()),
        });
    }
    compute(op, a)
}

/// [`same_dtype_t`] for variables.
pub(crate) fn same_dtype(op: &'static str, a: &Var, b: &Var) -> Result<()> {
    same_dtype_t(op, a.value(), b.value())
}

/// Checks that all operands share the first one's compute dtype: composite ops call it first, so
/// their errors name them rather than the primitive that would fail inside.
pub(crate) fn same_dtypes(op: &'static str, vars: &[&Var]) -> Result<()> {
    let Some(first) = vars.first() else { return Ok(()) };
    vars.iter().try_for_each(|v| same_dtype(op, first, v))
}

/// The inputs a VJP of `op` receives, as an array of the `N` it was recorded with (`let [a, b] =
/// inputs("mul", x)?`); an autodiff error, not a panic, if the tape hands it another number.
pub(crate) fn inputs<'a, const N: usize>(op: &'static str, x: &'a [Var]) -> Result<&'a [Var; N]> {
    x.try_into().map_err(|_| Error::Autodiff { msg: format!("{op}: the VJP expects {N} inputs, got {}", x.len()) })
}

/// The (outer, n, inner) view of `shape` around `axis`.
pub(crate) fn view(shape: &Shape, axis: usize) -> AxisView {
    let (outer, n, inner) = shape.split_at_axis(axis);
    AxisView { outer, n, inner }
}
