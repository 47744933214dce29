//! User-defined ops: the extension point for crates built on metagrad.
//!
//! A [`CustomOp`] states a forward on tensor values and a VJP written in [`Var`] ops. Because the VJP is
//! recorded like any other ops when the backward pass runs with `create_graph`, a custom op gets
//! double backward, Hessian-vector products and REPLAY metagradients with no further code. A VJP may
//! itself apply another custom op (with its own fused forward and its own VJP), which is how the crate's
//! fused attention is built: `attention`'s VJP is the op `attention_backward`, whose VJP is
//! `attention_backward_backward`. `examples/custom_op.rs` shows both patterns, checked against finite
//! differences to third order.
//!
//! The forward may compute with anything: tensor arithmetic (`Tensor::add`, `Tensor::matmul`, ...),
//! the host slices of CPU tensors ([`Tensor::as_slice`], [`Tensor::from_vec`]), or a CUDA kernel of
//! your own compiled through the crate's NVRTC path ([`crate::cuda::Kernel`]).

use super::Var;
use crate::error::{Error, Result};
use crate::Tensor;
use std::rc::Rc;

/// A differentiable op defined outside the crate (see the module docs).
pub trait CustomOp: 'static {
    /// The op's name, used on the tape and in errors.
    fn name(&self) -> &'static str;

    /// The output, computed from the inputs' values.
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor>;

    /// The vector-Jacobian product: given the inputs and the output as variables and the output's
    /// cotangent `grad`, one cotangent per input, shaped like it (`None` where an input needs none, e.g.
    /// when `!inputs[i].is_tracked()`). Write it with `Var` ops (including other custom ops) so that it
    /// differentiates again.
    fn backward(&self, inputs: &[Var], output: &Var, grad: &Var) -> Result<Vec<Option<Var>>>;
}

impl Var {
    /// Applies the custom op `op` to `inputs`: runs its forward and records it with its VJP.
    pub fn apply(op: impl CustomOp, inputs: &[&Var]) -> Result<Var> {
        Var::apply_rc(Rc::new(op), inputs)
    }

    /// [`Var::apply`] for an op shared behind an `Rc` (no copy of the op per application).
    pub fn apply_rc(op: Rc<dyn CustomOp>, inputs: &[&Var]) -> Result<Var> {
        let values: Vec<&Tensor> = inputs.iter().map(|v| v.value()).collect();
        let y = op.forward(&values)?;
        if let Some(first) = values.first() {
            if y.device() != first.device() {
                return Err(Error::device(
                    op.name(),
                    format!("the custom op's forward returned a tensor on {} for inputs on {}", y.device(), first.device()),
                ));
            }
        }
        let name = op.name();
        Var::record(name, y, inputs, move |x, out, g| op.backward(x, out, g))
    }
}
