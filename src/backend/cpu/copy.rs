//! Data movement: strided copies (permute, broadcast, narrow and its adjoint), concatenation, index
//! selection and gathers with their scatter-add adjoints, and the window maps of a convolution
//! (im2col, average pooling and their adjoints).
//!
//! Every output element is written by one task; scatter-adds accumulate in index order within each
//! output row and parallelize only over rows, so they are deterministic.

use super::float::Float;
use super::{for_chunks, pool, CHUNK};
use crate::backend::spec::{coalesce, AxisView, ConvShape, WindowOp};
use crate::error::Result;
use rayon::prelude::*;

/// The source offset of the first element of output row `row` (rows are the last dimension).
#[inline(always)]
fn row_offset(dims: &[usize], strides: &[usize], mut row: usize) -> usize {
    let mut off = 0;
    for d in (0..dims.len().saturating_sub(1)).rev() {
        off += (row % dims[d]) * strides[d];
        row /= dims[d];
    }
    off
}

/// out[k] = x[offset + Σ k_d·strides[d]] over the row-major indices k of `dims`.
pub(crate) fn copy_strided<T: Float>(op: &'static str, x: &[T], dims: &[usize], strides: &[usize], offset: usize) -> Result<Vec<T>> {
    let n = crate::shape::numel(dims);
    let mut out = pool::for_overwrite(op, n)?;
    if n == 0 {
        return Ok(out);
    }
    let (d, s) = coalesce(dims, strides);
    let (last, ls) = (d.last().copied().unwrap_or(1), s.last().copied().unwrap_or(0));
    let rows_per_task = (CHUNK / last).max(1);
    for_chunks(&mut out, last * rows_per_task, n, |task, rows| {
        for (i, orow) in rows.chunks_mut(last).enumerate() {
            let at = offset + row_offset(&d, &s, task * rows_per_task + i);
            match ls {
                1 => orow.copy_from_slice(&x[at..at + last]),
                0 => orow.fill(x[at]),
                _ => {
                    for (j, o) in orow.iter_mut().enumerate() {
                        *o = x[at + j * ls];
                    }
                }
            }
        }
    });
    Ok(out)
}

/// A zero buffer of `len` with out[offset + Σ k_d·strides[d]] = x[k] (positions distinct).
pub(crate) fn place_strided<T: Float>(
    op: &'static str,
    x: &[T],
    len: usize,
    dims: &[usize],
    strides: &[usize],
    offset: usize,
) -> Result<Vec<T>> {
    let mut out = pool::zeroed(op, len)?;
    if x.is_empty() {
        return Ok(out);
    }
    let (d, s) = coalesce(dims, strides);
    let (last, ls) = (d.last().copied().unwrap_or(1), s.last().copied().unwrap_or(0));
    // Sequential: the destinations of one source row are scattered, and this is the adjoint of a
    // narrow (one pass over the narrowed data).
    for (row, src) in x.chunks(last).enumerate() {
        let at = offset + row_offset(&d, &s, row);
        if ls == 1 {
            out[at..at + last].copy_from_slice(src);
        } else {
            for (j, &v) in src.iter().enumerate() {
                out[at + j * ls] = v;
            }
        }
    }
    Ok(out)
}

/// The parts (each `outer` rows of its own length) concatenated row by row: part i contributes
/// len(i)/outer contiguous elements to every output row.
pub(crate) fn concat<T: Float>(op: &'static str, parts: &[&[T]], outer: usize) -> Result<Vec<T>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = pool::for_overwrite(op, total)?;
    if total == 0 {
        return Ok(out);
    }
    let row = total / outer;
    let lens: Vec<usize> = parts.iter().map(|p| p.len() / outer).collect();
    for_chunks(&mut out, row, total, |o, dst| {
        let mut off = 0;
        for (p, &l) in parts.iter().zip(&lens) {
            dst[off..off + l].copy_from_slice(&p[o * l..(o + 1) * l]);
            off += l;
        }
    });
    Ok(out)
}

/// out[o, j, i] = x[o, idx[j], i].
pub(crate) fn index_select<T: Float>(op: &'static str, x: &[T], idx: &[usize], v: AxisView) -> Result<Vec<T>> {
    let AxisView { outer, n, inner: i } = v;
    let m = idx.len();
    let mut out = pool::for_overwrite(op, outer * m * i)?;
    if m * i > 0 {
        for_chunks(&mut out, m * i, outer * m * i, |o, dst| {
            for (j, &k) in idx.iter().enumerate() {
                dst[j * i..(j + 1) * i].copy_from_slice(&x[(o * n + k) * i..(o * n + k + 1) * i]);
            }
        });
    }
    Ok(out)
}

/// out (outer, n, inner) = Σ over j with idx[j] = r of g[o, j, i], j ascending.
pub(crate) fn index_add<T: Float>(op: &'static str, g: &[T], idx: &[usize], v: AxisView) -> Result<Vec<T>> {
    let AxisView { outer, n, inner: i } = v;
    let m = idx.len();
    let mut out = pool::zeroed(op, outer * n * i)?;
    if n * i > 0 {
        for_chunks(&mut out, n * i, outer * m * i, |o, dst| {
            for (j, &k) in idx.iter().enumerate() {
                for (d, &s) in dst[k * i..(k + 1) * i].iter_mut().zip(&g[(o * m + j) * i..(o * m + j + 1) * i]) {
                    *d += s;
                }
            }
        });
    }
    Ok(out)
}

/// out[o, j, i] = x[o, idx[o, j, i], i]; idx and out are (outer, m, inner).
pub(crate) fn gather<T: Float>(op: &'static str, x: &[T], idx: &[usize], v: AxisView, m: usize) -> Result<Vec<T>> {
    let AxisView { outer, n, inner: i } = v;
    let mut out = pool::for_overwrite(op, outer * m * i)?;
    if m * i > 0 {
        for_chunks(&mut out, m * i, outer * m * i, |o, dst| {
            for p in 0..m * i {
                dst[p] = x[(o * n + idx[o * m * i + p]) * i + p % i];
            }
        });
    }
    Ok(out)
}

/// The adjoint of [`gather`]: out (outer, n, inner) accumulates g[o, j, i] at idx[o, j, i], in order.
pub(crate) fn scatter_add<T: Float>(op: &'static str, g: &[T], idx: &[usize], v: AxisView, m: usize) -> Result<Vec<T>> {
    let AxisView { outer, n, inner: i } = v;
    let mut out = pool::zeroed(op, outer * n * i)?;
    if n * i > 0 {
        for_chunks(&mut out, n * i, outer * m * i, |o, dst| {
            for p in 0..m * i {
                dst[idx[o * m * i + p] * i + p % i] += g[o * m * i + p];
            }
        });
    }
    Ok(out)
}

impl ConvShape {
    /// The input pixel (row, column) read by tap (ki, kj) of output (oh, ow), if inside the image.
    #[inline(always)]
    fn src(&self, ki: usize, kj: usize, oh: usize, ow: usize) -> Option<(usize, usize)> {
        let r = (oh * self.stride.0 + ki * self.dilation.0).checked_sub(self.padding.0)?;
        let c = (ow * self.stride.1 + kj * self.dilation.1).checked_sub(self.padding.1)?;
        (r < self.h && c < self.w).then_some((r, c))
    }
}

/// The window maps of `g` (see [`WindowOp`]); `x` has the map's input length (checked by the caller).
pub(crate) fn window<T: Float>(op: &'static str, x: &[T], w: WindowOp, g: &ConvShape) -> Result<Vec<T>> {
    let (l, cols) = (g.ho * g.wo, g.n * g.ho * g.wo);
    let (plane_in, plane_out) = (g.h * g.w, g.ho * g.wo);
    let inv = T::from_f64(1.0 / (g.kh * g.kw) as f64);
    match w {
        WindowOp::Im2col => {
            let mut out = pool::zeroed(op, g.c * g.kh * g.kw * cols)?;
            if cols > 0 {
                out.par_chunks_mut(cols).enumerate().for_each(|(row, dst)| {
                    let (c, ki, kj) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
                    for q in 0..cols {
                        let (n, oh, ow) = (q / l, q % l / g.wo, q % g.wo);
                        if let Some((r, cc)) = g.src(ki, kj, oh, ow) {
                            dst[q] = x[((n * g.c + c) * g.h + r) * g.w + cc];
                        }
                    }
                });
            }
            Ok(out)
        }
        WindowOp::Col2im => {
            let mut out = pool::zeroed(op, g.n * g.c * plane_in)?;
            if plane_in > 0 {
                out.par_chunks_mut(plane_in).enumerate().for_each(|(plane, dst)| {
                    let (n, c) = (plane / g.c, plane % g.c);
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            let row = &x[((c * g.kh + ki) * g.kw + kj) * cols + n * l..][..l];
                            for oh in 0..g.ho {
                                for ow in 0..g.wo {
                                    if let Some((r, cc)) = g.src(ki, kj, oh, ow) {
                                        dst[r * g.w + cc] += row[oh * g.wo + ow];
                                    }
                                }
                            }
                        }
                    }
                });
            }
            Ok(out)
        }
        WindowOp::AvgPool => {
            let mut out = pool::zeroed(op, g.n * g.c * plane_out)?;
            if plane_out > 0 {
                out.par_chunks_mut(plane_out).enumerate().for_each(|(plane, dst)| {
                    let s = &x[plane * plane_in..(plane + 1) * plane_in];
                    for oh in 0..g.ho {
                        for ow in 0..g.wo {
                            let mut acc = T::ZERO;
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    if let Some((r, c)) = g.src(ki, kj, oh, ow) {
                                        acc += s[r * g.w + c];
                                    }
                                }
                            }
                            dst[oh * g.wo + ow] = acc * inv;
                        }
                    }
                });
            }
            Ok(out)
        }
        WindowOp::AvgPoolAdjoint => {
            let mut out = pool::zeroed(op, g.n * g.c * plane_in)?;
            if plane_in > 0 {
                out.par_chunks_mut(plane_in).enumerate().for_each(|(plane, dst)| {
                    let s = &x[plane * plane_out..(plane + 1) * plane_out];
                    for oh in 0..g.ho {
                        for ow in 0..g.wo {
                            let v = s[oh * g.wo + ow] * inv;
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    if let Some((r, c)) = g.src(ki, kj, oh, ow) {
                                        dst[r * g.w + c] += v;
                                    }
                                }
                            }
                        }
                    }
                });
            }
            Ok(out)
        }
    }
}

/// The input and output lengths of a window map.
pub(crate) fn window_lens(w: WindowOp, g: &ConvShape) -> Option<(usize, usize)> {
    let m = |d: &[usize]| d.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    let image = m(&[g.n, g.c, g.h, g.w])?;
    let cols = m(&[g.c, g.kh, g.kw, g.n, g.ho, g.wo])?;
    let pooled = m(&[g.n, g.c, g.ho, g.wo])?;
    Some(match w {
        WindowOp::Im2col => (image, cols),
        WindowOp::Col2im => (cols, image),
        WindowOp::AvgPool => (image, pooled),
        WindowOp::AvgPoolAdjoint => (pooled, image),
    })
}
