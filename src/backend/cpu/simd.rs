//! SIMD registers as a trait, so that a kernel is written once, generic over the instruction set, and
//! compiled for each level inside a `#[target_feature]` function (see [`multiversion!`]).
//!
//! Register tiles are written with these rather than left to the auto-vectorizer, whose treatment of a
//! register tile is fragile (it may keep the tile in memory and gather/scatter it). Every lane
//! operation is one correctly rounded IEEE operation, so the same kernel gives the same bits at every
//! width.

use super::float::Float;
use super::transpose::Transpose;
use super::Isa;

/// One SIMD register of `T` lanes. The micro-kernel is written with these rather than left to the
/// auto-vectorizer, whose treatment of a register tile is fragile (it may keep the tile in memory and
/// gather/scatter it).
pub(crate) trait Reg<T>: Copy {
    const LANES: usize;
    fn zero() -> Self;
    fn splat(x: T) -> Self;
    /// Loads the first LANES elements of `x`.
    fn load(x: &[T]) -> Self;
    /// Stores into the first LANES elements of `x`.
    fn store(self, x: &mut [T]);
    /// self·b + c, one correctly rounded FMA per lane (so every register width gives the same bits).
    fn fma(self, b: Self, c: Self) -> Self;
    /// Loads LANES elements from `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading LANES elements.
    unsafe fn load_ptr(p: *const T) -> Self;
    /// Stores LANES elements to `p`.
    ///
    /// # Safety
    /// `p` must be valid for writing LANES elements.
    unsafe fn store_ptr(self, p: *mut T);
    /// Stores the first `n` lanes (n ≤ LANES) to `p` and leaves the memory after them untouched.
    ///
    /// # Safety
    /// `p` must be valid for writing `n` elements.
    unsafe fn store_first(self, p: *mut T, n: usize);
}

/// The portable register: four lanes in an array.
#[derive(Clone, Copy)]
pub(crate) struct Lanes4<T>([T; 4]);
impl<T: Float> Reg<T> for Lanes4<T> {
    const LANES: usize = 4;
    #[inline(always)]
    fn zero() -> Self {
        Lanes4([T::ZERO; 4])
    }
    #[inline(always)]
    fn splat(x: T) -> Self {
        Lanes4([x; 4])
    }
    #[inline(always)]
    #[allow(clippy::unwrap_used)] // infallible: the slice has exactly 4 elements
    fn load(x: &[T]) -> Self {
        Lanes4(x[..4].try_into().unwrap())
    }
    #[inline(always)]
    fn store(self, x: &mut [T]) {
        x[..4].copy_from_slice(&self.0)
    }
    #[inline(always)]
    fn fma(self, b: Self, c: Self) -> Self {
        Lanes4(std::array::from_fn(|l| self.0[l].mul_add(b.0[l], c.0[l])))
    }
    #[inline(always)]
    unsafe fn load_ptr(p: *const T) -> Self {
        // SAFETY: the caller's contract (4 readable elements).
        Lanes4(unsafe { std::ptr::read_unaligned(p as *const [T; 4]) })
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut T) {
        // SAFETY: the caller's contract (4 writable elements).
        unsafe { std::ptr::write_unaligned(p as *mut [T; 4], self.0) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut T, n: usize) {
        // SAFETY: the caller's contract (n writable elements, n ≤ 4).
        unsafe { std::ptr::copy_nonoverlapping(self.0.as_ptr(), p, n.min(4)) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Reg;
    use std::arch::x86_64::*;
    macro_rules! reg {
        ($ty:ty, $t:ty, $l:expr, $zero:ident, $splat:ident, $load:ident, $store:ident, $fma:ident, $first:ident) => {
            impl Reg<$t> for $ty {
                const LANES: usize = $l;
                #[inline(always)]
                fn zero() -> Self {
                    // SAFETY (all five): these registers are used only by code that the multiversion
                    // dispatcher runs after checking the CPU has the instruction set; loads and stores
                    // go through slices of at least LANES elements (checked by slicing).
                    unsafe { $zero() }
                }
                #[inline(always)]
                fn splat(x: $t) -> Self {
                    unsafe { $splat(x) }
                }
                #[inline(always)]
                fn load(x: &[$t]) -> Self {
                    unsafe { $load(x[..$l].as_ptr()) }
                }
                #[inline(always)]
                fn store(self, x: &mut [$t]) {
                    unsafe { $store(x[..$l].as_mut_ptr(), self) }
                }
                #[inline(always)]
                fn fma(self, b: Self, c: Self) -> Self {
                    unsafe { $fma(self, b, c) }
                }
                #[inline(always)]
                unsafe fn load_ptr(p: *const $t) -> Self {
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn store_ptr(self, p: *mut $t) {
                    unsafe { $store(p, self) }
                }
                #[inline(always)]
                unsafe fn store_first(self, p: *mut $t, n: usize) {
                    unsafe { $first(p, self, n) }
                }
            }
        };
    }
    reg!(__m512, f32, 16, _mm512_setzero_ps, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps, first_ps512);
    reg!(__m512d, f64, 8, _mm512_setzero_pd, _mm512_set1_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_fmadd_pd, first_pd512);
    reg!(__m256, f32, 8, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps, first_ps256);
    reg!(__m256d, f64, 4, _mm256_setzero_pd, _mm256_set1_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_fmadd_pd, first_pd256);

    // Masked stores of the first n lanes (masked-off lanes are not written and cannot fault).
    // SAFETY (all four): called only from `store_first`, under its contract, where the features exist.
    #[inline(always)]
    unsafe fn first_ps512(p: *mut f32, v: __m512, n: usize) {
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n.min(16)) - 1) as __mmask16, v) }
    }
    #[inline(always)]
    unsafe fn first_pd512(p: *mut f64, v: __m512d, n: usize) {
        unsafe { _mm512_mask_storeu_pd(p, ((1u32 << n.min(8)) - 1) as __mmask8, v) }
    }
    /// A lane mask of the first n of `lanes` 32-bit (`wide` = 1) or 64-bit (`wide` = 2) lanes.
    #[inline(always)]
    unsafe fn mask256(n: usize, wide: i64) -> __m256i {
        unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32((n as i64 * wide) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
    }
    #[inline(always)]
    unsafe fn first_ps256(p: *mut f32, v: __m256, n: usize) {
        unsafe { _mm256_maskstore_ps(p, mask256(n.min(8), 1), v) }
    }
    #[inline(always)]
    unsafe fn first_pd256(p: *mut f64, v: __m256d, n: usize) {
        unsafe { _mm256_maskstore_pd(p, mask256(n.min(4), 2), v) }
    }
}

/// An instruction set as a type: its registers for f32 and f64, and its level.
pub(crate) trait Simd {
    /// The level (see [`Isa`]).
    const ISA: Isa;
    /// A register of f32 lanes.
    type R32: Transpose<f32>;
    /// A register of f64 lanes.
    type R64: Transpose<f64>;
}
/// Plain Rust (four-lane arrays, which LLVM vectorizes as it can).
pub(crate) struct Portable;
impl Simd for Portable {
    const ISA: Isa = Isa::Portable;
    type R32 = Lanes4<f32>;
    type R64 = Lanes4<f64>;
}
/// AVX2 with FMA: 256-bit registers.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;
#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const ISA: Isa = Isa::Avx2;
    type R32 = std::arch::x86_64::__m256;
    type R64 = std::arch::x86_64::__m256d;
}
/// AVX-512F (with VL, AVX2 and FMA): 512-bit registers.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;
#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const ISA: Isa = Isa::Avx512;
    type R32 = std::arch::x86_64::__m512;
    type R64 = std::arch::x86_64::__m512d;
}

/// Defines functions `$name(isa, args…)` that run `$imp::<T, S>(args…)` compiled for the instruction
/// set `isa` (a caller reads [`super::best_isa`] once per kernel call and passes it to every part, so
/// that they agree on the tile shapes; levels above what the CPU has are lowered to it): the same generic code, inlined into a `#[target_feature]` copy per
/// level. The features each copy enables are exactly those `detect` checks for its level.
macro_rules! multiversion {
    ($($vis:vis fn $name:ident<$T:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $imp:ident;)*) => {$(
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$T: $bound>(isa: $crate::backend::cpu::Isa, $($arg: $ty),*) $(-> $ret)? {
            let isa = isa.min($crate::backend::cpu::detected());
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
                    $imp::<$T, $crate::backend::cpu::simd::Avx512>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
                    $imp::<$T, $crate::backend::cpu::simd::Avx2>($($arg),*)
                }
                match isa {
                    // SAFETY: detected() checked that the CPU has these features, and isa is at most it.
                    $crate::backend::cpu::Isa::Avx512 => return unsafe { avx512::<$T>($($arg),*) },
                    // SAFETY: as above.
                    $crate::backend::cpu::Isa::Avx2 => return unsafe { avx2::<$T>($($arg),*) },
                    $crate::backend::cpu::Isa::Portable => {}
                }
            }
            let _ = isa;
            $imp::<$T, $crate::backend::cpu::simd::Portable>($($arg),*)
        }
    )*};
}
pub(crate) use multiversion;
