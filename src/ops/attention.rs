//! Scaled dot-product attention: softmax(c·Q·Kᵀ + mask)·V, fused and composite.
//!
//! [`Var::attention`] is the fused path: three ops, each one CPU kernel that never materializes the N×N
//! score matrix (see `backend::cpu::attention`), chained so that derivatives stay native:
//! - `attention` computes O and saves the row logsumexp ℓ; its VJP is the op
//! - `attention_backward` (dQ, dK, dV from Q, K, V, dO and the saved O, ℓ), whose VJP is the op
//! - `attention_backward_backward` (cotangents of Q, K, V, dO from cotangents of dQ, dK, dV).
//!
//! So gradients, Hessian-vector products and backward-over-backward (REPLAY's metagradients) run fused
//! kernels end to end. A third derivative is not implemented: the VJP of `attention_backward_backward`
//! is an [`Error::Autodiff`] saying so; use [`Var::attention_composite`], built from matmul and softmax,
//! whose derivatives of every order are exact (at O(N²) memory).
//!
//! The tape records single-output ops, so the two backward ops record their outputs packed into one
//! flat tensor and hand them out through the differentiable `narrow` and `reshape`: their adjoints
//! zero-pad and sum the pieces' cotangents back into the packed cotangent, so the packed op's VJP sees
//! exactly the cotangents of its outputs. Saved statistics (O, ℓ) are plain tensors captured by the VJP
//! closures: they are functions of the inputs, and the backward kernels' formulas already account for
//! that dependence.

use super::same_dtypes;
use crate::backend::spec::{AttnShape, Need};
use crate::backend::Storage;
use crate::error::{invalid, shape_err, Error, Result};
use crate::{Tensor, Var};

/// The message of the error raised when differentiating `attention_backward_backward`.
const THIRD_ORDER: &str = "attention_backward_backward: a third derivative of fused attention is not supported; \
     use Var::attention_composite (matmul + softmax, every order exact) where third or higher derivatives are needed";

/// Checks Q [.., Nq, d], K [.., Nk, d], V [.., Nk, dv] (equal leading dims, one compute dtype) and the
/// scale; returns the kernel geometry.
fn check(q: &Var, k: &Var, v: &Var, scale: f64, causal: bool) -> Result<AttnShape> {
    let bad_rank = || shape_err("attention", format!("q {}, k {}, v {} need equal rank ≥ 2", q.shape(), k.shape(), v.shape()));
    let (Some((qb, &[nq, d])), Some((kb, &[nk, dk])), Some((vb, &[nv, dv]))) =
        (q.dims().split_last_chunk(), k.dims().split_last_chunk(), v.dims().split_last_chunk())
    else {
        return bad_rank();
    };
    if qb.len() != kb.len() || qb.len() != vb.len() {
        return bad_rank();
    }
    if dk != d || nv != nk || qb != kb || qb != vb {
        return shape_err(
            "attention",
            format!("q {}, k {}, v {} need [.., Nq, d], [.., Nk, d], [.., Nk, dv]", q.shape(), k.shape(), v.shape()),
        );
    }
    same_dtypes("attention", &[q, k, v])?;
    if !scale.is_finite() {
        return invalid("attention", format!("scale {scale} is not finite"));
    }
    Ok(AttnShape { heads: crate::shape::numel(qb), nq, nk, d, dv, scale, causal })
}

/// Splits a packed 1-D variable into pieces shaped like `like` (differentiably: narrow, then
/// reshape), skipping the pieces whose variable in `like` is not tracked (no cotangent is needed there).
fn unpack(packed: &Var, like: &[Var]) -> Result<Vec<Option<Var>>> {
    let mut off = 0;
    let mut out = Vec::with_capacity(like.len());
    for x in like {
        let n = x.value().numel();
        out.push(if x.is_tracked() { Some(packed.narrow(0, off, n)?.reshape(x.shape().clone())?) } else { None });
        off += n;
    }
    Ok(out)
}

/// The op `attention_backward`: (dQ, dK, dV) from Q, K, V = `x`, dO and the forward's O and ℓ, for
/// the tracked ones of Q, K, V.
fn attention_backward(x: &[Var], d_o: &Var, o: Tensor, lse: Tensor, g: AttnShape) -> Result<Vec<Option<Var>>> {
    const OP: &str = "attention_backward";
    let [q, k, v] = x else {
        return Err(Error::Autodiff { msg: format!("{OP}: expected the 3 inputs q, k, v, got {}", x.len()) });
    };
    let need = Need { q: q.is_tracked(), kv: k.is_tracked() || v.is_tracked(), d_o: false };
    fn s(t: &Var) -> &Storage {
        t.value().storage()
    }
    let packed = Storage::attention_backward(OP, &g, [s(q), s(k), s(v)], [o.storage(), lse.storage()], s(d_o), need)?;
    let n = packed.len();
    let packed = Tensor::new(OP, packed, [n])?;
    let y = Var::record(OP, packed, &[q, k, v, d_o], move |x, _, cot| attention_backward_backward(x, cot, &o, &lse, g))?;
    unpack(&y, x)
}

/// The op `attention_backward_backward`: the cotangents of the tracked ones of (Q, K, V, dO) = `x`,
/// given the packed cotangent `cot` of (dQ, dK, dV).
fn attention_backward_backward(x: &[Var], cot: &Var, o: &Tensor, lse: &Tensor, g: AttnShape) -> Result<Vec<Option<Var>>> {
    const OP: &str = "attention_backward_backward";
    let [q, k, v, d_o] = x else {
        return Err(Error::Autodiff { msg: format!("{OP}: expected the 4 inputs q, k, v, dO, got {}", x.len()) });
    };
    let need = Need { q: q.is_tracked(), kv: k.is_tracked() || v.is_tracked(), d_o: d_o.is_tracked() };
    fn s(t: &Var) -> &Storage {
        t.value().storage()
    }
    let packed = Storage::attention_backward_backward(OP, &g, [s(q), s(k), s(v)], [o.storage(), lse.storage()], s(d_o), s(cot), need)?;
    let n = packed.len();
    let packed = Tensor::new(OP, packed, [n])?;
    let y = Var::record(OP, packed, &[q, k, v, d_o, cot], |_, _, _| Err(Error::Autodiff { msg: THIRD_ORDER.into() }))?;
    unpack(&y, x)
}

impl Var {
    /// Attention of queries `self` [.., Nq, d] over keys [.., Nk, d] and values [.., Nk, dv]:
    /// softmax(scale·Q·Kᵀ)·V, shape [.., Nq, dv]. With `causal`, query i sees keys j ≤ i (top-left
    /// aligned, as PyTorch's `is_causal`).
    ///
    /// Fused: O(N) memory per head, deterministic, with fused kernels for the gradient and for
    /// backward-over-backward (Hessian-vector products). A third derivative returns an
    /// [`Error::Autodiff`]; use [`Var::attention_composite`] for that.
    ///
    /// Where the device's fused kernels do not handle the shapes (on CUDA: widths d, dv > 128, or an
    /// empty problem), this runs [`Var::attention_composite`] instead.
    pub fn attention(&self, k: &Var, v: &Var, scale: f64, causal: bool) -> Result<Var> {
        let g = check(self, k, v, scale, causal)?;
        if !Storage::supports_attention(self.value().device(), &g) {
            return self.attention_composite(k, v, scale, causal);
        }
        let (o, lse) = Storage::attention_forward("attention", &g, self.value().storage(), k.value().storage(), v.value().storage())?;
        let Some((_, lead)) = self.dims().split_last() else {
            return shape_err("attention", format!("q {} needs rank ≥ 2", self.shape()));
        };
        let od: Vec<usize> = lead.iter().copied().chain([g.dv]).collect();
        let (o, lse) = (Tensor::new("attention", o, od)?, Tensor::new("attention", lse, lead)?);
        Var::record("attention", o, &[self, k, v], move |x, o, d_o| attention_backward(x, d_o, o.value().clone(), lse.clone(), g))
    }

    /// The composite attention path, softmax(scale·Q·Kᵀ + mask)·V from matmul and softmax: it
    /// materializes the N×N scores but differentiates to any order. Same arguments as [`Var::attention`].
    pub fn attention_composite(&self, k: &Var, v: &Var, scale: f64, causal: bool) -> Result<Var> {
        let g = check(self, k, v, scale, causal)?;
        let mut s = self.matmul(&k.transpose(-1, -2)?)?.mul_scalar(scale)?;
        if causal {
            let (nq, nk) = (g.nq, g.nk);
            let mask: Vec<f64> = (0..nq * nk).map(|p| if p % nk <= p / nk { 0.0 } else { f64::NEG_INFINITY }).collect();
            s = s.add(&Var::constant(Tensor::from_vec(mask, [nq, nk])?.try_to_dtype(self.dtype())?.to_device(self.value().device())?))?;
        }
        s.softmax(-1)?.matmul(v)
    }
}
