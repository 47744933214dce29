//! Element-wise unary ops.
//!
//! Each VJP multiplies the cotangent by the derivative written in ops (using the saved input or output),
//! so it is differentiable again. Piecewise-constant derivatives (relu, abs, clamp) multiply by a
//! constant 0/1 (or ±1) mask: their second derivative is zero almost everywhere, as it should be.
//! GELU is a composite of erf or tanh, so all its derivatives come from theirs.

use crate::backend::cpu;
use crate::backend::cuda::ops as cuda;
use crate::dtype::{with_float, Float};
use crate::error::{invalid, Result};
use crate::{Tensor, Var};

/// The element-wise unary functions (one kernel, dispatched per element type).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unary {
    Neg,
    Exp,
    Log,
    Tanh,
    Sigmoid,
    Relu,
    Sqrt,
    Rsqrt,
    Abs,
    Square,
    Erf,
    Powf(f64),
    Clamp(f64, f64),
    Affine(f64, f64),
    /// 1 where x > 0, else 0.
    Step,
    /// −1, 0 or 1.
    Sign,
    /// 1 where lo ≤ x ≤ hi, else 0.
    InRange(f64, f64),
}

impl Unary {
    #[inline(always)]
    fn apply<T: Float>(self, x: T) -> T {
        let c = |v: f64| T::from_f64(v);
        match self {
            Unary::Neg => -x,
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Tanh => x.tanh(),
            Unary::Sigmoid => {
                if x >= T::ZERO {
                    T::ONE / (T::ONE + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (T::ONE + e)
                }
            }
            Unary::Relu => {
                if x > T::ZERO {
                    x
                } else {
                    T::ZERO
                }
            }
            Unary::Sqrt => x.sqrt(),
            Unary::Rsqrt => T::ONE / x.sqrt(),
            Unary::Abs => x.abs(),
            Unary::Square => x * x,
            Unary::Erf => x.erf(),
            Unary::Powf(p) => x.powf(c(p)),
            Unary::Clamp(lo, hi) => {
                if x < c(lo) {
                    c(lo)
                } else if x > c(hi) {
                    c(hi)
                } else {
                    x
                }
            }
            Unary::Affine(a, b) => c(a).mul_add(x, c(b)),
            Unary::Step => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            Unary::Sign => {
                if x > T::ZERO {
                    T::ONE
                } else if x < T::ZERO {
                    -T::ONE
                } else {
                    T::ZERO
                }
            }
            Unary::InRange(lo, hi) => {
                if x >= c(lo) && x <= c(hi) {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
        }
    }
}

impl Unary {
    /// The op's code in `UnaryOp` (kernels/elementwise.cu) and its scalar parameters.
    fn cuda_code(self) -> (i32, f64, f64) {
        match self {
            Unary::Neg => (0, 0.0, 0.0),
            Unary::Exp => (1, 0.0, 0.0),
            Unary::Log => (2, 0.0, 0.0),
            Unary::Tanh => (3, 0.0, 0.0),
            Unary::Sigmoid => (4, 0.0, 0.0),
            Unary::Relu => (5, 0.0, 0.0),
            Unary::Sqrt => (6, 0.0, 0.0),
            Unary::Rsqrt => (7, 0.0, 0.0),
            Unary::Abs => (8, 0.0, 0.0),
            Unary::Square => (9, 0.0, 0.0),
            Unary::Erf => (10, 0.0, 0.0),
            Unary::Powf(p) => (11, p, 0.0),
            Unary::Clamp(lo, hi) => (12, lo, hi),
            Unary::Affine(a, b) => (13, a, b),
            Unary::Step => (14, 0.0, 0.0),
            Unary::Sign => (15, 0.0, 0.0),
            Unary::InRange(lo, hi) => (16, lo, hi),
        }
    }
}

/// Applies `u` to every element of `x`'s value.
pub(crate) fn map(op: &'static str, x: &Var, u: Unary) -> Result<Tensor> {
    map_tensor(op, x.value(), u)
}

pub(crate) fn map_tensor(op: &'static str, x: &Tensor, u: Unary) -> Result<Tensor> {
    if x.is_cuda() {
        let (code, p, q) = u.cuda_code();
        return cuda::unary(op, x, code, p, q);
    }
    with_float!(op, x.dtype(), T => {
        let xs = x.as_slice::<T>()?;
        // One kernel per variant: each closure rebuilds its variant from the captured parameters, so
        // the discriminant is a constant in its code, the per-element `match` folds away and simple
        // bodies vectorize.
        macro_rules! per_variant {
            ($($pat:pat => $fixed:expr),* $(,)?) => {
                match u { $($pat => cpu::map(xs, &move |v: T| $fixed.apply(v)),)* }
            };
        }
        let out = per_variant!(
            Unary::Neg => Unary::Neg,
            Unary::Exp => Unary::Exp,
            Unary::Log => Unary::Log,
            Unary::Tanh => Unary::Tanh,
            Unary::Sigmoid => Unary::Sigmoid,
            Unary::Relu => Unary::Relu,
            Unary::Sqrt => Unary::Sqrt,
            Unary::Rsqrt => Unary::Rsqrt,
            Unary::Abs => Unary::Abs,
            Unary::Square => Unary::Square,
            Unary::Erf => Unary::Erf,
            Unary::Powf(p) => Unary::Powf(p),
            Unary::Clamp(lo, hi) => Unary::Clamp(lo, hi),
            Unary::Affine(a, b) => Unary::Affine(a, b),
            Unary::Step => Unary::Step,
            Unary::Sign => Unary::Sign,
            Unary::InRange(lo, hi) => Unary::InRange(lo, hi),
        );
        Tensor::from_vec(out, x.shape().clone())
    })
}

/// A constant (untracked) mask or sign computed from a value.
fn mask(x: &Var, u: Unary) -> Result<Var> {
    Ok(Var::constant(map("mask", x, u)?))
}

impl Var {
    /// −x.
    pub fn neg(&self) -> Result<Var> {
        let y = map("neg", self, Unary::Neg)?;
        Var::record("neg", y, &[self], |_, _, g| Ok(vec![Some(g.neg()?)]))
    }

    /// eˣ.
    pub fn exp(&self) -> Result<Var> {
        let y = map("exp", self, Unary::Exp)?;
        Var::record("exp", y, &[self], |_, y, g| Ok(vec![Some(g.mul(y)?)]))
    }

    /// Natural logarithm.
    pub fn log(&self) -> Result<Var> {
        let y = map("log", self, Unary::Log)?;
        Var::record("log", y, &[self], |x, _, g| Ok(vec![Some(g.div(&x[0])?)]))
    }

    /// Hyperbolic tangent; d/dx = 1 − y².
    pub fn tanh(&self) -> Result<Var> {
        let y = map("tanh", self, Unary::Tanh)?;
        Var::record("tanh", y, &[self], |_, y, g| Ok(vec![Some(g.mul(&y.square()?.affine(-1.0, 1.0)?)?)]))
    }

    /// Logistic sigmoid 1/(1 + e⁻ˣ); d/dx = y(1 − y).
    pub fn sigmoid(&self) -> Result<Var> {
        let y = map("sigmoid", self, Unary::Sigmoid)?;
        Var::record("sigmoid", y, &[self], |_, y, g| Ok(vec![Some(g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)?)]))
    }

    /// max(x, 0); the derivative at 0 is taken as 0.
    pub fn relu(&self) -> Result<Var> {
        let y = map("relu", self, Unary::Relu)?;
        Var::record("relu", y, &[self], |x, _, g| Ok(vec![Some(g.mul(&mask(&x[0], Unary::Step)?)?)]))
    }

    /// √x; d/dx = 1/(2y).
    pub fn sqrt(&self) -> Result<Var> {
        let y = map("sqrt", self, Unary::Sqrt)?;
        Var::record("sqrt", y, &[self], |_, y, g| Ok(vec![Some(g.div(&y.mul_scalar(2.0)?)?)]))
    }

    /// 1/√x; d/dx = −y³/2.
    pub fn rsqrt(&self) -> Result<Var> {
        let y = map("rsqrt", self, Unary::Rsqrt)?;
        Var::record("rsqrt", y, &[self], |_, y, g| Ok(vec![Some(g.mul(&y.square()?.mul(y)?.mul_scalar(-0.5)?)?)]))
    }

    /// xᵖ for a scalar exponent p; d/dx = p·xᵖ⁻¹.
    pub fn powf(&self, p: f64) -> Result<Var> {
        if !p.is_finite() {
            return invalid("powf", format!("exponent {p} is not finite"));
        }
        let y = map("powf", self, Unary::Powf(p))?;
        Var::record("powf", y, &[self], move |x, _, g| {
            // p = 1: the derivative is the constant 1 (also at x = 0, where 0·x⁻¹ would be NaN).
            let d = if p == 1.0 {
                Var::constant(Tensor::full_on(1.0, x[0].shape().clone(), x[0].dtype(), x[0].value().device())?)
            } else {
                x[0].powf(p - 1.0)?.mul_scalar(p)?
            };
            Ok(vec![Some(g.mul(&d)?)])
        })
    }

    /// |x|; the derivative at 0 is taken as 0.
    pub fn abs(&self) -> Result<Var> {
        let y = map("abs", self, Unary::Abs)?;
        Var::record("abs", y, &[self], |x, _, g| Ok(vec![Some(g.mul(&mask(&x[0], Unary::Sign)?)?)]))
    }

    /// x²; d/dx = 2x.
    pub fn square(&self) -> Result<Var> {
        let y = map("square", self, Unary::Square)?;
        Var::record("square", y, &[self], |x, _, g| Ok(vec![Some(g.mul(&x[0].mul_scalar(2.0)?)?)]))
    }

    /// x limited to [lo, hi]; the derivative is 1 inside (boundaries included) and 0 outside.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Var> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return invalid("clamp", format!("bounds [{lo}, {hi}] are not an interval"));
        }
        let y = map("clamp", self, Unary::Clamp(lo, hi))?;
        Var::record("clamp", y, &[self], move |x, _, g| Ok(vec![Some(g.mul(&mask(&x[0], Unary::InRange(lo, hi))?)?)]))
    }

    /// The error function; d/dx = 2/√π · e^(−x²).
    pub fn erf(&self) -> Result<Var> {
        let y = map("erf", self, Unary::Erf)?;
        Var::record("erf", y, &[self], |x, _, g| {
            let d = x[0].square()?.neg()?.exp()?.mul_scalar(std::f64::consts::FRAC_2_SQRT_PI)?;
            Ok(vec![Some(g.mul(&d)?)])
        })
    }

    /// GELU, exact form: x·Φ(x) = x/2 · (1 + erf(x/√2)).
    pub fn gelu(&self) -> Result<Var> {
        super::same_dtypes("gelu", &[self])?;
        let half_x = self.mul_scalar(0.5)?;
        half_x.mul(&self.mul_scalar(std::f64::consts::FRAC_1_SQRT_2)?.erf()?.add_scalar(1.0)?)
    }

    /// GELU, tanh approximation: x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³))).
    pub fn gelu_tanh(&self) -> Result<Var> {
        super::same_dtypes("gelu_tanh", &[self])?;
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let inner = self.add(&self.powf(3.0)?.mul_scalar(0.044715)?)?.mul_scalar(c)?;
        self.mul_scalar(0.5)?.mul(&inner.tanh()?.add_scalar(1.0)?)
    }
}
