//! Matrix multiply, plain and batched, with optionally transposed operands.
//!
//! `a` is [..., m, k] and `b` is [..., k, n]; leading (batch) dimensions broadcast. [`Var::matmul_t`]
//! multiplies op(a)·op(b), where op transposes the last two axes on request, without making the
//! transposed copy (the kernel packs its operands anyway). The VJP of a product is a pair of products
//! of the same family — for C = A·B, dA = G·Bᵀ and dB = Aᵀ·G — so it needs no transposes either, and
//! its derivative is again such products. Broadcast batch dimensions go through the differentiable
//! `broadcast_to`, whose VJP sums them back.

use super::same_dtype_t;
use crate::backend::spec::MatmulShape;
use crate::error::{shape_err, Result};
use crate::{Shape, Tensor, Var};

/// The batch shape of op(a)·op(b) (leading dims broadcast), or a shape error naming the transposes.
fn batch_shape(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Shape> {
    same_dtype_t("matmul", a, b)?;
    let ([a_batch @ .., a0, a1], [b_batch @ .., b0, b1]) = (a.dims(), b.dims()) else {
        return rank_err(a, b);
    };
    let ka = if ta { a0 } else { a1 };
    let kb = if tb { b1 } else { b0 };
    if ka != kb {
        let t = |x: bool| if x { "ᵀ" } else { "" };
        return shape_err(
            "matmul",
            format!("cannot multiply {}{} by {}{}: inner dimensions {ka} and {kb} differ", a.shape(), t(ta), b.shape(), t(tb)),
        );
    }
    Shape::broadcast("matmul", &Shape::new(a_batch), &Shape::new(b_batch))
}

/// The error for an operand of rank < 2.
fn rank_err<T>(a: &Tensor, b: &Tensor) -> Result<T> {
    shape_err("matmul", format!("cannot multiply {} by {}: both need rank ≥ 2", a.shape(), b.shape()))
}

/// `d` (of rank ≥ 2) with its leading (batch) dimensions replaced by `batch`.
fn with_batch(batch: &Shape, d: &[usize]) -> Shape {
    let mut s = batch.dims().to_vec();
    s.extend(d.iter().skip(d.len().saturating_sub(2)));
    Shape::new(s)
}

/// op(a)·op(b) for operands of the same (already broadcast) batch dimensions.
fn matmul_same_batch(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let ([batch @ .., a0, a1], [.., b0, b1]) = (a.dims(), b.dims()) else {
        return rank_err(a, b);
    };
    let (m, k) = if ta { (*a1, *a0) } else { (*a0, *a1) };
    let n = if tb { *b0 } else { *b1 };
    let batches = crate::shape::numel(batch);
    let mut od = batch.to_vec();
    od.extend([m, n]);
    let s = a.storage().matmul("matmul", b.storage(), MatmulShape { batches, m, k, n, ta, tb })?;
    Tensor::new("matmul", s, od)
}

impl Tensor {
    /// Matrix product over the last two axes, batched (with broadcasting) over the others (see
    /// [`Var::matmul`]).
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_t(other, false, false)
    }

    /// op(self)·op(other) over the last two axes (see [`Var::matmul_t`]).
    pub fn matmul_t(&self, other: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        let batch = batch_shape(self, other, ta, tb)?;
        let (a, b) = (self.broadcast_to(&with_batch(&batch, self.dims()))?, other.broadcast_to(&with_batch(&batch, other.dims()))?);
        matmul_same_batch(&a, &b, ta, tb)
    }
}

impl Var {
    /// Matrix product over the last two axes, batched (with broadcasting) over the others. Both operands
    /// need rank ≥ 2; a vector is a [1, k] or [k, 1] matrix (reshape it first).
    pub fn matmul(&self, other: &Var) -> Result<Var> {
        self.matmul_t(other, false, false)
    }

    /// op(self)·op(other) over the last two axes, batched like [`Var::matmul`], where op transposes the
    /// last two axes of `self` when `ta` and of `other` when `tb`. Same values, bit for bit, as
    /// transposing first, without the copy: `q.matmul_t(&k, false, true)` is Q·Kᵀ.
    pub fn matmul_t(&self, other: &Var, ta: bool, tb: bool) -> Result<Var> {
        let batch = batch_shape(self.value(), other.value(), ta, tb)?;
        let (a, b) = (self.broadcast_to(&with_batch(&batch, self.dims()))?, other.broadcast_to(&with_batch(&batch, other.dims()))?);
        a.matmul_same_batch(&b, ta, tb)
    }

    fn matmul_same_batch(&self, other: &Var, ta: bool, tb: bool) -> Result<Var> {
        let y = matmul_same_batch(self.value(), other.value(), ta, tb)?;
        Var::record("matmul", y, &[self, other], move |x, _, g| {
            let [a, b] = super::inputs("matmul", x)?;
            // C = op(A)·op(B) with cotangent G: d op(A) = G·op(B)ᵀ and d op(B) = op(A)ᵀ·G, written so
            // that each lands in its operand's stored layout.
            let (da, db) = match (ta, tb) {
                (false, false) => ((g, b, false, true), (a, g, true, false)),
                (false, true) => ((g, b, false, false), (g, a, true, false)),
                (true, false) => ((b, g, false, true), (a, g, false, false)),
                (true, true) => ((b, g, true, true), (g, a, true, true)),
            };
            Ok(vec![
                if a.is_tracked() { Some(da.0.matmul_same_batch(da.1, da.2, da.3)?) } else { None },
                if b.is_tracked() { Some(db.0.matmul_same_batch(db.1, db.2, db.3)?) } else { None },
            ])
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{grad, hvp, DType, Tape, Tensor, Var};

    /// Every layout gives the bits of explicit transposes, in the value, the gradient and the HVP.
    #[test]
    fn transposed_layouts_match_explicit_transposes_bitwise() {
        let (a0, b0) = (Tensor::randn([2, 5, 3], DType::F32, 1), Tensor::randn([2, 3, 4], DType::F32, 2));
        let w = Var::constant(Tensor::randn([2, 5, 4], DType::F32, 3));
        let v = [Tensor::randn([2, 5, 3], DType::F32, 4), Tensor::randn([2, 3, 4], DType::F32, 5)];
        let t = |x: &Var| x.transpose(-1, -2).unwrap();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            // (value, gradient, HVP) of sum(tanh(op(A)·op(B) ∘ W)) with A stored as [2, 3, 5] when ta
            // and B as [2, 4, 3] when tb; `fused` uses matmul_t, otherwise explicit transposes.
            let run = |fused: bool| {
                let tape = Tape::new();
                let (a, b) = (tape.var(a0.clone()), tape.var(b0.clone()));
                let sa = if ta { t(&a) } else { a.clone() };
                let sb = if tb { t(&b) } else { b.clone() };
                let c = if fused {
                    sa.matmul_t(&sb, ta, tb).unwrap()
                } else {
                    (if ta { t(&sa) } else { sa }).matmul(&(if tb { t(&sb) } else { sb })).unwrap()
                };
                let l = c.mul(&w).unwrap().tanh().unwrap().sum_all().unwrap();
                let g: Vec<Tensor> = grad(&l, &[&a, &b], true).unwrap().iter().map(|g| g.value().clone()).collect();
                let h = hvp(&l, &[&a, &b], &v).unwrap();
                (c.value().clone(), g, h)
            };
            let (fast, slow) = (run(true), run(false));
            assert!(fast.0.bit_eq(&slow.0), "value ta={ta} tb={tb}");
            for (x, y) in fast.1.iter().chain(&fast.2).zip(slow.1.iter().chain(&slow.2)) {
                assert!(x.bit_eq(y), "grad/hvp ta={ta} tb={tb}");
            }
        }
    }

    #[test]
    fn shape_errors_name_the_transposes() {
        let a = Var::constant(Tensor::zeros([2, 3], DType::F32));
        let e = a.matmul_t(&a, false, false).unwrap_err().to_string();
        assert!(e.contains("matmul") && e.contains("[2, 3]"), "{e}");
        assert!(a.matmul_t(&a, false, true).is_ok() && a.matmul_t(&a, true, false).is_ok());
    }
}
