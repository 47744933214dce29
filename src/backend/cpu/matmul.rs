//! Cache-blocked, register-tiled matrix multiply.
//!
//! C (m×n) = A (m×k) · B (k×n), all row-major. B is packed once into column panels of `NR` columns
//! (k×NR, contiguous); threads take blocks of `MR` rows of C; a 4×NR register tile of C accumulates over
//! the *whole* k range in ascending order with fused multiply-adds. Every C element therefore sees the
//! same sequence of correctly rounded FMAs whatever the thread count, tile position or instruction set:
//! the AVX2+FMA path (selected at run time) and the portable path give identical bits.

use crate::dtype::Float;
use rayon::prelude::*;

const MR: usize = 4;

/// C = A·B for row-major A (m×k) and B (k×n); returns C (m×n).
pub fn matmul<T: Float>(a: &[T], b: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    let mut c = vec![T::ZERO; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    let nr = T::MATMUL_NR;
    let panels = n.div_ceil(nr);
    // Pack B into panels: panel p holds columns [p·nr, p·nr + nr) as k rows of nr (zero padded).
    let mut packed = vec![T::ZERO; panels * k * nr];
    packed.par_chunks_mut(k * nr).enumerate().for_each(|(p, dst)| {
        let j0 = p * nr;
        let w = nr.min(n - j0);
        for kk in 0..k {
            dst[kk * nr..kk * nr + w].copy_from_slice(&b[kk * n + j0..kk * n + j0 + w]);
        }
    });
    let avx = simd_available();
    c.par_chunks_mut(MR * n).enumerate().for_each(|(blk, cblk)| {
        let i0 = blk * MR;
        let rows = MR.min(m - i0);
        let ablk = &a[i0 * k..(i0 + rows) * k];
        for p in 0..panels {
            let j0 = p * nr;
            let w = nr.min(n - j0);
            let bp = &packed[p * k * nr..(p + 1) * k * nr];
            if avx {
                // SAFETY: simd_available() checked that the CPU supports AVX2 and FMA.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    tile_avx2(ablk, bp, cblk, rows, k, n, j0, w)
                }
            } else {
                tile(ablk, bp, cblk, rows, k, n, j0, w)
            }
        }
    });
    c
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<T: Float>(a: &[T], bp: &[T], c: &mut [T], rows: usize, k: usize, n: usize, j0: usize, w: usize) {
    tile(a, bp, c, rows, k, n, j0, w)
}

/// One MR×NR tile: c[r, j0..j0+w] = Σ_kk a[r, kk]·bp[kk, ..], kk ascending, FMA each step.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<T: Float>(a: &[T], bp: &[T], c: &mut [T], rows: usize, k: usize, n: usize, j0: usize, w: usize) {
    match T::MATMUL_NR {
        16 => tile_n::<T, 16>(a, bp, c, rows, k, n, j0, w),
        8 => tile_n::<T, 8>(a, bp, c, rows, k, n, j0, w),
        _ => unreachable!("MATMUL_NR is 8 or 16"),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_n<T: Float, const NR: usize>(a: &[T], bp: &[T], c: &mut [T], rows: usize, k: usize, n: usize, j0: usize, w: usize) {
    let mut acc = [[T::ZERO; NR]; MR];
    if rows == MR {
        for kk in 0..k {
            let b: &[T; NR] = bp[kk * NR..kk * NR + NR].try_into().unwrap();
            for r in 0..MR {
                let av = a[r * k + kk];
                for j in 0..NR {
                    acc[r][j] = av.mul_add(b[j], acc[r][j]);
                }
            }
        }
    } else {
        for kk in 0..k {
            let b: &[T; NR] = bp[kk * NR..kk * NR + NR].try_into().unwrap();
            for r in 0..rows {
                let av = a[r * k + kk];
                for j in 0..NR {
                    acc[r][j] = av.mul_add(b[j], acc[r][j]);
                }
            }
        }
    }
    for r in 0..rows {
        c[r * n + j0..r * n + j0 + w].copy_from_slice(&acc[r][..w]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn matches_naive_f64() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (4, 16, 16), (9, 33, 17), (5, 0, 3)] {
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
    #[test]
    fn simd_and_portable_paths_agree_bitwise() {
        let (m, k, n) = (7, 300, 37);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32).cos()).collect();
        let fast = matmul(&a, &b, m, k, n);
        let mut slow = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f32;
                for p in 0..k {
                    s = a[i * k + p].mul_add(b[p * n + j], s);
                }
                slow[i * n + j] = s;
            }
        }
        assert_eq!(fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), slow.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }
}
