//! The CPU backend: rayon-parallel, bitwise-deterministic kernels on contiguous row-major slices.
//!
//! Parallelism is always over *outputs* in fixed-size chunks, and each output element is computed by
//! one thread in a fixed order, so results are bitwise identical for any `RAYON_NUM_THREADS`.

pub mod attention;
pub mod conv;
pub(crate) mod math;
mod matmul;
pub(crate) mod pool;
pub use matmul::{matmul, matmul_t, matmul_t_into};

use crate::dtype::Float;
use rayon::prelude::*;

/// Elements per parallel task for element-wise work: large enough to amortize scheduling.
pub(crate) const CHUNK: usize = 1 << 14;

/// Runs `f(i, piece)` on the `chunk`-sized pieces of `out` (`chunk` > 0): on the rayon pool, or on the
/// calling thread when the whole job (`work`: about the number of elements it touches) is at most
/// [`CHUNK`], where waking the pool and waiting for it costs more than the work. Each piece is computed
/// the same way either way, so the results are the same bits.
pub(crate) fn for_chunks<T: Send>(out: &mut [T], chunk: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if work <= CHUNK {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Whether the CPU has AVX2 and FMA (checked once by std, then cached).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The instruction sets the SIMD kernels (matmul, conv, attention) are compiled for, worst to best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Plain Rust, any CPU.
    Portable = 0,
    /// AVX2 with FMA.
    Avx2 = 1,
    /// AVX-512F (with FMA).
    Avx512 = 2,
}

/// The best instruction set this CPU runs (std caches the feature checks). Every kernel gives the same
/// bits on every instruction set; this only picks the fastest copy.
pub(crate) fn best_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx512;
        }
        if has_avx2_fma() {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

#[inline(always)]
fn map_slice<T: Copy, F: Fn(T) -> T>(out: &mut [T], xs: &[T], f: &F) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = f(x);
    }
}

/// [`map_slice`] compiled for AVX2+FMA: `mul_add` becomes one instruction instead of a libm call, and
/// simple bodies vectorize 8 wide. Same bits: every element is computed by the same IEEE operations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_slice_avx2<T: Copy, F: Fn(T) -> T>(out: &mut [T], xs: &[T], f: &F) {
    map_slice(out, xs, f)
}

/// `f` applied to every element (parallel over fixed chunks; element-wise, so trivially deterministic).
/// Pass a closure whose operation is known at compile time (not a runtime `match` per element), so it
/// inlines into the loop and vectorizes.
pub fn map<T: Float, F: Fn(T) -> T + Sync>(xs: &[T], f: &F) -> Vec<T> {
    let mut out = pool::for_overwrite(xs.len());
    let simd = has_avx2_fma();
    for_chunks(&mut out, CHUNK, xs.len(), |i, o| {
        let x = &xs[i * CHUNK..i * CHUNK + o.len()];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: has_avx2_fma() checked that the CPU supports AVX2 and FMA.
            return unsafe { map_slice_avx2(o, x, f) };
        }
        let _ = simd;
        map_slice(o, x, f)
    });
    out
}

/// Row-major strides of `dims` stretched to `out` for broadcasting (0 on broadcast dimensions).
pub(crate) fn broadcast_strides(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let mut s = vec![0; r];
    let mut acc = 1;
    for i in (0..dims.len()).rev() {
        let o = i + r - dims.len();
        s[o] = if dims[i] == 1 { 0 } else { acc };
        acc *= dims[i];
    }
    s
}

/// out[j] = f(a[j·sa], b[j·sb]) for strides 0 or 1 (a broadcast scalar or a contiguous row), with the
/// common cases spelled out so they vectorize.
#[inline(always)]
fn zip_row<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], sa: usize, b: &[T], sb: usize, f: &F) {
    let n = out.len();
    match (sa, sb) {
        (1, 1) => {
            for ((o, &x), &y) in out.iter_mut().zip(&a[..n]).zip(&b[..n]) {
                *o = f(x, y);
            }
        }
        (1, 0) => {
            let y = b[0];
            for (o, &x) in out.iter_mut().zip(&a[..n]) {
                *o = f(x, y);
            }
        }
        (0, 1) => {
            let x = a[0];
            for (o, &y) in out.iter_mut().zip(&b[..n]) {
                *o = f(x, y);
            }
        }
        _ => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = f(a[j * sa], b[j * sb]);
            }
        }
    }
}

/// [`zip_row`] compiled for AVX2+FMA (same bits; see [`map_slice_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn zip_row_avx2<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], sa: usize, b: &[T], sb: usize, f: &F) {
    zip_row(out, a, sa, b, sb, f)
}

#[inline(always)]
fn zip_row_dispatch<T: Copy, F: Fn(T, T) -> T>(simd: bool, out: &mut [T], a: &[T], sa: usize, b: &[T], sb: usize, f: &F) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the caller got `simd` from has_avx2_fma().
        return unsafe { zip_row_avx2(out, a, sa, b, sb, f) };
    }
    let _ = simd;
    zip_row(out, a, sa, b, sb, f)
}

/// `f(a, b)` element-wise with NumPy broadcasting of `a` (dims `ad`) and `b` (dims `bd`) to `out`.
/// As with [`map`], pass a closure whose operation is fixed at compile time.
pub fn zip<T: Float, F: Fn(T, T) -> T + Sync>(a: &[T], ad: &[usize], b: &[T], bd: &[usize], out: &[usize], f: F) -> Vec<T> {
    let n: usize = out.iter().product();
    let mut o = pool::for_overwrite(n);
    let simd = has_avx2_fma();
    if ad == out && bd == out {
        for_chunks(&mut o, CHUNK, n, |i, o| zip_row_dispatch(simd, o, &a[i * CHUNK..], 1, &b[i * CHUNK..], 1, &f));
        return o;
    }
    if n == 0 {
        return o;
    }
    let sa = broadcast_strides(ad, out);
    let sb = broadcast_strides(bd, out);
    let r = out.len();
    let last = if r == 0 { 1 } else { out[r - 1] };
    let (la, lb) = if r == 0 { (0, 0) } else { (sa[r - 1], sb[r - 1]) };
    // Rows of the output, grouped so a task has about CHUNK elements.
    let rows_per_task = (CHUNK / last).max(1);
    for_chunks(&mut o, last * rows_per_task, n, |task, rows| {
        for (i, orow) in rows.chunks_mut(last).enumerate() {
            // Offsets of this row's first element.
            let (mut oa, mut ob, mut rem) = (0, 0, task * rows_per_task + i);
            for d in (0..r.saturating_sub(1)).rev() {
                let i = rem % out[d];
                rem /= out[d];
                oa += i * sa[d];
                ob += i * sb[d];
            }
            zip_row_dispatch(simd, orow, &a[oa..], la, &b[ob..], lb, &f);
        }
    });
    o
}

/// Sums over the middle axis of an (outer, n, inner) view: out[o, i] = Σ_j x[o, j, i], j ascending.
pub fn sum_axis<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    let mut out = pool::zeroed(outer * inner);
    if out.is_empty() {
        return out; // par_chunks_mut(0) would panic when inner == 0
    }
    if inner == 1 {
        let rows = (CHUNK / n.max(1)).max(1);
        for_chunks(&mut out, rows, outer * n, |t, y| {
            for (r, y) in y.iter_mut().enumerate() {
                let o = t * rows + r;
                *y = sum_contiguous(&x[o * n..(o + 1) * n]);
            }
        });
    } else {
        for_chunks(&mut out, inner, outer * n * inner, |o, y| {
            for j in 0..n {
                let row = &x[(o * n + j) * inner..(o * n + j + 1) * inner];
                for (y, &v) in y.iter_mut().zip(row) {
                    *y += v;
                }
            }
        });
    }
    out
}

/// Sum of a contiguous slice with 8 interleaved partial sums combined in a fixed tree: vectorizes, is
/// more accurate than a running sum, and its order depends only on the length.
pub fn sum_contiguous<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let chunks = x.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    for (k, &v) in rem.iter().enumerate() {
        acc[k] += v;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Max over the middle axis of (outer, n, inner), with the index of the first maximum (NaN wins).
pub fn max_axis<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> (Vec<T>, Vec<usize>) {
    let mut vals = vec![T::ZERO; outer * inner];
    let mut idx = vec![0usize; outer * inner];
    vals.par_iter_mut().zip(idx.par_iter_mut()).enumerate().for_each(|(p, (v, ix))| {
        let (o, i) = (p / inner, p % inner);
        let mut best = x[o * n * inner + i];
        let mut bi = 0;
        for j in 1..n {
            let c = x[(o * n + j) * inner + i];
            if c > best || (c.is_nan() && !best.is_nan()) {
                best = c;
                bi = j;
            }
        }
        *v = best;
        *ix = bi;
    });
    (vals, idx)
}

/// Softmax-family kernel over the middle axis of (outer, n, inner). `mode` 0: softmax, 1: log_softmax,
/// 2: logsumexp (output has outer·inner elements). Max-shifted for stability; fixed order.
pub fn softmax_axis<T: Float>(x: &[T], outer: usize, n: usize, inner: usize, mode: u8) -> Vec<T> {
    let out_len = if mode == 2 { outer * inner } else { outer * n * inner };
    let mut out = vec![T::ZERO; out_len];
    let per = if mode == 2 { inner } else { n * inner };
    for_chunks(&mut out, per.max(1), outer * n * inner, |o, y| {
        let base = o * n * inner;
        for i in 0..inner {
            let at = |j: usize| x[base + j * inner + i];
            let mut m = T::NEG_INFINITY;
            for j in 0..n {
                if at(j) > m {
                    m = at(j);
                }
            }
            if !m.is_finite() {
                m = T::ZERO; // all −inf (or inf/NaN): let the arithmetic below propagate it
            }
            let mut s = T::ZERO;
            for j in 0..n {
                s += (at(j) - m).exp();
            }
            match mode {
                0 => {
                    let inv = T::ONE / s;
                    for j in 0..n {
                        y[j * inner + i] = (at(j) - m).exp() * inv;
                    }
                }
                1 => {
                    let l = s.ln() + m;
                    for j in 0..n {
                        y[j * inner + i] = at(j) - l;
                    }
                }
                _ => y[i] = s.ln() + m,
            }
        }
    });
    out
}

/// Copies `x` (dims `d`) into the axis permutation `perm` (output dim i is input dim `perm[i]`).
pub fn permute<T: Copy + Send + Sync + Default>(x: &[T], d: &[usize], perm: &[usize]) -> Vec<T> {
    let r = d.len();
    let od: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
    let n: usize = d.iter().product();
    let mut out = vec![T::default(); n];
    if n == 0 {
        return out;
    }
    let mut is = vec![1; r];
    for i in (0..r.saturating_sub(1)).rev() {
        is[i] = is[i + 1] * d[i + 1];
    }
    let ps: Vec<usize> = perm.iter().map(|&p| is[p]).collect(); // input stride of each output dim
    let last = if r == 0 { 1 } else { od[r - 1] };
    let ls = if r == 0 { 0 } else { ps[r - 1] };
    for_chunks(&mut out, last, n, |row, orow| {
        let (mut off, mut rem) = (0, row);
        for k in (0..r.saturating_sub(1)).rev() {
            off += (rem % od[k]) * ps[k];
            rem /= od[k];
        }
        for (j, o) in orow.iter_mut().enumerate() {
            *o = x[off + j * ls];
        }
    });
    out
}

/// `N` outputs per index: `out[j][k] = f(k)[j]`, computed in parallel (fused multi-output kernels such as
/// optimizer updates). Element-wise, so deterministic.
pub fn zip_n<T: Float, const N: usize>(len: usize, f: impl Fn(usize) -> [T; N] + Sync + Send) -> [Vec<T>; N] {
    let tmp: Vec<[T; N]> = (0..len).into_par_iter().with_min_len(CHUNK).map(f).collect();
    std::array::from_fn(|j| tmp.iter().map(|a| a[j]).collect())
}
