//! Shapes, strides and broadcasting.
//!
//! Tensors are contiguous and row-major, so a shape alone fixes the layout; strides are derived.
//! Broadcasting follows NumPy: shapes are aligned on the right, and a dimension of size 1 stretches.

use crate::error::{shape_err, Result};
use std::fmt;

/// The element count of `dims`: 0 when a dimension is 0 (however large the others), else the product,
/// saturating at `usize::MAX` (a count no allocation can satisfy). A plain `product()` overflows on
/// shapes such as `[3, usize::MAX, 0]`.
pub(crate) fn numel(dims: &[usize]) -> usize {
    if dims.contains(&0) {
        return 0;
    }
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)
}

/// The dimensions of a tensor (row-major; the last dimension is contiguous). `[]` is a scalar.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Shape {
        Shape(dims.into())
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// Number of elements (1 for a scalar). A count too large for `usize` saturates to `usize::MAX`
    /// (no buffer can hold that many elements, so constructors and reshapes reject such shapes).
    pub fn numel(&self) -> usize {
        numel(&self.0)
    }
    /// Number of elements, or `None` when the count overflows `usize`.
    pub fn checked_numel(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).or(if self.0.contains(&0) { Some(0) } else { None })
    }
    /// Row-major strides in elements (saturating at `usize::MAX` for shapes too large to allocate).
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1usize; self.0.len()];
        let mut stride = 1usize;
        for (si, &d) in s.iter_mut().zip(&self.0).rev() {
            *si = stride;
            stride = stride.saturating_mul(d);
        }
        s
    }
    /// Resolves a possibly negative axis (−1 is the last) against this shape's rank.
    pub fn axis(&self, op: &'static str, axis: isize) -> Result<usize> {
        let r = self.rank() as isize;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r {
            return shape_err(op, format!("axis {axis} is out of range for shape {self}"));
        }
        Ok(a as usize)
    }
    /// The product of the dimensions before `axis`, the size of `axis`, and the product after it: the
    /// (outer, n, inner) view that every axis kernel uses. An axis at or past the rank is a trailing
    /// axis of size 1 (the shape read as if padded with ones): (numel, 1, 1).
    pub fn split_at_axis(&self, axis: usize) -> (usize, usize, usize) {
        match self.0.split_at_checked(axis) {
            Some((before, [n, after @ ..])) => (numel(before), *n, numel(after)),
            _ => (numel(&self.0), 1, 1),
        }
    }
    /// The broadcast of two shapes (NumPy rules), or an error naming `op` and both shapes.
    pub fn broadcast(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
        // Right-aligned: walk both shapes from the last dimension, a missing one counting as 1.
        let r = a.rank().max(b.rank());
        let (mut ra, mut rb) = (a.0.iter().rev(), b.0.iter().rev());
        let mut out = Vec::with_capacity(r);
        for _ in 0..r {
            let (da, db) = (ra.next().copied().unwrap_or(1), rb.next().copied().unwrap_or(1));
            out.push(match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return shape_err(op, format!("shapes {a} and {b} do not broadcast")),
            });
        }
        out.reverse();
        Ok(Shape(out))
    }
    /// Whether `self` can be broadcast to `target`.
    pub fn broadcasts_to(&self, target: &Shape) -> bool {
        self.rank() <= target.rank() && self.0.iter().rev().zip(target.0.iter().rev()).all(|(&s, &t)| s == t || s == 1)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Shape {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Shape {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Shape {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Shape {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Shape {
        Shape(vec![])
    }
}
