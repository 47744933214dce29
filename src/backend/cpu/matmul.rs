//! Packed, register-tiled matrix multiply with optionally transposed operands.
//!
//! C (m×n) = op(A)·op(B), all row-major, where op(A) is A stored m×k, or with `ta` the transpose of A
//! stored k×m (likewise B: k×n, or with `tb` stored n×k). Transposed operands cost nothing extra: both
//! operands are packed anyway. B is packed once into column panels of NR columns (k×NR contiguous, zero
//! padded); each task packs its block of MR rows of A into k×MR (zero padded). Threads take blocks of
//! MR rows of C; an MR×NR register tile of C accumulates over the *whole* k range in ascending order,
//! one fused multiply-add per step, starting from zero. Every C element therefore sees the same
//! sequence of correctly rounded FMAs whatever the thread count, the layout of the operands, the tile
//! shape or the instruction set: the AVX-512 and AVX2+FMA paths (selected at run time) and the portable
//! path give identical bits.
//!
//! Tiles: 6×16 f32 (6×8 f64) for AVX2 and portable code, written as plain loops that LLVM vectorizes
//! into 12 accumulator registers; 8×32 f32 (8×16 f64) for AVX-512, written with intrinsics (16 zmm
//! accumulators: LLVM's auto-vectorizer keeps to 256-bit vectors here and spills).

use super::float::Float;
use super::{best_isa, Isa};
use crate::error::{shape_err, Result};
use rayon::prelude::*;

/// Products of at most this many multiply-adds (about 10 µs of one core) run on the calling thread.
const SEQUENTIAL_MACS: usize = 1 << 20;

/// C = op(A)·op(B) (m×n) into `c` (length m·n, overwritten): op(A) is `a` as m×k, or with `ta` the
/// transpose of `a` stored k×m; op(B) is `b` as k×n, or with `tb` the transpose of `b` stored n×k.
/// Bitwise equal to transposing first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_t_into<T: Float>(
    op: &'static str,
    c: &mut [T],
    a: &[T],
    b: &[T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Result<()> {
    matmul_isa(op, best_isa(), c, a, b, m, k, n, ta, tb)
}

#[allow(clippy::too_many_arguments)]
fn matmul_isa<T: Float>(
    op: &'static str,
    isa: Isa,
    c: &mut [T],
    a: &[T],
    b: &[T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Result<()> {
    if a.len() != m * k || b.len() != k * n || c.len() != m * n {
        return shape_err(op, format!("matmul operands of {}, {} and {} elements do not fit {m}x{k}x{n}", a.len(), b.len(), c.len()));
    }
    if k == 0 {
        c.fill(T::ZERO);
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    // Two vector registers of columns per tile row. AVX2: 6 rows, so 12 accumulators, 2 B vectors and
    // one broadcast A value fit the 16 registers; AVX-512: 8 rows, 16 of the 32 registers.
    let f32 = std::mem::size_of::<T>() == 4;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if f32 => gemm::<T, 8, 32>(op, isa, a, b, c, m, k, n, ta, tb),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => gemm::<T, 8, 16>(op, isa, a, b, c, m, k, n, ta, tb),
        _ if f32 => gemm::<T, 6, 16>(op, isa, a, b, c, m, k, n, ta, tb),
        _ => gemm::<T, 6, 8>(op, isa, a, b, c, m, k, n, ta, tb),
    }
}

/// dst[..w] = src[..w] for w ≤ N; the full-width case is a fixed-size copy (vector moves, no memcpy
/// call).
#[inline(always)]
fn copy_upto<T: Copy, const N: usize>(dst: &mut [T], src: &[T], w: usize) {
    if w == N {
        dst[..N].copy_from_slice(&src[..N]);
    } else {
        dst[..w].copy_from_slice(&src[..w]);
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm<T: Float, const MR: usize, const NR: usize>(
    op: &'static str,
    isa: Isa,
    a: &[T],
    b: &[T],
    c: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Result<()> {
    // Pack B: panel p holds columns [p·NR, p·NR + NR) of op(B) as k rows of NR (zero padded).
    // Small products run on the calling thread: waking the pool would cost more than the work.
    let parallel = m * k * n > SEQUENTIAL_MACS;
    let mut packed = super::pool::for_overwrite(op, n.div_ceil(NR) * k * NR)?;
    let work = if parallel { usize::MAX } else { 0 };
    super::for_chunks(&mut packed, k * NR, work, |p, dst| {
        let j0 = p * NR;
        let w = NR.min(n - j0);
        if w < NR {
            dst.fill(T::ZERO);
        }
        if tb && w == NR {
            // B stored n×k: gather one column of the NR rows per step, a contiguous NR-wide store.
            let src: [&[T]; NR] = std::array::from_fn(|j| &b[(j0 + j) * k..(j0 + j + 1) * k]);
            for (kk, d) in dst.chunks_exact_mut(NR).enumerate() {
                for j in 0..NR {
                    d[j] = src[j][kk];
                }
            }
        } else if tb {
            for j in 0..w {
                for (kk, &v) in b[(j0 + j) * k..(j0 + j + 1) * k].iter().enumerate() {
                    dst[kk * NR + j] = v;
                }
            }
        } else {
            for kk in 0..k {
                copy_upto::<T, NR>(&mut dst[kk * NR..], &b[kk * n + j0..], w);
            }
        }
    });
    let run = |ap: &mut Vec<T>, (blk, cblk): (usize, &mut [T])| {
        let i0 = blk * MR;
        let a = ABlock { a, i0, rows: MR.min(m - i0), m, k, ta };
        match isa {
            // SAFETY: best_isa() checked that the CPU supports AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { block_avx2::<T, MR, NR>(a, ap, &packed, cblk, n) },
            // SAFETY: best_isa() checked that the CPU supports AVX-512F (and VL, AVX2, FMA).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { block_avx512::<T, MR, NR>(a, ap, &packed, cblk, n) },
            _ => block::<T, MR, NR>(a, ap, &packed, cblk, n),
        }
    };
    if parallel {
        c.par_chunks_mut(MR * n).enumerate().for_each_init(|| vec![T::ZERO; k * MR], run);
    } else {
        let mut ap = vec![T::ZERO; k * MR];
        c.chunks_mut(MR * n).enumerate().for_each(|x| run(&mut ap, x));
    }
    super::pool::recycle(packed);
    Ok(())
}

/// A block of MR rows of op(A): rows i0 .. i0 + rows (rows < MR only at the bottom edge).
#[derive(Clone, Copy)]
struct ABlock<'a, T> {
    a: &'a [T],
    i0: usize,
    rows: usize,
    m: usize,
    k: usize,
    ta: bool,
}

impl<T: Float> ABlock<'_, T> {
    /// Packs the block: ap[kk·MR + r] = op(A)[i0 + r, kk], rows past the edge zero.
    #[inline(always)]
    fn pack<const MR: usize>(&self, ap: &mut [T]) {
        let (a, i0, rows, m, k) = (self.a, self.i0, self.rows, self.m, self.k);
        if rows < MR {
            ap.fill(T::ZERO);
        }
        if self.ta {
            for kk in 0..k {
                copy_upto::<T, MR>(&mut ap[kk * MR..], &a[kk * m + i0..], rows);
            }
        } else if rows == MR {
            // Row-major A: gather one column of the MR rows per step, a contiguous MR-wide store.
            let src: [&[T]; MR] = std::array::from_fn(|r| &a[(i0 + r) * k..(i0 + r + 1) * k]);
            for (kk, dst) in ap.chunks_exact_mut(MR).enumerate() {
                for r in 0..MR {
                    dst[r] = src[r][kk];
                }
            }
        } else {
            for r in 0..rows {
                for (kk, &v) in a[(i0 + r) * k..(i0 + r + 1) * k].iter().enumerate() {
                    ap[kk * MR + r] = v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<T: Float, const MR: usize, const NR: usize>(a: ABlock<T>, ap: &mut [T], packed: &[T], c: &mut [T], n: usize) {
    block::<T, MR, NR>(a, ap, packed, c, n)
}

/// [`block`] with the AVX-512 tile: 8 rows × 2 zmm vectors of columns (MR = 8, NR·size = 128 bytes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512<T: Float, const MR: usize, const NR: usize>(a: ABlock<T>, ap: &mut [T], packed: &[T], c: &mut [T], n: usize) {
    assert!(MR == 8 && NR * std::mem::size_of::<T>() == 128, "AVX-512 tile is 8 x 128 bytes");
    a.pack::<MR>(ap);
    let (rows, k) = (a.rows, a.k);
    let mut acc = [[T::ZERO; NR]; MR];
    for (p, bp) in packed.chunks_exact(k * NR).enumerate() {
        let out = acc.as_flattened_mut();
        if std::mem::size_of::<T>() == 4 {
            tile_avx512_f32(bytemuck::cast_slice(ap), bytemuck::cast_slice(bp), bytemuck::cast_slice_mut(out));
        } else {
            tile_avx512_f64(bytemuck::cast_slice(ap), bytemuck::cast_slice(bp), bytemuck::cast_slice_mut(out));
        }
        let j0 = p * NR;
        let w = NR.min(n - j0);
        for r in 0..rows {
            copy_upto::<T, NR>(&mut c[r * n + j0..], &acc[r], w);
        }
    }
}

/// The 8×32 f32 tile of [`tile`] with intrinsics: out[r·32 + j] = Σ_kk ap[kk·8 + r]·bp[kk·32 + j],
/// kk ascending, one FMA per step from zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_f32(ap: &[f32], bp: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; 8];
    for (a, b) in ap.chunks_exact(8).zip(bp.chunks_exact(32)) {
        let (b0, b1) = (_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b[16..].as_ptr()));
        for r in 0..8 {
            let x = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    let out: &mut [f32; 256] = out.try_into().unwrap();
    for r in 0..8 {
        _mm512_storeu_ps(out[r * 32..].as_mut_ptr(), acc[r][0]);
        _mm512_storeu_ps(out[r * 32 + 16..].as_mut_ptr(), acc[r][1]);
    }
}

/// The 8×16 f64 tile of [`tile`] with intrinsics (see [`tile_avx512_f32`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_f64(ap: &[f64], bp: &[f64], out: &mut [f64]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_pd(); 2]; 8];
    for (a, b) in ap.chunks_exact(8).zip(bp.chunks_exact(16)) {
        let (b0, b1) = (_mm512_loadu_pd(b.as_ptr()), _mm512_loadu_pd(b[8..].as_ptr()));
        for r in 0..8 {
            let x = _mm512_set1_pd(a[r]);
            acc[r][0] = _mm512_fmadd_pd(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_pd(x, b1, acc[r][1]);
        }
    }
    let out: &mut [f64; 128] = out.try_into().unwrap();
    for r in 0..8 {
        _mm512_storeu_pd(out[r * 16..].as_mut_ptr(), acc[r][0]);
        _mm512_storeu_pd(out[r * 16 + 8..].as_mut_ptr(), acc[r][1]);
    }
}

/// One block of MR rows of C (`c` holds its rows, possibly fewer than MR) against every panel of B:
/// packs the block of A into `ap`, then one tile per panel.
#[inline(always)]
fn block<T: Float, const MR: usize, const NR: usize>(a: ABlock<T>, ap: &mut [T], packed: &[T], c: &mut [T], n: usize) {
    a.pack::<MR>(ap);
    let (rows, k) = (a.rows, a.k);
    for (p, bp) in packed.chunks_exact(k * NR).enumerate() {
        let acc = tile::<T, MR, NR>(ap, bp);
        let j0 = p * NR;
        let w = NR.min(n - j0);
        for r in 0..rows {
            copy_upto::<T, NR>(&mut c[r * n + j0..], &acc[r], w);
        }
    }
}

/// One MR×NR tile: acc[r][j] = Σ_kk ap[kk, r]·bp[kk, j], kk ascending, one FMA per step from zero.
#[inline(always)]
fn tile<T: Float, const MR: usize, const NR: usize>(ap: &[T], bp: &[T]) -> [[T; NR]; MR] {
    let mut acc = [[T::ZERO; NR]; MR];
    for (a, b) in ap.chunks_exact(MR).zip(bp.chunks_exact(NR)) {
        for r in 0..MR {
            for j in 0..NR {
                acc[r][j] = a[r].mul_add(b[j], acc[r][j]);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::super::detect;
    use super::*;

    /// The reference: each element an FMA chain over k ascending from zero.
    fn reference<T: Float>(a: &[T], b: &[T], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<T> {
        let mut c = vec![T::ZERO; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = T::ZERO;
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    s = x.mul_add(y, s);
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    /// Every instruction set this CPU can run.
    fn isas() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= detect()).collect()
    }

    fn matmul_t<T: Float>(a: &[T], b: &[T], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<T> {
        let mut c = vec![T::ZERO; m * n];
        matmul_t_into("test", &mut c, a, b, m, k, n, ta, tb).unwrap();
        c
    }

    fn matmul<T: Float>(a: &[T], b: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
        matmul_t(a, b, m, k, n, false, false)
    }

    const SHAPES: &[(usize, usize, usize)] =
        &[(1, 1, 1), (3, 5, 7), (4, 16, 16), (6, 16, 8), (9, 33, 17), (7, 300, 37), (13, 2, 40), (5, 0, 3)];

    #[test]
    fn matches_naive_f64() {
        for &(m, k, n) in SHAPES {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64 - 6.0) / 3.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64 - 5.0) / 7.0).collect();
            let c = matmul(&a, &b, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                    assert!((c[i * n + j] - want).abs() < 1e-12, "{m}x{k}x{n} at ({i},{j})");
                }
            }
        }
    }

    /// Every instruction set, every layout, f32 and f64: the same bits as the scalar FMA chain.
    #[test]
    fn simd_and_portable_paths_agree_bitwise() {
        fn check<T: Float>(cast: impl Fn(f32) -> T) {
            for &(m, k, n) in SHAPES {
                let a: Vec<T> = (0..m * k).map(|i| cast(((i * 7919 % 1013) as f32).sin())).collect();
                let b: Vec<T> = (0..k * n).map(|i| cast(((i * 104729 % 997) as f32).cos())).collect();
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let want: Vec<f64> = reference(&a, &b, m, k, n, ta, tb).iter().map(|x| x.to_f64()).collect();
                    for isa in isas() {
                        let mut c = vec![T::ZERO; m * n];
                        matmul_isa("test", isa, &mut c, &a, &b, m, k, n, ta, tb).unwrap();
                        let got: Vec<f64> = c.iter().map(|x| x.to_f64()).collect();
                        assert!(
                            got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{isa:?} {m}x{k}x{n} ta={ta} tb={tb} ({})",
                            std::any::type_name::<T>()
                        );
                    }
                }
            }
        }
        check::<f32>(|x| x);
        check::<f64>(|x| x as f64 * 1.000_000_1);
    }

    #[test]
    fn transposed_operands_match_explicit_transposes() {
        let (m, k, n) = (11, 23, 19);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 17) as f32 - 8.0) / 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0).collect();
        let t = |x: &[f32], r: usize, c: usize| -> Vec<f32> { (0..c * r).map(|p| x[(p % r) * c + p / r]).collect() };
        let (at, bt) = (t(&a, m, k), t(&b, k, n));
        let base = matmul(&a, &b, m, k, n);
        assert_eq!(matmul_t(&at, &b, m, k, n, true, false), base);
        assert_eq!(matmul_t(&a, &bt, m, k, n, false, true), base);
        assert_eq!(matmul_t(&at, &bt, m, k, n, true, true), base);
    }

    /// Small (run on the calling thread) and large (parallel) products: the same bits as the reference
    /// for any thread count.
    #[test]
    fn same_bits_for_any_thread_count() {
        for (m, k, n) in [(37, 129, 45), (83, 301, 77)] {
            assert_eq!(m * k * n > SEQUENTIAL_MACS, m > 50);
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32).cos()).collect();
            let want: Vec<u32> = reference(&a, &b, m, k, n, false, true).iter().map(|x| x.to_bits()).collect();
            for t in [1, 2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                let got = pool.install(|| matmul_t(&a, &b, m, k, n, false, true));
                assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want, "{m}x{k}x{n} on {t} threads");
            }
        }
    }
}
