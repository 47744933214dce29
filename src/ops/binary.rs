//! Element-wise binary ops with NumPy broadcasting.
//!
//! The VJP of a broadcast operand is the cotangent summed back to the operand's shape (`sum_to`).

use super::same_dtype;
use super::unary::Unary;
use crate::backend::cpu;
use crate::backend::cuda::ops as cuda;
use crate::dtype::{with_float, Float};
use crate::error::Result;
use crate::{Shape, Tensor, Var};

/// The element-wise binary functions (in the order of `BinaryOp` in kernels/elementwise.cu).
#[derive(Clone, Copy)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Binary {
    #[inline(always)]
    fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
        }
    }
}

/// Forward kernel for a broadcast binary op.
fn zip(op: &'static str, a: &Var, b: &Var, f: Binary) -> Result<Tensor> {
    same_dtype(op, a, b)?;
    let out = Shape::broadcast(op, a.shape(), b.shape())?;
    if a.value().is_cuda() {
        return cuda::binary(op, a.value(), b.value(), &out, f as i32);
    }
    with_float!(op, a.dtype(), T => {
        let (x, y) = (a.value().as_slice::<T>()?, b.value().as_slice::<T>()?);
        // One kernel per function, fixed at compile time, so the loops vectorize.
        let (ad, bd, od) = (a.dims(), b.dims(), out.dims());
        let v = match f {
            Binary::Add => cpu::zip(x, ad, y, bd, od, |p: T, q: T| Binary::Add.apply(p, q)),
            Binary::Sub => cpu::zip(x, ad, y, bd, od, |p: T, q: T| Binary::Sub.apply(p, q)),
            Binary::Mul => cpu::zip(x, ad, y, bd, od, |p: T, q: T| Binary::Mul.apply(p, q)),
            Binary::Div => cpu::zip(x, ad, y, bd, od, |p: T, q: T| Binary::Div.apply(p, q)),
        };
        Tensor::from_vec(v, out)
    })
}

impl Var {
    /// a + b, broadcasting.
    pub fn add(&self, other: &Var) -> Result<Var> {
        let y = zip("add", self, other, Binary::Add)?;
        Var::record("add", y, &[self, other], |x, _, g| Ok(vec![Some(g.sum_to(x[0].shape())?), Some(g.sum_to(x[1].shape())?)]))
    }

    /// a − b, broadcasting.
    pub fn sub(&self, other: &Var) -> Result<Var> {
        let y = zip("sub", self, other, Binary::Sub)?;
        Var::record("sub", y, &[self, other], |x, _, g| Ok(vec![Some(g.sum_to(x[0].shape())?), Some(g.neg()?.sum_to(x[1].shape())?)]))
    }

    /// a · b element-wise, broadcasting.
    pub fn mul(&self, other: &Var) -> Result<Var> {
        let y = zip("mul", self, other, Binary::Mul)?;
        Var::record("mul", y, &[self, other], |x, _, g| {
            Ok(vec![
                if x[0].is_tracked() { Some(g.mul(&x[1])?.sum_to(x[0].shape())?) } else { None },
                if x[1].is_tracked() { Some(g.mul(&x[0])?.sum_to(x[1].shape())?) } else { None },
            ])
        })
    }

    /// a / b element-wise, broadcasting.
    pub fn div(&self, other: &Var) -> Result<Var> {
        let y = zip("div", self, other, Binary::Div)?;
        Var::record("div", y, &[self, other], |x, _, g| {
            let ga = g.div(&x[1])?;
            Ok(vec![
                if x[0].is_tracked() { Some(ga.sum_to(x[0].shape())?) } else { None },
                // ∂(a/b)/∂b = −a/b² = −(g/b)·(a/b)
                if x[1].is_tracked() { Some(ga.mul(&x[0].div(&x[1])?)?.neg()?.sum_to(x[1].shape())?) } else { None },
            ])
        })
    }

    /// a + c for a scalar c.
    pub fn add_scalar(&self, c: f64) -> Result<Var> {
        self.affine_op("add_scalar", 1.0, c)
    }

    /// a · c for a scalar c.
    pub fn mul_scalar(&self, c: f64) -> Result<Var> {
        self.affine_op("mul_scalar", c, 0.0)
    }

    /// a·x + b element-wise for scalars a, b (one pass).
    pub fn affine(&self, a: f64, b: f64) -> Result<Var> {
        self.affine_op("affine", a, b)
    }

    /// [`Var::affine`] under the name of the op the caller used (for errors and the tape).
    fn affine_op(&self, op: &'static str, a: f64, b: f64) -> Result<Var> {
        let y = super::unary::map(op, self, Unary::Affine(a, b))?;
        Var::record(op, y, &[self], move |_, _, g| Ok(vec![Some(g.mul_scalar(a)?)]))
    }
}
