//! Scaled dot-product attention as a composite: softmax(c·Q·Kᵀ + mask)·V.
//!
//! Built from matmul and softmax, so its first and second derivatives are exact and need no code of
//! their own; it materializes the N×N score matrix. (The fused, O(N)-memory kernels are tracked
//! separately and will be selected by [`Var::attention`] when they land.)

use crate::error::{invalid, shape_err, Result};
use crate::{Tensor, Var};

impl Var {
    /// Attention of queries `self` [.., Nq, d] over keys [.., Nk, d] and values [.., Nk, dv]:
    /// softmax(scale·Q·Kᵀ)·V, shape [.., Nq, dv]. With `causal`, query i sees keys j ≤ i (top-left
    /// aligned, as PyTorch's `is_causal`). Today this is [`Var::attention_composite`].
    pub fn attention(&self, k: &Var, v: &Var, scale: f64, causal: bool) -> Result<Var> {
        self.attention_composite(k, v, scale, causal)
    }

    /// The composite (N×N) attention path; see [`Var::attention`].
    pub fn attention_composite(&self, k: &Var, v: &Var, scale: f64, causal: bool) -> Result<Var> {
        let (q, r) = (self, self.shape().rank());
        if r < 2 || k.shape().rank() != r || v.shape().rank() != r {
            return shape_err("attention", format!("q {}, k {}, v {} need equal rank ≥ 2", q.shape(), k.shape(), v.shape()));
        }
        let (nq, d, nk) = (q.dims()[r - 2], q.dims()[r - 1], k.dims()[r - 2]);
        if k.dims()[r - 1] != d || v.dims()[r - 2] != nk || q.dims()[..r - 2] != k.dims()[..r - 2] || q.dims()[..r - 2] != v.dims()[..r - 2]
        {
            return shape_err(
                "attention",
                format!("q {}, k {}, v {} need [.., Nq, d], [.., Nk, d], [.., Nk, dv]", q.shape(), k.shape(), v.shape()),
            );
        }
        super::same_dtypes("attention", &[q, k, v])?;
        if !scale.is_finite() {
            return invalid("attention", format!("scale {scale} is not finite"));
        }
        let mut s = q.matmul(&k.transpose(-1, -2)?)?.mul_scalar(scale)?;
        if causal {
            let mask: Vec<f64> = (0..nq * nk).map(|p| if p % nk <= p / nk { 0.0 } else { f64::NEG_INFINITY }).collect();
            s = s.add(&Var::constant(Tensor::from_vec(mask, [nq, nk])?.to_dtype(q.dtype())))?;
        }
        s.softmax(-1)?.matmul(v)
    }
}
