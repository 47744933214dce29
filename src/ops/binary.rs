//! Element-wise binary ops with NumPy broadcasting, and the arithmetic operators.
//!
//! The VJP of a broadcast operand is the cotangent summed back to the operand's shape (`sum_to`).
//!
//! The operators `+ - * /` work on references to tensors and variables (`&a + &b`, `&a * 2.0`,
//! `2.0 * &a`) and return a [`Result`], because an op can fail (shapes that do not broadcast, dtypes
//! that differ): write `(&a + &b)?`. Scalars are f64 and rounded to the tensor's dtype once.

use super::inputs;
use crate::backend::spec::BinaryOp;
use crate::error::Result;
use crate::{Shape, Tensor, Var};

/// `f(a, b)` with broadcasting, as op `op`.
pub(crate) fn zip(op: &'static str, a: &Tensor, b: &Tensor, f: BinaryOp) -> Result<Tensor> {
    super::same_dtype_t(op, a, b)?;
    let out = Shape::broadcast(op, a.shape(), b.shape())?;
    let s = a.storage().binary(op, a.dims(), b.storage(), b.dims(), out.dims(), f)?;
    Tensor::new(op, s, out)
}

impl Tensor {
    /// a + b, broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        zip("add", self, other, BinaryOp::Add)
    }
    /// a − b, broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        zip("sub", self, other, BinaryOp::Sub)
    }
    /// a · b element-wise, broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        zip("mul", self, other, BinaryOp::Mul)
    }
    /// a / b element-wise, broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        zip("div", self, other, BinaryOp::Div)
    }
}

impl Var {
    /// a + b, broadcasting.
    pub fn add(&self, other: &Var) -> Result<Var> {
        let y = self.value().add(other.value())?;
        Var::record("add", y, &[self, other], |x, _, g| {
            let [a, b] = inputs("add", x)?;
            Ok(vec![Some(g.sum_to(a.shape())?), Some(g.sum_to(b.shape())?)])
        })
    }

    /// a − b, broadcasting.
    pub fn sub(&self, other: &Var) -> Result<Var> {
        let y = self.value().sub(other.value())?;
        Var::record("sub", y, &[self, other], |x, _, g| {
            let [a, b] = inputs("sub", x)?;
            Ok(vec![Some(g.sum_to(a.shape())?), Some(g.neg()?.sum_to(b.shape())?)])
        })
    }

    /// a · b element-wise, broadcasting.
    pub fn mul(&self, other: &Var) -> Result<Var> {
        let y = self.value().mul(other.value())?;
        Var::record("mul", y, &[self, other], |x, _, g| {
            let [a, b] = inputs("mul", x)?;
            Ok(vec![
                if a.is_tracked() { Some(g.mul(b)?.sum_to(a.shape())?) } else { None },
                if b.is_tracked() { Some(g.mul(a)?.sum_to(b.shape())?) } else { None },
            ])
        })
    }

    /// a / b element-wise, broadcasting.
    pub fn div(&self, other: &Var) -> Result<Var> {
        let y = self.value().div(other.value())?;
        Var::record("div", y, &[self, other], |x, _, g| {
            let [a, b] = inputs("div", x)?;
            let ga = g.div(b)?;
            Ok(vec![
                if a.is_tracked() { Some(ga.sum_to(a.shape())?) } else { None },
                // ∂(a/b)/∂b = −a/b² = −(g/b)·(a/b)
                if b.is_tracked() { Some(ga.mul(&a.div(b)?)?.neg()?.sum_to(b.shape())?) } else { None },
            ])
        })
    }
}

/// The operators on references and values (`&a + &b`, `a + &b`, ...), and with an f64 scalar on
/// either side.
macro_rules! operators {
    ($T:ty, $($Trait:ident $method:ident $op:ident, $scalar:expr, $rscalar:expr;)*) => {$(
        impl std::ops::$Trait<&$T> for &$T {
            type Output = Result<$T>;
            fn $method(self, rhs: &$T) -> Result<$T> {
                <$T>::$op(self, rhs)
            }
        }
        impl std::ops::$Trait<$T> for &$T {
            type Output = Result<$T>;
            fn $method(self, rhs: $T) -> Result<$T> {
                <$T>::$op(self, &rhs)
            }
        }
        impl std::ops::$Trait<&$T> for $T {
            type Output = Result<$T>;
            fn $method(self, rhs: &$T) -> Result<$T> {
                <$T>::$op(&self, rhs)
            }
        }
        impl std::ops::$Trait<$T> for $T {
            type Output = Result<$T>;
            fn $method(self, rhs: $T) -> Result<$T> {
                <$T>::$op(&self, &rhs)
            }
        }
        impl std::ops::$Trait<f64> for &$T {
            type Output = Result<$T>;
            fn $method(self, c: f64) -> Result<$T> {
                let f: fn(&$T, f64) -> Result<$T> = $scalar;
                f(self, c)
            }
        }
        impl std::ops::$Trait<f64> for $T {
            type Output = Result<$T>;
            fn $method(self, c: f64) -> Result<$T> {
                <&$T as std::ops::$Trait<f64>>::$method(&self, c)
            }
        }
        impl std::ops::$Trait<&$T> for f64 {
            type Output = Result<$T>;
            fn $method(self, x: &$T) -> Result<$T> {
                let f: fn(&$T, f64) -> Result<$T> = $rscalar;
                f(x, self)
            }
        }
        impl std::ops::$Trait<$T> for f64 {
            type Output = Result<$T>;
            fn $method(self, x: $T) -> Result<$T> {
                <f64 as std::ops::$Trait<&$T>>::$method(self, &x)
            }
        }
    )*};
}

/// The scalar `c` as a tensor like `x` (dtype, device), for the exact divisions below.
fn scalar_like(c: f64, x: &Tensor) -> Result<Tensor> {
    Tensor::full_on(c, (), x.dtype(), x.device())
}

// Each is one correctly rounded operation per element: x ± c and c − x are fused multiply-adds with
// ±1 (exact), x · c one multiply, and the divisions divide by (or into) the scalar rounded to the dtype.
operators!(Tensor,
    Add add add, |x, c| x.add_scalar(c), |x, c| x.add_scalar(c);
    Sub sub sub, |x, c| x.add_scalar(-c), |x, c| x.affine(-1.0, c);
    Mul mul mul, |x, c| x.mul_scalar(c), |x, c| x.mul_scalar(c);
    Div div div, |x, c| x.div(&scalar_like(c, x)?), |x, c| scalar_like(c, x)?.div(x);
);
operators!(Var,
    Add add add, |x, c| x.add_scalar(c), |x, c| x.add_scalar(c);
    Sub sub sub, |x, c| x.add_scalar(-c), |x, c| x.affine(-1.0, c);
    Mul mul mul, |x, c| x.mul_scalar(c), |x, c| x.mul_scalar(c);
    Div div div, |x, c| x.div(&Var::constant(scalar_like(c, x.value())?)), |x, c| Var::constant(scalar_like(c, x.value())?).div(x);
);

macro_rules! negation {
    ($($T:ty),*) => {$(
        impl std::ops::Neg for &$T {
            type Output = Result<$T>;
            fn neg(self) -> Result<$T> {
                <$T>::neg(self)
            }
        }
        impl std::ops::Neg for $T {
            type Output = Result<$T>;
            fn neg(self) -> Result<$T> {
                <$T>::neg(&self)
            }
        }
    )*};
}
negation!(Tensor, Var);
