//! Reductions: sum, mean, max over axes, logsumexp.
//!
//! Each kernel reduces in an order fixed by the shape (see `backend::cpu::sum_axis`). The VJP of a sum
//! broadcasts the cotangent back; the VJP of max routes it to the first maximum through a constant
//! one-hot mask; the VJP of logsumexp multiplies by softmax, written as exp(x − y).

use crate::backend::cpu;
use crate::backend::cuda::ops as cuda;
use crate::dtype::with_float;
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

/// Sum of `x` over `axes` (sorted), keeping them as size-1 dimensions.
pub(crate) fn sum_keepdim(op: &'static str, x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    if x.is_cuda() {
        let mut dims = x.dims().to_vec();
        let mut data = x.clone();
        for &a in axes.iter().rev() {
            let (o, n, i) = Shape::new(dims.clone()).split_at_axis(a);
            data = cuda::sum_axis(&data, o, n, i)?;
            dims[a] = 1;
        }
        return data.reshape(dims);
    }
    with_float!(op, x.dtype(), T => {
        let mut dims = x.dims().to_vec();
        let mut data = x.as_slice::<T>()?.to_vec();
        for &a in axes.iter().rev() {
            let (o, n, i) = Shape::new(dims.clone()).split_at_axis(a);
            data = cpu::sum_axis(&data, o, n, i);
            dims[a] = 1;
        }
        Tensor::from_vec(data, dims)
    })
}

impl Var {
    /// Sum over `axes` (negative counts from the end); `keepdim` keeps them as size-1 dimensions.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Var> {
        let ax = resolve_axes("sum", self.shape(), axes)?;
        let y = sum_keepdim("sum", self.value(), &ax)?.reshape(reduced_shape(self.shape(), &ax, keepdim))?;
        let keep = reduced_shape(self.shape(), &ax, true);
        Var::record("sum", y, &[self], move |x, _, g| Ok(vec![Some(g.reshape(keep.clone())?.broadcast_to(x[0].shape())?)]))
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
        let n: usize = ax.iter().map(|&a| self.dims()[a]).product();
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
        let (o, n, i) = self.shape().split_at_axis(a);
        if n == 0 {
            return shape_err("max", format!("max over an empty axis {a} of shape {}", self.shape()));
        }
        let keep = reduced_shape(self.shape(), &[a], true);
        let (y, onehot) = if self.value().is_cuda() {
            let (vals, mask) = cuda::max_axis(self.value(), o, n, i)?;
            (vals.reshape(reduced_shape(self.shape(), &[a], keepdim))?, mask)
        } else {
            with_float!("max", self.dtype(), T => {
            let (vals, idx) = cpu::max_axis(self.value().as_slice::<T>()?, o, n, i);
            let mut hot = vec![0 as T; o * n * i];
            for (p, &j) in idx.iter().enumerate() {
                hot[((p / i) * n + j) * i + p % i] = 1.0;
            }
            (Tensor::from_vec(vals, reduced_shape(self.shape(), &[a], keepdim))?, Tensor::from_vec(hot, self.shape().clone())?)
            })
        };
        let mask = Var::constant(onehot);
        Var::record("max", y, &[self], move |x, _, g| Ok(vec![Some(g.reshape(keep.clone())?.broadcast_to(x[0].shape())?.mul(&mask)?)]))
    }

    /// log Σ exp(x) over one axis, computed stably (max-shifted).
    pub fn logsumexp(&self, axis: isize, keepdim: bool) -> Result<Var> {
        let a = self.shape().axis("logsumexp", axis)?;
        let (o, n, i) = self.shape().split_at_axis(a);
        let keep = reduced_shape(self.shape(), &[a], true);
        let y = if self.value().is_cuda() {
            cuda::softmax_axis("logsumexp", self.value(), o, n, i, 2)?.reshape(reduced_shape(self.shape(), &[a], keepdim))?
        } else {
            with_float!("logsumexp", self.dtype(), T => {
                Tensor::from_vec(cpu::softmax_axis(self.value().as_slice::<T>()?, o, n, i, 2), reduced_shape(self.shape(), &[a], keepdim))?
            })
        };
        Var::record("logsumexp", y, &[self], move |x, y, g| {
            let p = x[0].sub(&y.reshape(keep.clone())?)?.exp()?;
            Ok(vec![Some(p.mul(&g.reshape(keep.clone())?)?)])
        })
    }
}
