//! Matrix multiply, plain and batched.
//!
//! `a` is [..., m, k] and `b` is [..., k, n]; leading (batch) dimensions broadcast. The VJP is the pair
//! of matmuls g·bᵀ and aᵀ·g, so its derivative is again matmuls. Broadcast batch dimensions go through
//! the differentiable `broadcast_to`, whose VJP sums them back.

use super::same_dtype;
use crate::backend::cpu;
use crate::dtype::with_float;
use crate::error::{shape_err, Result};
use crate::{Shape, Tensor, Var};

impl Var {
    /// Matrix product over the last two axes, batched (with broadcasting) over the others. Both operands
    /// need rank ≥ 2; a vector is a [1, k] or [k, 1] matrix (reshape it first).
    pub fn matmul(&self, other: &Var) -> Result<Var> {
        same_dtype("matmul", self, other)?;
        let (ad, bd) = (self.dims(), other.dims());
        if ad.len() < 2 || bd.len() < 2 || ad[ad.len() - 1] != bd[bd.len() - 2] {
            return shape_err("matmul", format!("cannot multiply {} by {}: need [.., m, k] x [.., k, n]", self.shape(), other.shape()));
        }
        let batch = Shape::broadcast("matmul", &Shape::new(&ad[..ad.len() - 2]), &Shape::new(&bd[..bd.len() - 2]))?;
        let full = |d: &[usize]| {
            let mut s = batch.dims().to_vec();
            s.extend_from_slice(&d[d.len() - 2..]);
            Shape::new(s)
        };
        let (a, b) = (self.broadcast_to(&full(ad))?, other.broadcast_to(&full(bd))?);
        a.matmul_same_batch(&b)
    }

    fn matmul_same_batch(&self, other: &Var) -> Result<Var> {
        let (ad, bd) = (self.dims(), other.dims());
        let r = ad.len();
        let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
        let batches: usize = ad[..r - 2].iter().product();
        let mut od = ad.to_vec();
        od[r - 1] = n;
        let y = with_float!("matmul", self.dtype(), T => {
            let (x, w) = (self.value().as_slice::<T>()?, other.value().as_slice::<T>()?);
            let mut out = Vec::with_capacity(batches * m * n);
            for bi in 0..batches {
                out.extend(cpu::matmul(&x[bi * m * k..(bi + 1) * m * k], &w[bi * k * n..(bi + 1) * k * n], m, k, n));
            }
            Tensor::from_vec(out, od)?
        });
        Var::record("matmul", y, &[self, other], |x, _, g| {
            Ok(vec![
                if x[0].is_tracked() { Some(g.matmul_same_batch(&x[1].transpose(-1, -2)?)?) } else { None },
                if x[1].is_tracked() { Some(x[0].transpose(-1, -2)?.matmul_same_batch(g)?) } else { None },
            ])
        })
    }
}
