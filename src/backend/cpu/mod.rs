//! The CPU backend: rayon-parallel, bitwise-deterministic kernels on contiguous row-major slices.
//!
//! Parallelism is always over *outputs* in fixed-size chunks, and each output element is computed by
//! one thread in a fixed order, so results are bitwise identical for any `RAYON_NUM_THREADS`.

mod matmul;
pub use matmul::{matmul, matmul_t};

use crate::dtype::Float;
use rayon::prelude::*;

/// Elements per parallel task for element-wise work: large enough to amortize scheduling.
pub(crate) const CHUNK: usize = 1 << 14;

/// `f` applied to every element (parallel over fixed chunks; element-wise, so trivially deterministic).
pub fn map<T: Copy + Send + Sync, F: Fn(T) -> T + Sync>(xs: &[T], f: &F) -> Vec<T> {
    xs.par_iter().with_min_len(CHUNK).map(|&x| f(x)).collect()
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

/// `f(a, b)` element-wise with NumPy broadcasting of `a` (dims `ad`) and `b` (dims `bd`) to `out`.
pub fn zip<T: Float, F: Fn(T, T) -> T + Sync>(a: &[T], ad: &[usize], b: &[T], bd: &[usize], out: &[usize], f: F) -> Vec<T> {
    let n: usize = out.iter().product();
    let mut o = vec![T::ZERO; n];
    if ad == out && bd == out {
        o.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
            for i in 0..o.len() {
                o[i] = f(a[i], b[i]);
            }
        });
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
    o.par_chunks_mut(last).enumerate().for_each(|(row, orow)| {
        // Offsets of this row's first element.
        let (mut oa, mut ob, mut rem) = (0, 0, row);
        for d in (0..r.saturating_sub(1)).rev() {
            let i = rem % out[d];
            rem /= out[d];
            oa += i * sa[d];
            ob += i * sb[d];
        }
        for (j, o) in orow.iter_mut().enumerate() {
            *o = f(a[oa + j * la], b[ob + j * lb]);
        }
    });
    o
}

/// Sums over the middle axis of an (outer, n, inner) view: out[o, i] = Σ_j x[o, j, i], j ascending.
pub fn sum_axis<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; outer * inner];
    if inner == 1 {
        out.par_iter_mut().enumerate().for_each(|(o, y)| *y = sum_contiguous(&x[o * n..(o + 1) * n]));
    } else {
        out.par_chunks_mut(inner).enumerate().for_each(|(o, y)| {
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
    out.par_chunks_mut(per.max(1)).enumerate().for_each(|(o, y)| {
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
    out.par_chunks_mut(last).enumerate().for_each(|(row, orow)| {
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
