//! Reductions: sum, mean, max over axes, logsumexp.
//!
//! Each kernel reduces in an order fixed by the shape (see `backend::cpu::reduce`). The VJP of a sum
//! broadcasts the cotangent back; the VJP of max routes it to the first maximum through a constant
//! one-hot mask; the VJP of logsumexp multiplies by softmax, written as exp(x − y).

use super::{inputs, view};
use crate::backend::spec::SoftmaxMode;
use crate::error::{shape_err, Result};
use crate::{Shape, Tensor, Var};

/// Resolves and sorts a list of axes, rejecting duplicates and out-of-range entries.
pub(crate) fn resolve_axes(op: &'static str, shape: &Shape, axes: &[isize]) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = shape.axis(op, a)?;
        if out.contains(&a) {
            return shape_err(op, format!("axis {a} given twice for shape {shape}"));
        }
        out.push(a);
    }
    out.sort_unstable();
    Ok(out)
}

/// The shape with `axes` set to 1 (keepdim) or removed.
fn reduced_shape(shape: &Shape, axes: &[usize], keepdim: bool) -> Shape {
    let mut d = Vec::new();
    for (i, &n) in shape.dims().iter().enumerate() {
        if !axes.contains(&i) {
            d.push(n);
        } else if keepdim {
            d.push(1);
        }
    }
    Shape::new(d)
}

/// The number of elements a reduction over `axes` (resolved) takes each result from.
fn axes_len(shape: &Shape, axes: &[usize]) -> usize {
    let dims: Vec<usize> = shape.dims().iter().enumerate().filter(|(i, _)| axes.contains(i)).map(|(_, &n)| n).collect();
    crate::shape::numel(&dims)
}

/// Sum of `x` over `axes` (sorted), keeping them as size-1 dimensions.
pub(crate) fn sum_keepdim(op: &'static str, x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    super::compute(op, x)?;
    let mut t = x.clone();
    for &a in axes.iter().rev() {
        let mut dims = t.dims().to_vec();
        let Some(d) = dims.get_mut(a) else {
            return shape_err(op, format!("axis {a} is out of range for shape {}", t.shape()));
        };
        *d = 1;
        let s = t.storage().sum_axis(op, view(t.shape(), a))?;
        t = Tensor::new(op, s, dims)?;
    }
    Ok(t)
}

/// The max of `x` along `a` (kept) and the one-hot mask of the first maximum.
fn max_with_mask(x: &Tensor, a: usize) -> Result<(Tensor, Tensor)> {
    super::compute("max", x)?;
    let v = view(x.shape(), a);
    if v.n == 0 {
        return shape_err("max", format!("max over an empty axis {a} of shape {}", x.shape()));
    }
    let (vals, hot) = x.storage().max_axis("max", v)?;
    Ok((Tensor::new("max", vals, reduced_shape(x.shape(), &[a], true))?, Tensor::new("max", hot, x.shape().clone())?))
}

/// logsumexp of `x` along `a`, kept as a size-1 dimension.
fn logsumexp_keepdim(x: &Tensor, a: usize) -> Result<Tensor> {
    super::compute("logsumexp", x)?;
    let s = x.storage().softmax_axis("logsumexp", view(x.shape(), a), SoftmaxMode::LogSumExp)?;
    Tensor::new("logsumexp", s, reduced_shape(x.shape(), &[a], true))
}

impl Tensor {
    /// Sum over `axes` (negative counts from the end); `keepdim` keeps them as size-1 dimensions.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let ax = resolve_axes("sum", self.shape(), axes)?;
        sum_keepdim("sum", self, &ax)?.reshape(reduced_shape(self.shape(), &ax, keepdim))
    }

    /// Sum of all elements, as a scalar (shape `[]`).
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        super::compute("mean", self)?;
        let ax = resolve_axes("mean", self.shape(), axes)?;
        let n = axes_len(self.shape(), &ax);
        if n == 0 {
            return shape_err("mean", format!("mean over empty axes {axes:?} of shape {}", self.shape()));
        }
        self.sum(axes, keepdim)?.mul_scalar(1.0 / n as f64)
    }

    /// Mean of all elements, as a scalar.
    pub fn mean_all(&self) -> Result<Tensor> {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        self.mean(&axes, false)
    }

    /// Maximum over one axis (NaN wins).
    pub fn max(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        let a = self.shape().axis("max", axis)?;
        max_with_mask(self, a)?.0.reshape(reduced_shape(self.shape(), &[a], keepdim))
    }

    /// log Σ exp(x) over one axis, computed stably (max-shifted).
    pub fn logsumexp(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        let a = self.shape().axis("logsumexp", axis)?;
        logsumexp_keepdim(self, a)?.reshape(reduced_shape(self.shape(), &[a], keepdim))
    }
}

impl Var {
    /// Sum over `axes` (negative counts from the end); `keepdim` keeps them as size-1 dimensions.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Var> {
        let ax = resolve_axes("sum", self.shape(), axes)?;
        let y = self.value().sum(axes, keepdim)?;
        let keep = reduced_shape(self.shape(), &ax, true);
        Var::record("sum", y, &[self], move |x, _, g| {
            let [x] = inputs("sum", x)?;
            Ok(vec![Some(g.reshape(keep.clone())?.broadcast_to(x.shape())?)])
        })
    }

    /// Sum of all elements, as a scalar (shape `[]`).
    pub fn sum_all(&self) -> Result<Var> {
        let axes: Vec<isize> = (0..self.shape().rank() as isize).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Var> {
        super::same_dtypes("mean", &[self])?;
        let ax = resolve_axes("mean", self.shape(), axes)?;
        let n = axes_len(self.shape(), &ax);
        if n == 0 {
            return shape_err("mean", format!("mean over empty axes {axes:?} of shape {}", self.shape()));
        }
        self.sum(axes, keepdim)?.mul_scalar(1.0 / n as f64)
    }

    /// Mean of all elements, as a scalar.
    pub fn mean_all(&self) -> Result<Var> {
        let axes: Vec<isize> = (0..self.shape().rank() as isize).collect();
        self.mean(&axes, false)
    }

    /// Maximum over one axis. The gradient goes to the first maximal element.
    pub fn max(&self, axis: isize, keepdim: bool) -> Result<Var> {
        let a = self.shape().axis("max", axis)?;
        let keep = reduced_shape(self.shape(), &[a], true);
        let (vals, onehot) = max_with_mask(self.value(), a)?;
        let y = vals.reshape(reduced_shape(self.shape(), &[a], keepdim))?;
        let mask = Var::constant(onehot);
        Var::record("max", y, &[self], move |x, _, g| {
            let [x] = inputs("max", x)?;
            Ok(vec![Some(g.reshape(keep.clone())?.broadcast_to(x.shape())?.mul(&mask)?)])
        })
    }

    /// log Σ exp(x) over one axis, computed stably (max-shifted).
    pub fn logsumexp(&self, axis: isize, keepdim: bool) -> Result<Var> {
        let a = self.shape().axis("logsumexp", axis)?;
        let keep = reduced_shape(self.shape(), &[a], true);
        let y = self.value().logsumexp(axis, keepdim)?;
        Var::record("logsumexp", y, &[self], move |x, y, g| {
            let [x] = inputs("logsumexp", x)?;
            let p = x.sub(&y.reshape(keep.clone())?)?.exp()?;
            Ok(vec![Some(p.mul(&g.reshape(keep.clone())?)?)])
        })
    }
}
