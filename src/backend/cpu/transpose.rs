//! Square block transposes in registers, for the packing routines that turn rows into columns (the
//! matmul's panels of a row-major left operand or a transposed right operand).
//!
//! A scalar gather (`dst[c][r] = src[r][c]`) costs a load and a store per element, and LLVM tends to
//! turn it into hardware gathers or scatters that are slower still; packing then costs a noticeable
//! share of a product's time. An L×L block (L = the register's lane count) goes through L loads, a
//! fixed network of in-register shuffles and L stores instead. Transposing moves values and never
//! rounds, so every instruction set gives the same bits.

use super::float::Float;
use super::simd::Reg;

/// An L×L block transpose for a register type of L lanes.
pub(crate) trait Transpose<T>: Reg<T> {
    /// dst[c·ds + r] = row r's element c, for r, c < LANES.
    ///
    /// # Safety
    /// Each `rows[r]` must be valid for reading LANES elements (`rows` has LANES entries), and `dst`
    /// for writing LANES rows of LANES elements at stride `ds`.
    unsafe fn transpose(rows: &[*const T], dst: *mut T, ds: usize);
}

/// dst[kk·ds + r] = row(r)[kk] for every row r < n and kk < kc: a block of n rows × kc transposed
/// through L×L register transposes (a partial group of rows through a small buffer, the last kc % L
/// columns element by element). The rows come from a function, so callers build no pointer list.
///
/// # Safety
/// Each row must be valid for reading kc elements, and `dst` for writing kc rows of n elements at
/// stride `ds`.
#[inline(always)]
pub(crate) unsafe fn transpose_rows<T: Float, R: Transpose<T>>(
    n: usize,
    row: impl Fn(usize) -> *const T,
    kc: usize,
    dst: *mut T,
    ds: usize,
) {
    let l = R::LANES;
    let full = kc / l * l;
    let mut buf = [T::ZERO; 256];
    // Fewer rows than lanes, packed back to back (ds = n: the matmul's MR-tall panels): a destination
    // row may be stored as a whole register, its last L − n values spilling onto the rows after it,
    // which their own stores (later: rows go in ascending order) overwrite; only a store that would
    // pass the block's end is masked. Masked stores are slow on some CPUs (AMD's vmaskmovps cost a
    // quarter of a 512³ product's time on a Zen 3).
    let spill = n < l && ds == n;
    for g in 0..n.div_ceil(l) {
        let n = l.min(n - g * l);
        // A partial group repeats its first row (valid memory) and keeps only its own rows.
        let ptrs: [*const T; 16] = std::array::from_fn(|r| row(g * l + if r < n { r } else { 0 }));
        for k0 in (0..full).step_by(l) {
            let at: [*const T; 16] = std::array::from_fn(|r| ptrs[r].wrapping_add(k0));
            // SAFETY: rows hold kc ≥ k0 + l elements; dst rows k0.. hold the group's n columns.
            unsafe {
                if n == l {
                    R::transpose(&at[..l], dst.add(k0 * ds + g * l), ds);
                } else {
                    R::transpose(&at[..l], buf.as_mut_ptr(), l);
                    for c in 0..l {
                        let (v, at) = (R::load_ptr(buf.as_ptr().add(c * l)), dst.add((k0 + c) * ds + g * l));
                        if spill && (k0 + c) * n + l <= kc * n {
                            v.store_ptr(at);
                        } else {
                            v.store_first(at, n);
                        }
                    }
                }
            }
        }
        for kk in full..kc {
            for (r, &p) in ptrs.iter().enumerate().take(n) {
                // SAFETY: as above.
                unsafe { *dst.add(kk * ds + g * l + r) = *p.add(kk) };
            }
        }
    }
}

/// The scalar transpose (the portable registers, and the reference for the tests).
///
/// # Safety
/// As for [`Transpose::transpose`] with `l` lanes.
#[inline(always)]
unsafe fn scalar<T: Copy>(l: usize, rows: &[*const T], dst: *mut T, ds: usize) {
    for (r, &row) in rows.iter().enumerate().take(l) {
        for c in 0..l {
            // SAFETY: the caller's contract.
            unsafe { *dst.add(c * ds + r) = *row.add(c) };
        }
    }
}

impl<T: Float> Transpose<T> for super::simd::Lanes4<T> {
    #[inline(always)]
    unsafe fn transpose(rows: &[*const T], dst: *mut T, ds: usize) {
        // SAFETY: the caller's contract.
        unsafe { scalar(4, rows, dst, ds) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Transpose;
    use std::arch::x86_64::*;

    impl Transpose<f32> for __m512 {
        #[inline(always)]
        unsafe fn transpose(rows: &[*const f32], dst: *mut f32, ds: usize) {
            // SAFETY (the whole block): the caller's contract covers every load and store; the
            // register code runs only where the dispatcher found AVX-512F.
            unsafe {
                let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(rows[i]));
                // Stage 1: interleave pairs of rows (2×2 blocks of single elements).
                let t: [__m512; 16] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i & 1 == 0 {
                        _mm512_unpacklo_ps(a, b)
                    } else {
                        _mm512_unpackhi_ps(a, b)
                    }
                });
                // Stage 2: 4×4 blocks within each 128-bit lane.
                let u: [__m512; 16] = std::array::from_fn(|i| {
                    let base = (i & !3) | (i & 1);
                    let (a, b) = (t[base], t[base + 2]);
                    if i & 2 == 0 {
                        _mm512_shuffle_ps::<0x44>(a, b)
                    } else {
                        _mm512_shuffle_ps::<0xEE>(a, b)
                    }
                });
                // Stages 3 and 4: move 128-bit lanes across rows 4 and 8 apart.
                let v: [__m512; 16] = std::array::from_fn(|i| {
                    let base = (i & !7) | (i & 3);
                    let (a, b) = (u[base], u[base + 4]);
                    if i & 4 == 0 {
                        _mm512_shuffle_f32x4::<0x88>(a, b)
                    } else {
                        _mm512_shuffle_f32x4::<0xDD>(a, b)
                    }
                });
                for i in 0..16 {
                    let base = i & 7;
                    let (a, b) = (v[base], v[base + 8]);
                    let w = if i & 8 == 0 { _mm512_shuffle_f32x4::<0x88>(a, b) } else { _mm512_shuffle_f32x4::<0xDD>(a, b) };
                    _mm512_storeu_ps(dst.add(swap_bits01(i) * ds), w);
                }
            }
        }
    }

    /// The column held by register i after the f32 networks (unpack, then 64-bit shuffles, leave
    /// columns 1 and 2 of each group of four swapped; worked out by simulating the network, and checked
    /// by the tests).
    #[inline(always)]
    const fn swap_bits01(i: usize) -> usize {
        (i & !3) | ((i & 1) << 1) | ((i >> 1) & 1)
    }

    impl Transpose<f64> for __m512d {
        #[inline(always)]
        unsafe fn transpose(rows: &[*const f64], dst: *mut f64, ds: usize) {
            // SAFETY: as for f32.
            unsafe {
                let r: [__m512d; 8] = std::array::from_fn(|i| _mm512_loadu_pd(rows[i]));
                let t: [__m512d; 8] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i & 1 == 0 {
                        _mm512_unpacklo_pd(a, b)
                    } else {
                        _mm512_unpackhi_pd(a, b)
                    }
                });
                let u: [__m512d; 8] = std::array::from_fn(|i| {
                    let base = (i & !3) | (i & 1);
                    let (a, b) = (t[base], t[base + 2]);
                    if i & 2 == 0 {
                        _mm512_shuffle_f64x2::<0x88>(a, b)
                    } else {
                        _mm512_shuffle_f64x2::<0xDD>(a, b)
                    }
                });
                for i in 0..8 {
                    let base = i & 3;
                    let (a, b) = (u[base], u[base + 4]);
                    let w = if i & 4 == 0 { _mm512_shuffle_f64x2::<0x88>(a, b) } else { _mm512_shuffle_f64x2::<0xDD>(a, b) };
                    // The f64 network leaves the columns in order.
                    _mm512_storeu_pd(dst.add(i * ds), w);
                }
            }
        }
    }

    impl Transpose<f32> for __m256 {
        #[inline(always)]
        unsafe fn transpose(rows: &[*const f32], dst: *mut f32, ds: usize) {
            // SAFETY: as above (AVX2).
            unsafe {
                let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rows[i]));
                let t: [__m256; 8] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i & 1 == 0 {
                        _mm256_unpacklo_ps(a, b)
                    } else {
                        _mm256_unpackhi_ps(a, b)
                    }
                });
                let u: [__m256; 8] = std::array::from_fn(|i| {
                    let base = (i & !3) | (i & 1);
                    let (a, b) = (t[base], t[base + 2]);
                    if i & 2 == 0 {
                        _mm256_shuffle_ps::<0x44>(a, b)
                    } else {
                        _mm256_shuffle_ps::<0xEE>(a, b)
                    }
                });
                for i in 0..8 {
                    let base = i & 3;
                    let (a, b) = (u[base], u[base + 4]);
                    let w = if i & 4 == 0 { _mm256_permute2f128_ps::<0x20>(a, b) } else { _mm256_permute2f128_ps::<0x31>(a, b) };
                    _mm256_storeu_ps(dst.add(swap_bits01(i) * ds), w);
                }
            }
        }
    }

    impl Transpose<f64> for __m256d {
        #[inline(always)]
        unsafe fn transpose(rows: &[*const f64], dst: *mut f64, ds: usize) {
            // SAFETY: as above (AVX2).
            unsafe {
                let r: [__m256d; 4] = std::array::from_fn(|i| _mm256_loadu_pd(rows[i]));
                let t: [__m256d; 4] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i & 1 == 0 {
                        _mm256_unpacklo_pd(a, b)
                    } else {
                        _mm256_unpackhi_pd(a, b)
                    }
                });
                for i in 0..4 {
                    let base = i & 1;
                    let (a, b) = (t[base], t[base + 2]);
                    let w = if i & 2 == 0 { _mm256_permute2f128_pd::<0x20>(a, b) } else { _mm256_permute2f128_pd::<0x31>(a, b) };
                    _mm256_storeu_pd(dst.add(i * ds), w);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every register type's transpose equals the scalar one (checked with distinct values, so that any
    /// misplaced element shows).
    fn check<T: Float, R: Transpose<T>>() {
        check_rows::<T, R>();
        let l = R::LANES;
        let src: Vec<T> = (0..l * l * 2).map(|i| T::from_f64(i as f64 + 1.0)).collect();
        let rows: Vec<*const T> = (0..l).map(|r| src[r * 2 * l..].as_ptr()).collect();
        let (mut got, mut want) = (vec![T::ZERO; l * (l + 3)], vec![T::ZERO; l * (l + 3)]);
        // SAFETY: rows hold 2l elements each, dst l rows at stride l + 3.
        unsafe {
            R::transpose(&rows, got.as_mut_ptr(), l + 3);
            scalar(l, &rows, want.as_mut_ptr(), l + 3);
        }
        assert_eq!(got, want, "{} lanes of {}", l, std::any::type_name::<T>());
    }

    /// Blocks of any row count and length, through each register type: the plain transpose.
    fn check_rows<T: Float, R: Transpose<T>>() {
        for (nrows, kc) in [(12, 37), (6, 16), (6, 17), (4, 9), (3, 8), (16, 3), (5, 40), (32, 64), (1, 1), (2, 11)] {
            let src: Vec<T> = (0..nrows * (kc + 2)).map(|i| T::from_f64(i as f64)).collect();
            let rows: Vec<*const T> = (0..nrows).map(|r| src[r * (kc + 2)..].as_ptr()).collect();
            // At a stride with a gap (which must stay untouched), and back to back (where a row's store
            // may spill onto the next one's; the canary after the block must stay untouched).
            for ds in [nrows + 1, nrows] {
                let mut got = vec![T::from_f64(-1.0); kc * ds + 1];
                // SAFETY: rows hold kc + 2 elements; dst kc rows of nrows at stride ds.
                unsafe { transpose_rows::<T, R>(nrows, |r| rows[r], kc, got.as_mut_ptr(), ds) };
                for kk in 0..kc {
                    for r in 0..ds {
                        let want = if r < nrows { src[r * (kc + 2) + kk] } else { T::from_f64(-1.0) };
                        assert_eq!(got[kk * ds + r], want, "{nrows}x{kc} at ({kk}, {r}), stride {ds}");
                    }
                }
                assert_eq!(got[kc * ds], T::from_f64(-1.0), "{nrows}x{kc} stride {ds}: written past the block");
            }
        }
    }

    #[test]
    fn register_transposes_match_the_scalar_one() {
        check::<f32, crate::backend::cpu::simd::Lanes4<f32>>();
        check::<f64, crate::backend::cpu::simd::Lanes4<f64>>();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2() {
                check::<f32, __m256>();
                check::<f64, __m256d>();
            }
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            unsafe fn avx512() {
                check::<f32, __m512>();
                check::<f64, __m512d>();
            }
            let isa = crate::backend::cpu::best_isa();
            if isa >= crate::backend::cpu::Isa::Avx2 {
                // SAFETY: detected.
                unsafe { avx2() };
            }
            if isa >= crate::backend::cpu::Isa::Avx512 {
                // SAFETY: detected.
                unsafe { avx512() };
            }
        }
    }
}
