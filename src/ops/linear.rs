//! Linear data-movement ops through one mechanism.
//!
//! Every op here is a linear map A on the flattened input (reshape, permute, broadcast, narrow,
//! index_select, gather, a dtype or device copy, im2col, average pooling, ...). Its VJP is the adjoint
//! Aᵀ applied to the cotangent, and the VJP of Aᵀ is A again. So each map states only `apply` and
//! `apply_adjoint`, and `linear` records `A` with VJP `Aᵀ` (and `Aᵀ` with VJP `A`): derivatives of every
//! order follow, with no per-op gradient code. Scatter-adds (the adjoints of index_select and gather)
//! accumulate in index order within each output row, parallel only over rows: deterministic.
//!
//! The maps themselves run on tensors (`Tensor::permute`, `Tensor::narrow`, ...), so library code can
//! move data without a tape.

use super::view;
use crate::backend::spec::{broadcast_strides, AxisView};
use crate::backend::Storage;
use crate::error::{invalid, shape_err, Error, Result};
use crate::ops::reduce::sum_keepdim;
use crate::{DType, Device, Shape, Tensor, Var};
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

/// Dimension `axis` (already resolved) of `shape`.
fn dim(op: &'static str, shape: &Shape, axis: usize) -> Result<usize> {
    shape.dims().get(axis).copied().ok_or_else(|| Error::Shape { op, msg: format!("axis {axis} is out of range for shape {shape}") })
}

/// The dimensions of `shape` with `axis` (already resolved) resized to `len`.
fn resized(op: &'static str, shape: &Shape, axis: usize, len: usize) -> Result<Vec<usize>> {
    let mut dims = shape.dims().to_vec();
    match dims.get_mut(axis) {
        Some(d) => *d = len,
        None => return shape_err(op, format!("axis {axis} is out of range for shape {shape}")),
    }
    Ok(dims)
}

/// out[k] = x[Σ k_d·strides[d] + offset] over the row-major indices k of `dims`.
fn strided(op: &'static str, x: &Tensor, dims: &[usize], strides: &[usize], offset: usize) -> Result<Tensor> {
    super::compute(op, x)?;
    Tensor::new(op, x.storage().copy_strided(op, dims, strides, offset)?, dims.to_vec())
}

struct Permute {
    perm: Vec<usize>,
    inverse: Vec<usize>,
}
fn permute_tensor(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let is = x.shape().strides();
    let Some((od, os)) = perm.iter().map(|&p| Some((*x.dims().get(p)?, *is.get(p)?))).collect::<Option<(Vec<usize>, Vec<usize>)>>() else {
        return shape_err("permute", format!("{perm:?} is not a permutation of the axes of {}", x.shape()));
    };
    strided("permute", x, &od, &os, 0)
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
        strided("broadcast_to", x, self.to.dims(), &broadcast_strides(x.dims(), self.to.dims()), 0)
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        // Trailing axes align: the first `lead` axes of `to` are new, the others were stretched where `from` has 1.
        let lead = self.to.rank() - self.from.rank();
        let to_rest = self.to.dims().iter().skip(lead);
        let stretched = to_rest.zip(self.from.dims()).enumerate().filter(|&(_, (&t, &f))| f == 1 && t != 1).map(|(a, _)| lead + a);
        let axes: Vec<usize> = (0..lead).chain(stretched).collect();
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
impl LinearMap for Narrow {
    fn names(&self) -> (&'static str, &'static str) {
        ("narrow", "pad")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let AxisView { outer, n, inner } = view(&self.full, self.axis);
        let od = resized("narrow", &self.full, self.axis, self.len)?;
        strided("narrow", x, &[outer, self.len, inner], &[n * inner, inner, 1], self.start * inner)?.reshape(od)
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        super::compute("pad", g)?;
        let AxisView { outer, n, inner } = view(&self.full, self.axis);
        let s =
            g.storage().place_strided("pad", outer * n * inner, &[outer, self.len, inner], &[n * inner, inner, 1], self.start * inner)?;
        Tensor::new("pad", s, self.full.clone())
    }
}

/// Slices `idx` of `axis` (out[.., j, ..] = x[.., idx[j], ..]); the adjoint scatter-adds.
struct IndexSelect {
    axis: usize,
    idx: Rc<[usize]>,
    full: Shape,
}
impl LinearMap for IndexSelect {
    fn names(&self) -> (&'static str, &'static str) {
        ("index_select", "index_add")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        super::compute("index_select", x)?;
        let od = resized("index_select", &self.full, self.axis, self.idx.len())?;
        Tensor::new("index_select", x.storage().index_select("index_select", &self.idx, view(&self.full, self.axis))?, od)
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        super::compute("index_add", g)?;
        Tensor::new("index_add", g.storage().index_add("index_add", &self.idx, view(&self.full, self.axis))?, self.full.clone())
    }
}

/// out[o, j, i] = x[o, idx[o, j, i], i] along `axis` (idx has the output's shape); the adjoint scatter-adds.
struct Gather {
    axis: usize,
    idx: Rc<[usize]>,
    out: Shape,
    full: Shape,
}
impl LinearMap for Gather {
    fn names(&self) -> (&'static str, &'static str) {
        ("gather", "scatter_add")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        super::compute("gather", x)?;
        let m = dim("gather", &self.out, self.axis)?;
        Tensor::new("gather", x.storage().gather("gather", &self.idx, view(&self.full, self.axis), m)?, self.out.clone())
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        super::compute("scatter_add", g)?;
        let m = dim("scatter_add", &self.out, self.axis)?;
        Tensor::new("scatter_add", g.storage().scatter_add("scatter_add", &self.idx, view(&self.full, self.axis), m)?, self.full.clone())
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

/// A conversion between dtypes; the adjoint converts the cotangent back (rounding to the source dtype,
/// as the source's own cotangent is stored in its dtype).
struct ToDType {
    from: DType,
    to: DType,
}
impl LinearMap for ToDType {
    fn names(&self) -> (&'static str, &'static str) {
        ("to_dtype", "to_dtype")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.try_to_dtype(self.to)
    }
    fn apply_adjoint(&self, g: &Tensor) -> Result<Tensor> {
        g.try_to_dtype(self.from)
    }
}

/// Checks a permutation of `r` axes and returns its inverse.
fn check_perm(shape: &Shape, perm: &[usize]) -> Result<Vec<usize>> {
    let r = shape.rank();
    let mut seen = vec![false; r];
    // An axis out of range, or one already seen, makes `perm` no permutation.
    if perm.len() != r || perm.iter().any(|&p| seen.get_mut(p).is_none_or(|s| std::mem::replace(s, true))) {
        return shape_err("permute", format!("{perm:?} is not a permutation of the {r} axes of {shape}"));
    }
    let mut inverse = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        if let Some(slot) = inverse.get_mut(p) {
            *slot = i; // p < r: checked above
        }
    }
    Ok(inverse)
}

/// The permutation swapping axes `a` and `b` of `shape`.
fn swap_perm(shape: &Shape, a: isize, b: isize) -> Result<Vec<usize>> {
    let (a, b) = (shape.axis("transpose", a)?, shape.axis("transpose", b)?);
    let mut perm: Vec<usize> = (0..shape.rank()).collect();
    perm.swap(a, b);
    Ok(perm)
}

/// Checks `start..start + len` against `axis` of `shape`; returns the resolved axis and its size.
fn check_narrow(shape: &Shape, axis: isize, start: usize, len: usize) -> Result<(usize, usize)> {
    let a = shape.axis("narrow", axis)?;
    let n = dim("narrow", shape, a)?;
    if start.checked_add(len).is_none_or(|e| e > n) {
        return shape_err(
            "narrow",
            format!("range {start}..{} is out of bounds for axis {a} of size {n} in shape {shape}", start.saturating_add(len)),
        );
    }
    Ok((a, n))
}

/// Checks `idx` against `axis` of `shape`; returns the resolved axis.
fn check_index_select(shape: &Shape, axis: isize, idx: &[usize]) -> Result<usize> {
    let a = shape.axis("index_select", axis)?;
    let n = dim("index_select", shape, a)?;
    if let Some(&bad) = idx.iter().find(|&&k| k >= n) {
        return Err(Error::Shape {
            op: "index_select",
            msg: format!("index {bad} is out of range for axis {a} of size {n} in shape {shape}"),
        });
    }
    Ok(a)
}

/// Checks a gather's index against `shape`; returns the resolved axis and the output shape.
fn check_gather(shape: &Shape, axis: isize, idx: &[usize], idx_shape: Shape) -> Result<(usize, Shape)> {
    let a = shape.axis("gather", axis)?;
    let out = idx_shape;
    let ok = out.rank() == shape.rank() && out.dims().iter().zip(shape.dims()).enumerate().all(|(k, (x, y))| k == a || x == y);
    if !ok || Some(idx.len()) != out.checked_numel() {
        return shape_err("gather", format!("index of shape {out} ({} values) does not match input {shape} outside axis {a}", idx.len()));
    }
    let n = dim("gather", shape, a)?;
    if let Some(&bad) = idx.iter().find(|&&k| k >= n) {
        return shape_err("gather", format!("index {bad} is out of range for axis {a} of size {n} in shape {shape}"));
    }
    Ok((a, out))
}

/// Checks the operands of a concatenation along `axis`; returns the resolved axis and output shape.
fn check_concat<'a>(shapes: impl Iterator<Item = &'a Shape> + Clone, axis: isize) -> Result<(usize, Shape)> {
    let Some(first) = shapes.clone().next() else { return invalid("concat", "no tensors given") };
    let a = first.axis("concat", axis)?;
    for s in shapes.clone() {
        let ok = s.rank() == first.rank() && s.dims().iter().zip(first.dims()).enumerate().all(|(k, (x, y))| k == a || x == y);
        if !ok {
            let all: Vec<String> = shapes.map(|v| v.to_string()).collect();
            return shape_err("concat", format!("shapes {} differ outside axis {a}", all.join(", ")));
        }
    }
    let len = shapes.map(|s| dim("concat", s, a)).sum::<Result<usize>>()?;
    Ok((a, Shape::new(resized("concat", first, a, len)?)))
}

/// The concatenation of `parts` (checked) along `a` into `out`.
fn concat_tensors(parts: &[&Tensor], a: usize, out: Shape) -> Result<Tensor> {
    if let Some(first) = parts.first() {
        for p in parts {
            super::same_dtype_t("concat", first, p)?;
        }
    }
    let AxisView { outer, inner, .. } = view(&out, a);
    let storages: Vec<&Storage> = parts.iter().map(|p| p.storage()).collect();
    Tensor::new("concat", Storage::concat("concat", &storages, outer, inner)?, out)
}

impl Tensor {
    /// Reorders the axes: output axis k is input axis `perm[k]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        check_perm(self.shape(), perm)?;
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        permute_tensor(self, perm)
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        self.permute(&swap_perm(self.shape(), a, b)?)
    }

    /// Broadcasts to `shape` (NumPy rules).
    pub fn broadcast_to(&self, shape: &Shape) -> Result<Tensor> {
        if !self.shape().broadcasts_to(shape) {
            return shape_err("broadcast_to", format!("cannot broadcast {} to {shape}", self.shape()));
        }
        if self.shape() == shape {
            return Ok(self.clone());
        }
        Broadcast { from: self.shape().clone(), to: shape.clone() }.apply(self)
    }

    /// Sums broadcast dimensions away so the result has `shape` (the adjoint of a broadcast).
    pub fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if !shape.broadcasts_to(self.shape()) {
            return shape_err("sum_to", format!("{shape} does not broadcast to {}, so it cannot be summed to it", self.shape()));
        }
        if self.shape() == shape {
            return Ok(self.clone());
        }
        Broadcast { from: shape.clone(), to: self.shape().clone() }.apply_adjoint(self)
    }

    /// Elements `start .. start + len` of `axis`.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let (a, n) = check_narrow(self.shape(), axis, start, len)?;
        if start == 0 && len == n {
            return Ok(self.clone());
        }
        Narrow { axis: a, start, len, full: self.shape().clone() }.apply(self)
    }

    /// Concatenates along `axis`; all other dimensions must agree.
    pub fn concat(parts: &[&Tensor], axis: isize) -> Result<Tensor> {
        let (a, out) = check_concat(parts.iter().map(|p| p.shape()), axis)?;
        concat_tensors(parts, a, out)
    }

    /// Selects the slices `idx` along `axis` (repeats allowed).
    pub fn index_select(&self, axis: isize, idx: &[usize]) -> Result<Tensor> {
        let a = check_index_select(self.shape(), axis, idx)?;
        IndexSelect { axis: a, idx: idx.into(), full: self.shape().clone() }.apply(self)
    }

    /// out[.., j, ..] = x[.., idx[.., j, ..], ..] along `axis` (see [`Var::gather`]).
    pub fn gather(&self, axis: isize, idx: &[usize], idx_shape: impl Into<Shape>) -> Result<Tensor> {
        let (a, out) = check_gather(self.shape(), axis, idx, idx_shape.into())?;
        Gather { axis: a, idx: idx.into(), out, full: self.shape().clone() }.apply(self)
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

    /// The same values converted to `dtype` (round to nearest even when narrowing); differentiable:
    /// the VJP converts the cotangent back to this variable's dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Var> {
        let from = self.dtype();
        if from == dtype {
            return Ok(self.clone());
        }
        linear(self, Rc::new(ToDType { from, to: dtype }), false)
    }

    /// The same elements under a new shape with the same element count.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Var> {
        let to = shape.into();
        if to.checked_numel() != Some(self.value().numel()) {
            return shape_err("reshape", format!("cannot reshape {} ({} elements) to {to}", self.shape(), self.value().numel()));
        }
        if &to == self.shape() {
            return Ok(self.clone());
        }
        linear(self, Rc::new(Reshape { from: self.shape().clone(), to }), false)
    }

    /// Reorders the axes: output axis k is input axis `perm[k]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let inverse = check_perm(self.shape(), perm)?;
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        linear(self, Rc::new(Permute { perm: perm.to_vec(), inverse }), false)
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Var> {
        let perm = swap_perm(self.shape(), a, b)?;
        super::same_dtypes("transpose", &[self])?;
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
        let (a, n) = check_narrow(self.shape(), axis, start, len)?;
        if start == 0 && len == n {
            return Ok(self.clone());
        }
        linear(self, Rc::new(Narrow { axis: a, start, len, full: self.shape().clone() }), false)
    }

    /// Concatenates along `axis`; all other dimensions must agree.
    pub fn concat(vars: &[&Var], axis: isize) -> Result<Var> {
        let (a, out) = check_concat(vars.iter().map(|v| v.shape()), axis)?;
        let parts: Vec<&Tensor> = vars.iter().map(|v| v.value()).collect();
        let y = concat_tensors(&parts, a, out)?;
        let lens = vars.iter().map(|v| dim("concat", v.shape(), a)).collect::<Result<Vec<usize>>>()?;
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
        let a = check_index_select(self.shape(), axis, idx)?;
        linear(self, Rc::new(IndexSelect { axis: a, idx: idx.into(), full: self.shape().clone() }), false)
    }

    /// out[.., j, ..] = x[.., idx[.., j, ..], ..] along `axis`, where `idx` (row-major, of shape
    /// `idx_shape`) matches x's shape except along `axis`; the VJP scatter-adds (deterministic).
    pub fn gather(&self, axis: isize, idx: &[usize], idx_shape: impl Into<Shape>) -> Result<Var> {
        let (a, out) = check_gather(self.shape(), axis, idx, idx_shape.into())?;
        linear(self, Rc::new(Gather { axis: a, idx: idx.into(), out, full: self.shape().clone() }), false)
    }
}
