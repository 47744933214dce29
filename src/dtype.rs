//! Element types.
//!
//! metagrad computes in `f32` and `f64`; `bf16` and `f16` (crate `half`) are storage formats that convert
//! to and from the compute types with [`crate::Tensor::to_dtype`]. [`Element`] is the set of types a
//! tensor can hold; the kernels' own element traits live with the kernels (`backend::cpu::float`).

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
