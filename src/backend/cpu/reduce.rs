//! Reductions over the middle axis of an (outer, n, inner) view: sum, max (with the one-hot mask of the
//! first maximum), and the softmax family. Each output is reduced by one thread in an order fixed by
//! the shape, so the bits do not depend on the thread count.

use super::float::Float;
use super::math;
use super::simd::multiversion;
use super::{best_isa, for_chunks, pool, CHUNK};
use crate::backend::spec::{AxisView, SoftmaxMode};
use crate::error::Result;

/// out[o, i] = Σ_j x[o, j, i], j ascending (contiguous rows: 8 interleaved partials, see
/// [`sum_contiguous`]).
pub(crate) fn sum_axis<T: Float>(op: &'static str, x: &[T], v: AxisView) -> Result<Vec<T>> {
    let AxisView { outer, n, inner } = v;
    let mut out = pool::zeroed(op, outer * inner)?;
    if out.is_empty() {
        return Ok(out); // chunks of 0 would panic when inner == 0
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
    Ok(out)
}

/// Sum of a contiguous slice with 8 interleaved partial sums combined in a fixed tree: vectorizes, is
/// more accurate than a running sum, and its order depends only on the length.
pub(crate) fn sum_contiguous<T: Float>(x: &[T]) -> T {
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

/// Max over the middle axis (n ≥ 1) and the one-hot mask (x's shape) of the first maximum; NaN wins.
pub(crate) fn max_axis<T: Float>(op: &'static str, x: &[T], v: AxisView) -> Result<(Vec<T>, Vec<T>)> {
    let AxisView { outer, n, inner } = v;
    let mut vals = pool::for_overwrite(op, outer * inner)?;
    let mut hot = pool::zeroed(op, x.len())?;
    if vals.is_empty() || n == 0 {
        return Ok((vals, hot));
    }
    // One task per outer index: it owns the values and the mask block of its (n, inner) slab.
    let mut slabs: Vec<(&mut [T], &mut [T])> = vals.chunks_mut(inner).zip(hot.chunks_mut(n * inner)).collect();
    let run = |o: usize, (vs, hs): &mut (&mut [T], &mut [T])| {
        for i in 0..inner {
            let mut best = x[o * n * inner + i];
            let mut bi = 0;
            for j in 1..n {
                let c = x[(o * n + j) * inner + i];
                if c > best || (c.is_nan() && !best.is_nan()) {
                    best = c;
                    bi = j;
                }
            }
            vs[i] = best;
            hs[bi * inner + i] = T::ONE;
        }
    };
    if x.len() <= CHUNK {
        slabs.iter_mut().enumerate().for_each(|(o, s)| run(o, s));
    } else {
        use rayon::prelude::*;
        slabs.par_iter_mut().enumerate().for_each(|(o, s)| run(o, s));
    }
    Ok((vals, hot))
}

/// A softmax-family reduction over the middle axis, max-shifted for stability; fixed order.
pub(crate) fn softmax_axis<T: Float>(op: &'static str, x: &[T], v: AxisView, mode: SoftmaxMode) -> Result<Vec<T>> {
    let AxisView { outer, n, inner } = v;
    let lse = mode == SoftmaxMode::LogSumExp;
    let mut out = pool::for_overwrite(op, if lse { outer * inner } else { outer * n * inner })?;
    let per = if lse { inner } else { n * inner };
    if out.is_empty() || per == 0 {
        return Ok(out);
    }
    let isa = best_isa();
    for_chunks(&mut out, per, outer * n * inner, |o, y| {
        let x = x.get(o * n * inner..(o + 1) * n * inner).unwrap_or_default();
        softmax_rows(isa, x, n, inner, mode, y)
    });
    Ok(out)
}

/// One outer index of [`softmax_axis`]: `x` is its [n, inner] block, `y` its output. `S` only
/// picks the copy: this is inlined into [`softmax_rows`]'s `#[target_feature]` copies, so `exp` (f32:
/// [`super::math::exp_f32`], fused multiply-adds) is compiled with their features; the same IEEE
/// operations, so the same bits, on every path.
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)]
fn softmax_block<T: Float, S>(x: &[T], n: usize, inner: usize, mode: SoftmaxMode, y: &mut [T]) {
    for i in 0..inner {
        let at = |j: usize| x[j * inner + i];
        let mut m = T::NEG_INFINITY;
        for j in 0..n {
            if at(j) > m {
                m = at(j);
            }
        }
        if !m.is_finite() {
            m = T::ZERO; // all −inf (or inf/NaN): let the arithmetic below propagate it
        }
        // s = Σ_j e^(x_j − m), j ascending: the exponentials a block at a time (the same bits as one
        // by one, several times faster: see `math`), the sum in order. Softmax keeps them in y.
        let mut s = T::ZERO;
        let keep = mode == SoftmaxMode::Softmax;
        for j0 in (0..n).step_by(math::BLOCK) {
            let len = math::BLOCK.min(n - j0);
            let mut e = [T::ZERO; math::BLOCK];
            for (jj, e) in e.iter_mut().enumerate().take(len) {
                *e = at(j0 + jj) - m;
            }
            let e = T::exp_block(&e);
            for (jj, &e) in e.iter().enumerate().take(len) {
                s += e;
                if keep {
                    y[(j0 + jj) * inner + i] = e;
                }
            }
        }
        match mode {
            SoftmaxMode::Softmax => {
                let inv = T::ONE / s;
                for j in 0..n {
                    y[j * inner + i] = y[j * inner + i] * inv;
                }
            }
            SoftmaxMode::LogSoftmax => {
                let l = s.ln() + m;
                for j in 0..n {
                    y[j * inner + i] = at(j) - l;
                }
            }
            SoftmaxMode::LogSumExp => y[i] = s.ln() + m,
        }
    }
}

multiversion! {
    fn softmax_rows<T: Float>(x: &[T], n: usize, inner: usize, mode: SoftmaxMode, y: &mut [T]) = softmax_block;
}
