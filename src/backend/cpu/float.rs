//! The compute element types of the CPU kernels (f32, f64) and the dispatch from a runtime dtype.
//!
//! Kernels are written once, generic over [`Float`], and instantiated for the runtime [`DType`] with
//! [`with_float!`] (the same idea as candle's `cpu_backend/utils.rs`).

use super::math::BLOCK;
use crate::dtype::Element;

/// A compute element type (f32 or f64) with the math the kernels need.
pub(crate) trait Float:
    Element
    + PartialOrd
    + Default
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Negative infinity.
    const NEG_INFINITY: Self;
    /// e^x.
    fn exp(self) -> Self;
    /// Natural log.
    fn ln(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// self^p.
    fn powf(self, p: Self) -> Self;
    /// The error function.
    fn erf(self) -> Self;
    /// Sine (libm's, in f64 for both types: the same bits on every platform and ISA).
    fn sin(self) -> Self;
    /// Cosine (as [`Float::sin`]).
    fn cos(self) -> Self;
    /// Fused multiply-add self·a + b, correctly rounded on every target (so SIMD and scalar paths agree).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// Whether the value is neither NaN nor infinite.
    fn is_finite(self) -> bool;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
    /// [`Float::exp`] on a block: the same bits as one by one (f32 runs the block's values side by
    /// side, see [`super::math`]; f64's libm calls go one by one).
    #[inline(always)]
    fn exp_block(x: &[Self; BLOCK]) -> [Self; BLOCK] {
        x.map(Self::exp)
    }
    /// [`Float::tanh`] on a block, as [`Float::exp_block`].
    #[inline(always)]
    fn tanh_block(x: &[Self; BLOCK]) -> [Self; BLOCK] {
        x.map(Self::tanh)
    }
    /// [`Float::erf`] on a block, as [`Float::exp_block`].
    #[inline(always)]
    fn erf_block(x: &[Self; BLOCK]) -> [Self; BLOCK] {
        x.map(Self::erf)
    }
}

macro_rules! float {
    ($t:ident, $exp:path, $erf:path, $tanh:path, $sin:path, $cos:path $(, [$exp_b:path, $tanh_b:path, $erf_b:path])?) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $t::abs(self)
            }
            #[inline(always)]
            fn powf(self, p: Self) -> Self {
                $t::powf(self, p)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                $sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                $cos(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                $t::mul_add(self, a, b)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                $t::is_finite(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            $(
                #[inline(always)]
                fn exp_block(x: &[Self; BLOCK]) -> [Self; BLOCK] {
                    $exp_b(x)
                }
                #[inline(always)]
                fn tanh_block(x: &[Self; BLOCK]) -> [Self; BLOCK] {
                    $tanh_b(x)
                }
                #[inline(always)]
                fn erf_block(x: &[Self; BLOCK]) -> [Self; BLOCK] {
                    $erf_b(x)
                }
            )?
        }
    };
}
// f32 exp, erf and tanh: our vectorizable versions (see `math`: computed in f64, rounded once, the
// same bits on every platform; every caller runs in code compiled for the ISA it dispatched to, where
// `mul_add` is one instruction); f64 exp and tanh: the platform's libm; f64 erf: the libm crate's. sin and
// cos: the libm crate's (pure Rust, so the same bits on every platform), f32 computed in f64 and
// rounded once.
float!(
    f32,
    super::math::exp_f32,
    super::math::erf_f32,
    super::math::tanh_f32,
    super::math::sin_f32,
    super::math::cos_f32,
    [super::math::exp_f32_block, super::math::tanh_f32_block, super::math::erf_f32_block]
);
// f64 keeps the one-by-one block forms (libm's functions do not vectorize).
float!(f64, f64::exp, libm::erf, f64::tanh, libm::sin, libm::cos);

/// Runs `$body` with the type alias `$T` bound to f32 or f64 according to `$dtype`; a storage-only
/// dtype returns an [`crate::Error::DType`] naming `$op`. The body runs inside
/// [`crate::mode::kernel_scope`], so that rayon jobs stolen while it waits do not inherit the
/// caller's grad mode.
macro_rules! with_float {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                #[allow(dead_code)]
                type $T = f32;
                let _kernel = $crate::mode::kernel_scope();
                $body
            }
            $crate::DType::F64 => {
                #[allow(dead_code)]
                type $T = f64;
                let _kernel = $crate::mode::kernel_scope();
                $body
            }
            other => {
                return Err($crate::Error::DType {
                    op: $op,
                    msg: format!("{other} is a storage-only dtype; convert to f32 or f64 with to_dtype first"),
                })
            }
        }
    };
}
pub(crate) use with_float;
