//! Differentiable ops: shape rules, forward dispatch into the backend, and VJPs.
//!
//! Layout (one op family per file, everything about an op in one place):
//! - `binary.rs`: add, sub, mul, div with broadcasting, and scalar forms;
//! - `unary.rs`: exp, log, tanh, sigmoid, gelu, relu, sqrt, rsqrt, powf, abs, square, clamp, erf, ...;
//! - `reduce.rs`: sum, mean, max over axes, logsumexp;
//! - `matmul.rs`: matmul and batched matmul;
//! - `linear.rs`: every *linear* data-movement op (reshape, permute, broadcast, sum_to, narrow, concat,
//!   index_select and gather with their scatter-add adjoints, im2col, pooling) through one mechanism;
//! - `softmax.rs`, `norm.rs`, `conv.rs`, `attention.rs`: the composite and fused layers.
//!
//! Every VJP is written with these same ops, so differentiating a VJP works like differentiating
//! anything else: that is what makes double backward native. Ops are methods on [`crate::Var`] and
//! return [`crate::Result`]; each checks dtypes and shapes first and names itself in any error.

pub mod attention;
pub mod binary;
pub mod conv;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod softmax;
pub mod unary;

use crate::error::{Error, Result};
use crate::Var;

/// Checks that two operands have the same compute dtype and device.
pub(crate) fn same_dtype(op: &'static str, a: &Var, b: &Var) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            msg: format!("operands have dtypes {} {} and {} {}; convert one with to_dtype", a.shape(), a.dtype(), b.shape(), b.dtype()),
        });
    }
    if !a.dtype().is_compute() {
        return Err(Error::DType { op, msg: format!("{} is a storage-only dtype; convert to f32 or f64 first", a.dtype()) });
    }
    if a.value().device() != b.value().device() {
        return Err(Error::Device { op, msg: format!("operands live on {} and {}", a.value().device(), b.value().device()) });
    }
    Ok(())
}

/// Checks that all operands share the first one's compute dtype and device: composite ops call it
/// first, so their errors name them rather than the primitive that would fail inside.
pub(crate) fn same_dtypes(op: &'static str, vars: &[&Var]) -> Result<()> {
    vars.iter().try_for_each(|v| same_dtype(op, vars[0], v))
}
