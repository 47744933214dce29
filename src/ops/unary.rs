//! Element-wise unary ops.
//!
//! Each VJP multiplies the cotangent by the derivative written in ops (using the saved input or output),
//! so it is differentiable again. Piecewise-constant derivatives (relu, abs, clamp) multiply by a
//! constant 0/1 (or ±1) mask: their second derivative is zero almost everywhere, as it should be.
//! GELU (exact) is one op with the bits of its erf composite; its derivative is a second op, and the
//! derivative of that is composite. The tanh form is a composite of tanh.

use crate::backend::spec::UnaryOp;
use crate::error::{invalid, Result};
use crate::{Tensor, Var};

/// `f` on every element of `x` (a compute dtype), as op `op`.
pub(crate) fn map(op: &'static str, x: &Tensor, f: UnaryOp) -> Result<Tensor> {
    super::compute(op, x)?;
    Ok(Tensor::from_storage(x.storage().unary(op, f)?, x.shape().clone()))
}

/// A constant (untracked) mask or sign computed from a value.
fn mask(x: &Var, f: UnaryOp) -> Result<Var> {
    Ok(Var::constant(map("mask", x.value(), f)?))
}

macro_rules! tensor_unary {
    ($($(#[$doc:meta])* $name:ident => $f:expr;)*) => {
        impl Tensor {
            $($(#[$doc])* pub fn $name(&self) -> Result<Tensor> {
                map(stringify!($name), self, $f)
            })*
        }
    };
}

tensor_unary! {
    /// −x.
    neg => UnaryOp::Neg;
    /// eˣ.
    exp => UnaryOp::Exp;
    /// Natural logarithm.
    log => UnaryOp::Log;
    /// Hyperbolic tangent.
    tanh => UnaryOp::Tanh;
    /// Logistic sigmoid 1/(1 + e⁻ˣ).
    sigmoid => UnaryOp::Sigmoid;
    /// max(x, 0).
    relu => UnaryOp::Relu;
    /// √x.
    sqrt => UnaryOp::Sqrt;
    /// 1/√x.
    rsqrt => UnaryOp::Rsqrt;
    /// |x|.
    abs => UnaryOp::Abs;
    /// x².
    square => UnaryOp::Square;
    /// The error function.
    erf => UnaryOp::Erf;
    /// sin x (radians). Deterministic on the CPU: the libm crate's f64 sine, rounded once for f32.
    sin => UnaryOp::Sin;
    /// cos x (radians), computed like [`Tensor::sin`].
    cos => UnaryOp::Cos;
}

impl Tensor {
    /// xᵖ for a finite scalar exponent p.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        if !p.is_finite() {
            return invalid("powf", format!("exponent {p} is not finite"));
        }
        map("powf", self, UnaryOp::Powf(p))
    }

    /// x limited to [lo, hi].
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return invalid("clamp", format!("bounds [{lo}, {hi}] are not an interval"));
        }
        map("clamp", self, UnaryOp::Clamp(lo, hi))
    }

    /// a·x + b element-wise for scalars a, b (one fused multiply-add).
    pub fn affine(&self, a: f64, b: f64) -> Result<Tensor> {
        map("affine", self, UnaryOp::Affine(a, b))
    }

    /// x + c for a scalar c.
    pub fn add_scalar(&self, c: f64) -> Result<Tensor> {
        map("add_scalar", self, UnaryOp::Affine(1.0, c))
    }

    /// x · c for a scalar c.
    pub fn mul_scalar(&self, c: f64) -> Result<Tensor> {
        map("mul_scalar", self, UnaryOp::Affine(c, 0.0))
    }
}

impl Var {
    /// Records `op` as f(x) with VJP `g · d(x, y)` (d built from the input `x` and output `y`).
    fn unary_op(&self, op: &'static str, f: UnaryOp, d: impl Fn(&Var, &Var) -> Result<Var> + 'static) -> Result<Var> {
        let y = map(op, self.value(), f)?;
        Var::record(op, y, &[self], move |x, y, g| {
            let [x] = super::inputs(op, x)?;
            Ok(vec![Some(g.mul(&d(x, y)?)?)])
        })
    }

    /// −x.
    pub fn neg(&self) -> Result<Var> {
        let y = map("neg", self.value(), UnaryOp::Neg)?;
        Var::record("neg", y, &[self], |_, _, g| Ok(vec![Some(g.neg()?)]))
    }

    /// eˣ.
    pub fn exp(&self) -> Result<Var> {
        self.unary_op("exp", UnaryOp::Exp, |_, y| Ok(y.clone()))
    }

    /// Natural logarithm.
    pub fn log(&self) -> Result<Var> {
        let y = map("log", self.value(), UnaryOp::Log)?;
        Var::record("log", y, &[self], |x, _, g| {
            let [x] = super::inputs("log", x)?;
            Ok(vec![Some(g.div(x)?)])
        })
    }

    /// Hyperbolic tangent; d/dx = 1 − y².
    pub fn tanh(&self) -> Result<Var> {
        self.unary_op("tanh", UnaryOp::Tanh, |_, y| y.square()?.affine(-1.0, 1.0))
    }

    /// Logistic sigmoid 1/(1 + e⁻ˣ); d/dx = y(1 − y).
    pub fn sigmoid(&self) -> Result<Var> {
        self.unary_op("sigmoid", UnaryOp::Sigmoid, |_, y| y.mul(&y.affine(-1.0, 1.0)?))
    }

    /// max(x, 0); the derivative at 0 is taken as 0.
    pub fn relu(&self) -> Result<Var> {
        self.unary_op("relu", UnaryOp::Relu, |x, _| mask(x, UnaryOp::Step))
    }

    /// √x; d/dx = 1/(2y).
    pub fn sqrt(&self) -> Result<Var> {
        let y = map("sqrt", self.value(), UnaryOp::Sqrt)?;
        Var::record("sqrt", y, &[self], |_, y, g| Ok(vec![Some(g.div(&y.mul_scalar(2.0)?)?)]))
    }

    /// 1/√x; d/dx = −y³/2.
    pub fn rsqrt(&self) -> Result<Var> {
        self.unary_op("rsqrt", UnaryOp::Rsqrt, |_, y| y.square()?.mul(y)?.mul_scalar(-0.5))
    }

    /// xᵖ for a scalar exponent p; d/dx = p·xᵖ⁻¹. For p = 0 and p = 1 the derivative is the constant
    /// 0 or 1, also at x = 0 (where p·xᵖ⁻¹ would be 0·∞ = NaN for p = 0, and 1·0⁰ needs no power).
    pub fn powf(&self, p: f64) -> Result<Var> {
        let y = self.value().powf(p)?;
        Var::record("powf", y, &[self], move |x, _, g| {
            let [x] = super::inputs("powf", x)?;
            let d = if p == 0.0 || p == 1.0 {
                Var::constant(Tensor::full_on(p, x.shape().clone(), x.dtype(), x.value().device())?)
            } else {
                x.powf(p - 1.0)?.mul_scalar(p)?
            };
            Ok(vec![Some(g.mul(&d)?)])
        })
    }

    /// |x|; the derivative at 0 is taken as 0.
    pub fn abs(&self) -> Result<Var> {
        self.unary_op("abs", UnaryOp::Abs, |x, _| mask(x, UnaryOp::Sign))
    }

    /// x²; d/dx = 2x.
    pub fn square(&self) -> Result<Var> {
        self.unary_op("square", UnaryOp::Square, |x, _| x.mul_scalar(2.0))
    }

    /// x limited to [lo, hi]; the derivative is 1 inside (boundaries included) and 0 outside.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Var> {
        let y = self.value().clamp(lo, hi)?;
        Var::record("clamp", y, &[self], move |x, _, g| {
            let [x] = super::inputs("clamp", x)?;
            Ok(vec![Some(g.mul(&mask(x, UnaryOp::InRange(lo, hi))?)?)])
        })
    }

    /// The error function; d/dx = 2/√π · e^(−x²).
    pub fn erf(&self) -> Result<Var> {
        self.unary_op("erf", UnaryOp::Erf, |x, _| x.square()?.neg()?.exp()?.mul_scalar(std::f64::consts::FRAC_2_SQRT_PI))
    }

    /// sin x (radians); d/dx = cos x.
    pub fn sin(&self) -> Result<Var> {
        self.unary_op("sin", UnaryOp::Sin, |x, _| x.cos())
    }

    /// cos x (radians); d/dx = −sin x.
    pub fn cos(&self) -> Result<Var> {
        self.unary_op("cos", UnaryOp::Cos, |x, _| x.sin()?.neg())
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
        let y = map(op, self.value(), UnaryOp::Affine(a, b))?;
        Var::record(op, y, &[self], move |_, _, g| Ok(vec![Some(g.mul_scalar(a)?)]))
    }

    /// GELU, exact form: x·Φ(x) = x/2 · (1 + erf(x/√2)), one pass with the bits of that composite;
    /// d/dx = Φ(x) + x·φ(x) (also one op), whose derivative φ(x)·(2 − x²) is composite.
    pub fn gelu(&self) -> Result<Var> {
        self.unary_op("gelu", UnaryOp::Gelu, |x, _| x.gelu_grad())
    }

    /// GELU's derivative Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π); d/dx = φ(x)·(2 − x²).
    fn gelu_grad(&self) -> Result<Var> {
        self.unary_op("gelu_grad", UnaryOp::GeluGrad, |x, _| {
            let s = x.square()?;
            s.mul_scalar(-0.5)?
                .exp()?
                .mul_scalar(0.5 * std::f64::consts::FRAC_1_SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI)?
                .mul(&s.affine(-1.0, 2.0)?)
        })
    }

    /// GELU, tanh approximation: x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³))).
    pub fn gelu_tanh(&self) -> Result<Var> {
        super::same_dtypes("gelu_tanh", &[self])?;
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let inner = self.add(&self.powf(3.0)?.mul_scalar(0.044715)?)?.mul_scalar(c)?;
        self.mul_scalar(0.5)?.mul(&inner.tanh()?.add_scalar(1.0)?)
    }
}
