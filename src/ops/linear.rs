//! Linear data-movement ops through one mechanism.
//!
//! Every op here is a linear map A on the flattened input (reshape, permute, broadcast, narrow,
//! index_select, gather, im2col, average pooling, ...). Its VJP is the adjoint Aᵀ applied to the
//! cotangent, and the VJP of Aᵀ is A again. So each map states only `apply` and `apply_adjoint`, and
//! `linear` records `A` with VJP `Aᵀ` (and `Aᵀ` with VJP `A`): derivatives of every order follow, with
//! no per-op gradient code. Scatter-adds (the adjoints of index_select and gather) accumulate in index
//! order within each output row, parallel only over rows: deterministic.

use crate::backend::cpu;
use crate::backend::cuda::ops as cuda;
use crate::dtype::with_float;
use crate::error::{invalid, shape_err, Error, Result};
use crate::ops::reduce::sum_keepdim;
use crate::{Device, Shape, Tensor, Var};
use rayon::prelude::*;
use std::rc::Rc;

/// A linear map and its adjoint on tensors.
pub(crate) trait LinearMap {
    /// The op's name (and its adjoint's, for the tape and errors).
    fn names(&self) -> (&'static str, &'static str);
    /// A·x.
    fn apply(&self, x: &Tensor) -> Result<Tensor>;
    /// Aᵀ·g.
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor>;
}

/// Records A·x (or Aᵀ·x when `adjoint`), with VJP the other one.
pub(crate) fn linear(x: &Var, map: Rc<dyn LinearMap>, adjoint: bool) -> Result<Var> {
    let (name, adj_name) = map.names();
    let y = if adjoint { map.apply_adjoint(x.value())? } else { map.apply(x.value())? };
    Var::record(if adjoint { adj_name } else { name }, y, &[x], move |_, _, g| Ok(vec![Some(linear(g, map.clone(), !adjoint)?)]))
}

struct Reshape {
    from: Shape,
    to: Shape,
}
impl LinearMap for Reshape {
    fn names(&self) -> (&'static str, &'static str) {
        ("reshape", "reshape")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.reshape(self.to.clone())
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        g.reshape(self.from.clone())
    }
}

struct Permute {
    perm: Vec<usize>,
    inverse: Vec<usize>,
}
fn permute_tensor(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    if x.is_cuda() {
        return cuda::permute(x, perm);
    }
    let od: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
    with_float!("permute", x.dtype(), T => Tensor::from_vec(cpu::permute(x.as_slice::<T>()?, x.dims(), perm), od))
}
impl LinearMap for Permute {
    fn names(&self) -> (&'static str, &'static str) {
        ("permute", "permute")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        permute_tensor(x, &self.perm)
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        permute_tensor(g, &self.inverse)
    }
}

/// Broadcast from `from` to `to`; the adjoint sums back (`sum_to`).
struct Broadcast {
    from: Shape,
    to: Shape,
}
impl LinearMap for Broadcast {
    fn names(&self) -> (&'static str, &'static str) {
        ("broadcast_to", "sum_to")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.is_cuda() {
            return cuda::broadcast_to(x, &self.to);
        }
        with_float!("broadcast_to", x.dtype(), T => {
            let v = x.as_slice::<T>()?;
            Tensor::from_vec(cpu::zip(v, x.dims(), v, x.dims(), self.to.dims(), |a: T, _| a), self.to.clone())
        })
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        let (r, fr) = (self.to.rank(), self.from.rank());
        let axes: Vec<usize> = (0..r).filter(|&a| a < r - fr || (self.from.dims()[a + fr - r] == 1 && self.to.dims()[a] != 1)).collect();
        sum_keepdim("sum_to", g, &axes)?.reshape(self.from.clone())
    }
}

/// Elements [start, start + len) of `axis`; the adjoint zero-pads back.
struct Narrow {
    axis: usize,
    start: usize,
    len: usize,
    full: Shape,
}
impl Narrow {
    fn copy(&self, x: &Tensor, to_narrow: bool) -> Result<Tensor> {
        let (o, n, i) = self.full.split_at_axis(self.axis);
        let mut od = self.full.dims().to_vec();
        if to_narrow {
            od[self.axis] = self.len;
        }
        if x.is_cuda() {
            return cuda::narrow_or_pad(x, o, n, i, self.start, self.len, to_narrow, od);
        }
        with_float!("narrow", x.dtype(), T => {
            let src = x.as_slice::<T>()?;
            let mut out = vec![0.0 as T; od.iter().product()];
            let (s, l) = (self.start, self.len);
            if i * l > 0 {
                if to_narrow {
                    out.par_chunks_mut(l * i).enumerate().for_each(|(oo, dst)| dst.copy_from_slice(&src[(oo * n + s) * i..(oo * n + s + l) * i]));
                } else {
                    out.par_chunks_mut(n * i).enumerate().for_each(|(oo, dst)| dst[s * i..(s + l) * i].copy_from_slice(&src[oo * l * i..(oo + 1) * l * i]));
                }
            }
            let _ = o;
            Tensor::from_vec(out, od)
        })
    }
}
impl LinearMap for Narrow {
    fn names(&self) -> (&'static str, &'static str) {
        ("narrow", "pad")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.copy(x, true)
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        self.copy(g, false)
    }
}

/// Slices `idx` of `axis` (out[.., j, ..] = x[.., idx[j], ..]); the adjoint scatter-adds.
struct IndexSelect {
    axis: usize,
    idx: std::sync::Arc<[usize]>,
    full: Shape,
}
impl LinearMap for IndexSelect {
    fn names(&self) -> (&'static str, &'static str) {
        ("index_select", "index_add")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (_, n, i) = self.full.split_at_axis(self.axis);
        let m = self.idx.len();
        let mut od = self.full.dims().to_vec();
        od[self.axis] = m;
        if x.is_cuda() {
            let o = self.full.numel() / (n * i).max(1);
            return cuda::index_op("index_select", "index_select", x, &self.idx, o, n, m, i, Shape::new(od));
        }
        with_float!("index_select", x.dtype(), T => {
            let src = x.as_slice::<T>()?;
            let mut out = vec![0.0 as T; od.iter().product()];
            if m * i > 0 {
                out.par_chunks_mut(m * i).enumerate().for_each(|(o, dst)| {
                    for (j, &k) in self.idx.iter().enumerate() {
                        dst[j * i..(j + 1) * i].copy_from_slice(&src[(o * n + k) * i..(o * n + k + 1) * i]);
                    }
                });
            }
            Tensor::from_vec(out, od)
        })
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        let (_, n, i) = self.full.split_at_axis(self.axis);
        let m = self.idx.len();
        if g.is_cuda() {
            let o = self.full.numel() / (n * i).max(1);
            return cuda::index_add(g, &self.idx, o, n, i, self.full.clone());
        }
        with_float!("index_add", g.dtype(), T => {
            let src = g.as_slice::<T>()?;
            let mut out = vec![0.0 as T; self.full.numel()];
            if n * i > 0 {
                out.par_chunks_mut(n * i).enumerate().for_each(|(o, dst)| {
                    for (j, &k) in self.idx.iter().enumerate() {
                        for (d, &s) in dst[k * i..(k + 1) * i].iter_mut().zip(&src[(o * m + j) * i..(o * m + j + 1) * i]) {
                            *d += s;
                        }
                    }
                });
            }
            Tensor::from_vec(out, self.full.clone())
        })
    }
}

/// out[o, j, i] = x[o, idx[o, j, i], i] along `axis` (idx has the output's shape); the adjoint scatter-adds.
struct Gather {
    axis: usize,
    idx: std::sync::Arc<[usize]>,
    out: Shape,
    full: Shape,
}
impl LinearMap for Gather {
    fn names(&self) -> (&'static str, &'static str) {
        ("gather", "scatter_add")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (_, n, i) = self.full.split_at_axis(self.axis);
        let (o, m, _) = self.out.split_at_axis(self.axis);
        if x.is_cuda() {
            return cuda::index_op("gather", "gather", x, &self.idx, o, n, m, i, self.out.clone());
        }
        with_float!("gather", x.dtype(), T => {
            let src = x.as_slice::<T>()?;
            let mut out = vec![0.0 as T; self.out.numel()];
            if m * i > 0 {
                cpu::for_chunks(&mut out, m * i, self.out.numel(), |o, dst| {
                    for p in 0..m * i {
                        dst[p] = src[(o * n + self.idx[o * m * i + p]) * i + p % i];
                    }
                });
            }
            Tensor::from_vec(out, self.out.clone())
        })
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        let (_, n, i) = self.full.split_at_axis(self.axis);
        let (o, m, _) = self.out.split_at_axis(self.axis);
        if g.is_cuda() {
            return cuda::index_op("scatter_add", "scatter_add", g, &self.idx, o, n, m, i, self.full.clone());
        }
        with_float!("scatter_add", g.dtype(), T => {
            let src = g.as_slice::<T>()?;
            let mut out = vec![0.0 as T; self.full.numel()];
            if n * i > 0 {
                cpu::for_chunks(&mut out, n * i, self.full.numel(), |o, dst| {
                    for p in 0..m * i {
                        dst[self.idx[o * m * i + p] * i + p % i] += src[o * m * i + p];
                    }
                });
            }
            Tensor::from_vec(out, self.full.clone())
        })
    }
}

/// A copy between devices; the adjoint copies back.
struct ToDevice {
    from: Device,
    to: Device,
}
impl LinearMap for ToDevice {
    fn names(&self) -> (&'static str, &'static str) {
        ("to_device", "to_device")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.to_device(self.to)
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        g.to_device(self.from)
    }
}

impl Var {
    /// The same values on `device` (differentiable: the VJP copies the cotangent back).
    pub fn to_device(&self, device: Device) -> Result<Var> {
        let from = self.value().device();
        if from == device {
            return Ok(self.clone());
        }
        linear(self, Rc::new(ToDevice { from, to: device }), false)
    }

    /// The same elements under a new shape with the same element count.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Var> {
        let to = shape.into();
        if to.numel() != self.value().numel() {
            return shape_err("reshape", format!("cannot reshape {} ({} elements) to {to}", self.shape(), self.value().numel()));
        }
        if &to == self.shape() {
            return Ok(self.clone());
        }
        linear(self, Rc::new(Reshape { from: self.shape().clone(), to }), false)
    }

    /// Reorders the axes: output axis k is input axis `perm[k]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let r = self.shape().rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return shape_err("permute", format!("{perm:?} is not a permutation of the {r} axes of {}", self.shape()));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        let mut inverse = vec![0; r];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        linear(self, Rc::new(Permute { perm: perm.to_vec(), inverse }), false)
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Var> {
        let (a, b) = (self.shape().axis("transpose", a)?, self.shape().axis("transpose", b)?);
        super::same_dtypes("transpose", &[self])?;
        let mut perm: Vec<usize> = (0..self.shape().rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Broadcasts to `shape` (NumPy rules); the VJP sums back.
    pub fn broadcast_to(&self, shape: &Shape) -> Result<Var> {
        if !self.shape().broadcasts_to(shape) {
            return shape_err("broadcast_to", format!("cannot broadcast {} to {shape}", self.shape()));
        }
        if self.shape() == shape {
            return Ok(self.clone());
        }
        linear(self, Rc::new(Broadcast { from: self.shape().clone(), to: shape.clone() }), false)
    }

    /// Sums broadcast dimensions away so the result has `shape` (the adjoint of [`Var::broadcast_to`]).
    pub fn sum_to(&self, shape: &Shape) -> Result<Var> {
        if !shape.broadcasts_to(self.shape()) {
            return shape_err(
                "sum_to",
                format!("{shape} does not broadcast to {}, so {} cannot be summed to it", self.shape(), self.shape()),
            );
        }
        if self.shape() == shape {
            return Ok(self.clone());
        }
        linear(self, Rc::new(Broadcast { from: shape.clone(), to: self.shape().clone() }), true)
    }

    /// Elements `start .. start + len` of `axis`.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Var> {
        let a = self.shape().axis("narrow", axis)?;
        let n = self.dims()[a];
        if start.checked_add(len).is_none_or(|e| e > n) {
            return shape_err(
                "narrow",
                format!("range {start}..{} is out of bounds for axis {a} of size {n} in shape {}", start.saturating_add(len), self.shape()),
            );
        }
        if start == 0 && len == n {
            return Ok(self.clone());
        }
        linear(self, Rc::new(Narrow { axis: a, start, len, full: self.shape().clone() }), false)
    }

    /// Concatenates along `axis`; all other dimensions must agree.
    pub fn concat(vars: &[&Var], axis: isize) -> Result<Var> {
        let Some(first) = vars.first() else { return invalid("concat", "no tensors given") };
        let a = first.shape().axis("concat", axis)?;
        for v in vars {
            super::same_dtype("concat", first, v)?;
            let ok = v.shape().rank() == first.shape().rank()
                && v.dims().iter().zip(first.dims()).enumerate().all(|(k, (x, y))| k == a || x == y);
            if !ok {
                let shapes: Vec<String> = vars.iter().map(|v| v.shape().to_string()).collect();
                return shape_err("concat", format!("shapes {} differ outside axis {a}", shapes.join(", ")));
            }
        }
        let mut od = first.dims().to_vec();
        od[a] = vars.iter().map(|v| v.dims()[a]).sum();
        let out = Shape::new(od);
        let (o, n, i) = out.split_at_axis(a);
        let y = if first.value().is_cuda() {
            let parts: Vec<&Tensor> = vars.iter().map(|v| v.value()).collect();
            cuda::concat(&parts, o, i, out)?
        } else {
            with_float!("concat", first.dtype(), T => {
            let mut data = vec![0.0 as T; out.numel()];
            let mut off = 0;
            for v in vars {
                let src = v.value().as_slice::<T>()?;
                let l = v.dims()[a];
                for oo in 0..o {
                    data[(oo * n + off) * i..(oo * n + off + l) * i].copy_from_slice(&src[oo * l * i..(oo + 1) * l * i]);
                }
                off += l;
            }
            Tensor::from_vec(data, out)?
            })
        };
        let lens: Vec<usize> = vars.iter().map(|v| v.dims()[a]).collect();
        Var::record("concat", y, vars, move |_, _, g| {
            let mut off = 0;
            let mut gs = Vec::with_capacity(lens.len());
            for &l in &lens {
                gs.push(Some(g.narrow(a as isize, off, l)?));
                off += l;
            }
            Ok(gs)
        })
    }

    /// Selects the slices `idx` along `axis` (repeats allowed); the VJP scatter-adds (deterministic).
    pub fn index_select(&self, axis: isize, idx: &[usize]) -> Result<Var> {
        let a = self.shape().axis("index_select", axis)?;
        let n = self.dims()[a];
        if let Some(&bad) = idx.iter().find(|&&k| k >= n) {
            return Err(Error::Shape {
                op: "index_select",
                msg: format!("index {bad} is out of range for axis {a} of size {n} in shape {}", self.shape()),
            });
        }
        linear(self, Rc::new(IndexSelect { axis: a, idx: idx.into(), full: self.shape().clone() }), false)
    }

    /// out[.., j, ..] = x[.., idx[.., j, ..], ..] along `axis`, where `idx` (row-major, of shape
    /// `idx_shape`) matches x's shape except along `axis`; the VJP scatter-adds (deterministic).
    pub fn gather(&self, axis: isize, idx: &[usize], idx_shape: impl Into<Shape>) -> Result<Var> {
        let a = self.shape().axis("gather", axis)?;
        let out = idx_shape.into();
        let ok = out.rank() == self.shape().rank() && out.dims().iter().zip(self.dims()).enumerate().all(|(k, (x, y))| k == a || x == y);
        if !ok || idx.len() != out.numel() {
            return shape_err(
                "gather",
                format!("index of shape {out} ({} values) does not match input {} outside axis {a}", idx.len(), self.shape()),
            );
        }
        let n = self.dims()[a];
        if let Some(&bad) = idx.iter().find(|&&k| k >= n) {
            return shape_err("gather", format!("index {bad} is out of range for axis {a} of size {n} in shape {}", self.shape()));
        }
        linear(self, Rc::new(Gather { axis: a, idx: idx.into(), out, full: self.shape().clone() }), false)
    }
}
