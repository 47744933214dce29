//! Layer norm and batch norm (training mode) as composites of differentiable ops.
//!
//! Written as composites (mean, subtract, rsqrt, multiply), so every derivative order is exact and
//! shares the deterministic reductions of `reduce.rs`.

use crate::error::{invalid, shape_err, Result};
use crate::Var;

impl Var {
    /// Normalizes over the last axis: (x − mean)/√(var + eps), then `· weight + bias` if given
    /// (each of shape `[D]`, D the last dimension). The variance is the biased (population) one.
    pub fn layer_norm(&self, weight: Option<&Var>, bias: Option<&Var>, eps: f64) -> Result<Var> {
        if self.shape().rank() == 0 {
            return shape_err("layer_norm", "needs at least one axis, got a scalar");
        }
        if eps.is_nan() || eps < 0.0 {
            return invalid("layer_norm", format!("eps {eps} must be non-negative"));
        }
        let d = *self.dims().last().unwrap_or(&0);
        if d == 0 {
            return shape_err("layer_norm", format!("input {} has an empty last axis", self.shape()));
        }
        for (name, p) in [("weight", weight), ("bias", bias)] {
            if let Some(p) = p {
                if p.dims() != [d] {
                    return shape_err(
                        "layer_norm",
                        format!("{name} of shape {} must have shape [{d}] for input {}", p.shape(), self.shape()),
                    );
                }
            }
        }
        let params: Vec<&Var> = [Some(self), weight, bias].into_iter().flatten().collect();
        super::same_dtypes("layer_norm", &params)?;
        let xc = self.sub(&self.mean(&[-1], true)?)?;
        let y = xc.mul(&xc.square()?.mean(&[-1], true)?.add_scalar(eps)?.rsqrt()?)?;
        let y = match weight {
            Some(w) => y.mul(w)?,
            None => y,
        };
        match bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// Batch norm in training mode on [N, C, ...]: normalizes each channel with the batch statistics
    /// (mean and biased variance over every axis but 1), then `· gamma + beta` (each of shape `[C]`).
    pub fn batch_norm(&self, gamma: &Var, beta: &Var, eps: f64) -> Result<Var> {
        let r = self.shape().rank();
        let &[_, c, ..] = self.dims() else {
            return shape_err("batch_norm", format!("input {} needs shape [N, C, ...]", self.shape()));
        };
        if eps.is_nan() || eps < 0.0 {
            return invalid("batch_norm", format!("eps {eps} must be non-negative"));
        }
        if gamma.dims() != [c] || beta.dims() != [c] {
            return shape_err(
                "batch_norm",
                format!("gamma {} and beta {} must have shape [{c}] for input {}", gamma.shape(), beta.shape(), self.shape()),
            );
        }
        super::same_dtypes("batch_norm", &[self, gamma, beta])?;
        if self.dims().iter().enumerate().any(|(a, &n)| a != 1 && n == 0) {
            return shape_err("batch_norm", format!("input {} has no elements per channel: no batch statistics", self.shape()));
        }
        let axes: Vec<isize> = (0..r as isize).filter(|&a| a != 1).collect();
        let mut pshape = vec![1, c];
        pshape.resize(r, 1);
        let xc = self.sub(&self.mean(&axes, true)?)?;
        let xhat = xc.mul(&xc.square()?.mean(&axes, true)?.add_scalar(eps)?.rsqrt()?)?;
        xhat.mul(&gamma.reshape(pshape.clone())?)?.add(&beta.reshape(pshape)?)
    }
}
