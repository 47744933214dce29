//! Matrix multiply, plain and batched, with optionally transposed operands.
//!
//! `a` is [..., m, k] and `b` is [..., k, n]; leading (batch) dimensions broadcast. [`Var::matmul_t`]
//! multiplies op(a)·op(b), where op transposes the last two axes on request, without making the
//! transposed copy (the kernel packs its operands anyway). The VJP of a product is a pair of products
//! of the same family — for C = A·B, dA = G·Bᵀ and dB = Aᵀ·G — so it needs no transposes either, and
//! its derivative is again such products. Broadcast batch dimensions go through the differentiable
//! `broadcast_to`, whose VJP sums them back, except for the commonest case, a batched `a` times a
//! matrix `b` (a linear layer on a [batch, tokens, features] input): that is one product of all of
//! `a`'s rows, through `reshape`, with no copy of `b` (see `flat_rows`).

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

/// For a batched `a` (not transposed) times a matrix `b`: the shapes that multiply `a` as one matrix
/// of all its rows, [batch·m, k], and the product's shape to reshape back to. A linear layer on a
/// [batch, tokens, features] input is then one product instead of one per batch entry against a
/// broadcast copy of the weight: the same bits in the value and in dA (each element is the same FMA
/// chain over k, or over n), one FMA chain over all rows in dB (instead of a chain per batch entry
/// and a sum of those). On the GPT of `examples/step_speed` (Zen 3, 2 threads) a training step took
/// 5.3 ms with per-entry products run side by side and 4.6 ms as one product.
fn flat_rows(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Option<(Shape, Shape)> {
    let ([batch @ .., m, k], &[b0, b1]) = (a, b) else { return None };
    let n = if tb { b0 } else { b1 };
    if ta || batch.is_empty() {
        return None;
    }
    let rows = crate::shape::numel(batch).checked_mul(*m)?;
    let mut out = a.to_vec();
    *out.last_mut()? = n;
    Some((Shape::new(vec![rows, *k]), Shape::new(out)))
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
        if let Some((rows, out)) = flat_rows(self.dims(), other.dims(), ta, tb) {
            return self.reshape(rows)?.matmul_t(other, false, tb)?.reshape(out);
        }
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
        if let Some((rows, out)) = flat_rows(self.dims(), other.dims(), ta, tb) {
            return self.reshape(rows)?.matmul_t(other, false, tb)?.reshape(out);
        }
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

    /// A batched A [2, 3, 5, 4] times a matrix B (stored [4, 6], or [6, 4] with tb) is one product of
    /// A's 30 rows: against the per-entry products (each A[i, j] times B, by loops over the batch) the
    /// value and dA agree bit for bit (the same FMA chains), and dB = Σ over entries of A[i, j]ᵀ·G[i, j]
    /// (summed by loops here) to rounding.
    #[test]
    fn batched_times_matrix_is_one_product_of_all_rows() {
        for tb in [false, true] {
            let a0 = Tensor::randn([2, 3, 5, 4], DType::F64, 11);
            let b0 = Tensor::randn(if tb { [6, 4] } else { [4, 6] }, DType::F64, 12);
            let w = Tensor::randn([2, 3, 5, 6], DType::F64, 13);
            let tape = Tape::new();
            let (a, b) = (tape.var(a0.clone()), tape.var(b0.clone()));
            let c = a.matmul_t(&b, false, tb).unwrap();
            assert_eq!(c.dims(), [2, 3, 5, 6]);
            let l = c.mul(&Var::constant(w.clone())).unwrap().sum_all().unwrap();
            let g = grad(&l, &[&a, &b], false).unwrap();
            let mut db_want = vec![0.0f64; 24];
            for e in 0..6 {
                let ae = a0.reshape([6, 5, 4]).unwrap().narrow(0, e, 1).unwrap().reshape([5, 4]).unwrap();
                let we = w.reshape([6, 5, 6]).unwrap().narrow(0, e, 1).unwrap().reshape([5, 6]).unwrap();
                let ce = ae.matmul_t(&b0, false, tb).unwrap();
                let got = c.value().reshape([6, 5, 6]).unwrap().narrow(0, e, 1).unwrap().reshape([5, 6]).unwrap();
                assert!(got.bit_eq(&ce), "value of entry {e}, tb={tb}");
                let da = we.matmul_t(&b0, false, !tb).unwrap();
                let da_got = g[0].value().reshape([6, 5, 4]).unwrap().narrow(0, e, 1).unwrap().reshape([5, 4]).unwrap();
                assert!(da_got.bit_eq(&da), "dA of entry {e}, tb={tb}");
                let (av, wv) = (ae.to_vec_f64(), we.to_vec_f64());
                for (p, q, r) in (0..4).flat_map(|p| (0..6).flat_map(move |q| (0..5).map(move |r| (p, q, r)))) {
                    let at = if tb { q * 4 + p } else { p * 6 + q };
                    db_want[at] += av[r * 4 + p] * wv[r * 6 + q];
                }
            }
            for (x, y) in g[1].value().to_vec_f64().iter().zip(&db_want) {
                assert!((x - y).abs() < 1e-12, "dB {x} vs {y}, tb={tb}");
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
