//! Element types.
//!
//! metagrad computes in `f32` and `f64`; `bf16` and `f16` (crate `half`) are storage formats that convert
//! to and from the compute types with [`crate::Tensor::to_dtype`]. Kernels are written once, generic
//! over [`Float`], and dispatched on the runtime [`DType`] with the crate-internal `with_float!` macro
//! (the same idea as candle's `cpu_backend/utils.rs`).

use half::{bf16, f16};
use std::fmt;

/// The runtime element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision; a compute type.
    F32,
    /// IEEE double precision; a compute type (gradient checks and reference problems use it).
    F64,
    /// bfloat16; storage only.
    BF16,
    /// IEEE half precision; storage only.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Whether ops compute in this dtype (f32, f64) rather than only store it (bf16, f16).
    pub fn is_compute(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        })
    }
}

/// A type that a tensor can store: f32, f64, bf16, f16.
pub trait Element: Copy + Send + Sync + bytemuck::Pod + PartialEq + fmt::Debug + 'static {
    /// The matching runtime dtype.
    const DTYPE: DType;
    /// Widen to f64 (exact for every storage type).
    fn to_f64(self) -> f64;
    /// Round from f64 (round to nearest even).
    fn from_f64(v: f64) -> Self;
}

macro_rules! element {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
        }
    };
}
element!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
element!(f64, F64, |x: f64| x, |v: f64| v);
element!(bf16, BF16, |x: bf16| x.to_f64(), bf16_from_f64);
element!(f16, F16, |x: f16| x.to_f64(), f16_from_f64);

/// f64 → f32 rounded to odd: truncate, then set the last bit if anything was lost. Rounding that
/// result to nearest even in a format with at least two fewer significand bits and no wider exponent
/// range (bf16, f16) equals rounding the f64 directly: no double rounding.
fn f64_to_f32_round_to_odd(x: f64) -> f32 {
    let r = x as f32;
    if !x.is_finite() || r as f64 == x {
        return r;
    }
    let mut bits = r.to_bits();
    if (r as f64).abs() > x.abs() {
        bits -= 1; // rounded away from zero (possibly to infinity): step back toward zero
    }
    f32::from_bits(bits | 1)
}

/// f64 → bf16, rounded once to nearest even. (`half`'s `bf16::from_f64` drops the low 32 significand
/// bits before rounding, which misrounds values just above a tie.)
pub(crate) fn bf16_from_f64(x: f64) -> bf16 {
    bf16::from_f32(f64_to_f32_round_to_odd(x))
}

/// f64 → f16, rounded once to nearest even. (`half`'s `f16::from_f64` rounds through f32 on CPUs with
/// F16C and truncates low bits elsewhere: misrounded near ties, and machine-dependent.)
pub(crate) fn f16_from_f64(x: f64) -> f16 {
    f16::from_f32(f64_to_f32_round_to_odd(x))
}

/// A compute element type (f32 or f64) with the math the kernels need.
pub trait Float:
    Element
    + PartialOrd
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
    /// The error function (libm).
    fn erf(self) -> Self;
    /// Fused multiply-add self·a + b, correctly rounded on every target (so SIMD and scalar paths agree).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// Whether the value is neither NaN nor infinite.
    fn is_finite(self) -> bool;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
}

macro_rules! float {
    ($t:ident, $erf:path, $tanh:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            #[inline(always)]
            fn exp(self) -> Self {
                $t::exp(self)
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
        }
    };
}
// f32 tanh: our vectorizable version (see backend::cpu::math); f64: the platform's libm.
float!(f32, libm::erff, crate::backend::cpu::math::tanh_f32);
float!(f64, libm::erf, f64::tanh);

/// Runs `$body` with the type alias `$T` bound to f32 or f64 according to `$dtype`; a storage-only
/// dtype returns an [`crate::Error::DType`] naming `$op`. The body runs kernels only (it records
/// nothing), inside [`crate::autodiff::kernel_scope`] so that rayon jobs stolen while it waits do not
/// inherit the caller's grad mode.
macro_rules! with_float {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                #[allow(dead_code)]
                type $T = f32;
                let _kernel = $crate::autodiff::kernel_scope();
                $body
            }
            $crate::DType::F64 => {
                #[allow(dead_code)]
                type $T = f64;
                let _kernel = $crate::autodiff::kernel_scope();
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
