//! Selection ops: element-wise maximum and minimum, `where_` and `masked_fill`, and argmax.
//!
//! maximum and minimum route the cotangent to the input the result was taken from, through a constant
//! 0/1 mask (ties go to the first operand); `where_` routes it through its condition. Every VJP here
//! is a selection of the cotangent recorded with the same op, so it differentiates again (the second
//! derivative is zero, as it is almost everywhere for piecewise-linear maps).
//!
//! A *condition* (of `where_`, or the mask of `masked_fill`) is a constant tensor read as a mask: an
//! element is true where it is nonzero (NaN included) and false where it is ±0. A 0/1 tensor of any
//! dtype (f32, f64, bf16, f16) works; it need not share the operands' dtype, only their device.
//!
//! The selection itself is exact for every value, ±∞ and NaN included (never `c·a + (1 − c)·b`, where
//! 0·∞ would be NaN): each side keeps its operand where the mask says so and −0 elsewhere, and
//! x + (−0) = x for every x.

use super::binary::zip;
use super::inputs;
use crate::backend::spec::{BinaryOp, UnaryOp};
use crate::error::{shape_err, Error, Result};
use crate::{DType, Shape, Tensor, Var};

/// The shape `cond`, `a` and `b` broadcast to, or an error naming all three.
fn where_shape(op: &'static str, c: &Shape, a: &Shape, b: &Shape) -> Result<Shape> {
    Shape::broadcast(op, c, a)
        .and_then(|s| Shape::broadcast(op, &s, b))
        .map_err(|_| Error::Shape { op, msg: format!("condition {c}, a {a} and b {b} do not broadcast together") })
}

/// Checks that a mask of shape `m` broadcasts to `x` (masked_fill keeps x's shape).
fn fill_shape(op: &'static str, m: &Shape, x: &Shape) -> Result<()> {
    if !m.broadcasts_to(x) {
        return shape_err(op, format!("mask {m} does not broadcast to the tensor's shape {x}"));
    }
    Ok(())
}

/// The condition `cond` as a 0/1 mask (1 where nonzero) in `dtype` (a compute dtype).
fn mask_of(op: &'static str, cond: &Tensor, dtype: DType) -> Result<Tensor> {
    // bf16 and f16 widen to f32 exactly (and keep their zeros); a mask of 0s and 1s converts exactly.
    let c = if cond.dtype().is_compute() { cond.clone() } else { cond.try_to_dtype(DType::F32)? };
    let m = super::unary::map(op, &c, UnaryOp::NonZero)?;
    if m.dtype() == dtype {
        Ok(m)
    } else {
        m.try_to_dtype(dtype)
    }
}

/// `a` where the 0/1 mask `m` (of their dtype) is 1, else `b`, all three broadcast together.
fn select(op: &'static str, m: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let not = super::unary::map(op, m, UnaryOp::Affine(-1.0, 1.0))?;
    let pa = zip(op, a, m, BinaryOp::Select)?;
    let pb = zip(op, b, &not, BinaryOp::Select)?;
    zip(op, &pa, &pb, BinaryOp::Add)
}

/// [`select`] recorded as `op`: the VJP selects the cotangent the same way (zeros elsewhere), with
/// this function again, so every order of derivative is a selection.
fn select_var(op: &'static str, m: &Tensor, a: &Var, b: &Var) -> Result<Var> {
    let y = select(op, m, a.value(), b.value())?;
    let m = m.clone();
    Var::record(op, y, &[a, b], move |x, _, g| {
        let [a, b] = inputs(op, x)?;
        let zero = Var::constant(Tensor::full_on(0.0, (), g.dtype(), g.value().device())?);
        Ok(vec![
            if a.is_tracked() { Some(select_var(op, &m, g, &zero)?.sum_to(a.shape())?) } else { None },
            if b.is_tracked() { Some(select_var(op, &m, &zero, g)?.sum_to(b.shape())?) } else { None },
        ])
    })
}

impl Tensor {
    /// max(a, b) element-wise, broadcasting. A NaN in either operand gives NaN; of two equal values
    /// (+0 and −0 included) the result is `a`'s.
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        zip("maximum", self, other, BinaryOp::Max)
    }

    /// min(a, b) element-wise, broadcasting. A NaN in either operand gives NaN; of two equal values
    /// (+0 and −0 included) the result is `a`'s.
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        zip("minimum", self, other, BinaryOp::Min)
    }

    /// `a` where `cond` is true (nonzero), else `b`; `cond`, `a` and `b` broadcast together (see the
    /// [module docs](self) for what a condition may be). `a` and `b` share one compute dtype. Exact for
    /// every value (an ∞ or NaN in the branch not taken never leaks into the result).
    pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        super::same_dtype_t("where", a, b)?;
        where_shape("where", cond.shape(), a.shape(), b.shape())?;
        select("where", &mask_of("where", cond, a.dtype())?, a, b)
    }

    /// `value` where `mask` is true (nonzero), else the tensor's own element; `mask` broadcasts to
    /// the tensor's shape, which the result keeps. `value` is rounded to the dtype once (±∞ and NaN
    /// are allowed: `masked_fill(mask, f64::NEG_INFINITY)` before a softmax masks logits out).
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        super::compute("masked_fill", self)?;
        fill_shape("masked_fill", mask.shape(), self.shape())?;
        let v = Tensor::full_on(value, (), self.dtype(), self.device())?;
        select("masked_fill", &mask_of("masked_fill", mask, self.dtype())?, &v, self)
    }

    /// The index of the largest element along `axis` (negative counts from the end), for every
    /// position of the other axes, in row-major order of the shape with `axis` removed: for logits
    /// `[N, C]`, `argmax(-1)` gives N class labels, as [`Var::cross_entropy`] takes them.
    ///
    /// Ties resolve to the first (lowest) index, +0 and −0 counting as equal. NaN counts as larger than
    /// every number, as in [`Tensor::max`]: the first NaN along the axis wins. Not differentiable (the
    /// result is integers); any dtype, on any device (a GPU tensor is downloaded first). An empty axis
    /// is an error.
    pub fn argmax(&self, axis: isize) -> Result<Vec<usize>> {
        let a = self.shape().axis("argmax", axis)?;
        let v = super::view(self.shape(), a);
        if v.n == 0 {
            return shape_err("argmax", format!("argmax over the empty axis {a} of shape {}", self.shape()));
        }
        let x = self.try_to_vec_f64()?;
        let mut out = crate::backend::cpu::pool::filled("argmax", v.outer.saturating_mul(v.inner), 0usize)?;
        for (p, slot) in out.iter_mut().enumerate() {
            let (o, i) = (p / v.inner, p % v.inner);
            // Row p's elements along the axis, j ascending.
            let mut row = x.iter().skip(o * v.n * v.inner + i).step_by(v.inner).take(v.n);
            let Some(&first) = row.next() else {
                return shape_err("argmax", format!("the values of shape {} are fewer than it holds", self.shape()));
            };
            let (mut best, mut top) = (0, first);
            for (j, &e) in row.enumerate() {
                if top.is_nan() {
                    break;
                }
                if e > top || e.is_nan() {
                    (best, top) = (j + 1, e);
                }
            }
            *slot = best;
        }
        Ok(out)
    }
}

impl Var {
    /// max(a, b) element-wise, broadcasting (values as [`Tensor::maximum`]). The cotangent goes to the
    /// larger operand through a constant 0/1 mask: to `b` where b > a, to `a` elsewhere, so a tie
    /// (+0 and −0 included) sends all of it to `a`, and so does a NaN in either operand.
    pub fn maximum(&self, other: &Var) -> Result<Var> {
        self.extremum("maximum", other, BinaryOp::Max)
    }

    /// min(a, b) element-wise, broadcasting (values as [`Tensor::minimum`]). The cotangent goes to the
    /// smaller operand through a constant 0/1 mask: to `b` where b < a, to `a` elsewhere, so a tie
    /// (+0 and −0 included) sends all of it to `a`, and so does a NaN in either operand.
    pub fn minimum(&self, other: &Var) -> Result<Var> {
        self.extremum("minimum", other, BinaryOp::Min)
    }

    /// [`Var::maximum`] or [`Var::minimum`] (`f` is `Max` or `Min`) as op `op`.
    fn extremum(&self, op: &'static str, other: &Var, f: BinaryOp) -> Result<Var> {
        let y = zip(op, self.value(), other.value(), f)?;
        Var::record(op, y, &[self, other], move |x, _, g| {
            let [a, b] = inputs(op, x)?;
            // 1 where the result is b's: b − a > 0 (maximum) or a − b > 0 (minimum), which for
            // non-NaN operands is exactly b > a (b < a): a difference of distinct floats is never 0.
            let d = if f == BinaryOp::Max { b.value().sub(a.value())? } else { a.value().sub(b.value())? };
            let to_b = super::unary::map(op, &d, UnaryOp::Step)?;
            let zero = Var::constant(Tensor::full_on(0.0, (), g.dtype(), g.value().device())?);
            Ok(vec![
                if a.is_tracked() { Some(select_var(op, &to_b, &zero, g)?.sum_to(a.shape())?) } else { None },
                if b.is_tracked() { Some(select_var(op, &to_b, g, &zero)?.sum_to(b.shape())?) } else { None },
            ])
        })
    }

    /// `a` where the constant `cond` is true (nonzero), else `b`; `cond`, `a` and `b` broadcast
    /// together (values as [`Tensor::where_`]). The cotangent flows to `a` where `cond` is true and to
    /// `b` elsewhere (each summed back over its broadcast dimensions); `cond` gets none.
    pub fn where_(cond: &Tensor, a: &Var, b: &Var) -> Result<Var> {
        super::same_dtype("where", a, b)?;
        where_shape("where", cond.shape(), a.shape(), b.shape())?;
        select_var("where", &mask_of("where", cond, a.dtype())?, a, b)
    }

    /// `value` where the constant `mask` is true (nonzero), else the variable's own element (values as
    /// [`Tensor::masked_fill`]); the cotangent flows through the elements that are kept and is zero
    /// where the mask filled.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Var> {
        super::same_dtypes("masked_fill", &[self])?;
        fill_shape("masked_fill", mask.shape(), self.shape())?;
        let v = Var::constant(Tensor::full_on(value, (), self.dtype(), self.value().device())?);
        select_var("masked_fill", &mask_of("masked_fill", mask, self.dtype())?, &v, self)
    }
}
