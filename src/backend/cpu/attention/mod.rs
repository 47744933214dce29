//! Fused scaled-dot-product attention: forward, backward and backward-over-backward kernels.
//!
//! For each of `heads` independent problems (batch and heads flattened), with S = c·Q·Kᵀ (causal:
//! query i sees keys j ≤ i), P = softmax(S) by rows and O = P·V:
//! - [`forward`] gives O and the row logsumexp ℓ, so the backward passes rebuild P = exp(S − ℓ) without
//!   a max or a sum;
//! - [`backward`] gives dQ, dK, dV from dO (with D = rowsum(dO∘O) = rowsum(P∘dP));
//! - [`backward_backward`] gives the cotangents of Q, K, V and dO from cotangents a, b, e of dQ, dK, dV,
//!   following `DESIGN.md` ("Attention backward-over-backward"): a statistics sweep gives
//!   D̄ = −rowsum(P∘dS̄) and ρ = rowsum(P̄∘P) per row, then the accumulation uses them.
//!
//! Why it is shaped this way:
//! - **Nothing N×N is materialized.** A block of query rows holds *strips*: its rows against all
//!   (visible) keys, for a handful of score-shaped quantities. Strips are capped at about [`STRIP`]
//!   elements, which fixes the block size.
//! - **One pass over the scores.** Each backward kernel is a single pass over row blocks that
//!   rebuilds P from ℓ once. The row blocks of a head are gathered into at most `GROUPS` (8) groups of
//!   consecutive blocks (a partition fixed by the shapes); one task runs one group, block after block.
//!   Row-indexed outputs (O, dQ, Q̄, dŌ) and row statistics are written by the task owning the rows;
//!   key-indexed ones (dK, dV, K̄, V̄) are accumulated by each task into its group's own partial
//!   [nk, width] buffer, and the partials are then added in ascending group order.
//! - **Deterministic without atomics.** Every output element is one fixed chain of operations (over
//!   keys ascending for row outputs; over the rows of group 0, then group 1, ... for key outputs), so
//!   the bits depend on the shapes alone: not on the thread count, the scheduling, or the instruction
//!   set (the register tile widens with AVX2 or AVX-512; the arithmetic does not change, and a test
//!   checks it).
//! - **Fast.** Every product is a small GEMM with a register tile of explicit SIMD FMAs ([`gemm`]),
//!   compiled for AVX-512, AVX2+FMA and portable code and picked at run time. Strips are stored
//!   key-major, which the row-output GEMMs read in place; for the key-output GEMMs they are packed
//!   into 8-key panels (O(N·block) per strip). The [N, d] inputs are transposed or packed once per
//!   call; buffers come from a per-thread pool. f32 uses a polynomial exp that vectorizes.
//!   In units of N²·d multiply-adds per head the forward costs 2, the backward 3 + 2 for dK, dV; the
//!   backward-over-backward 5 (statistics) + 2 for Q̄ (+ 2 for dŌ, only when asked) + 3 for K̄, V̄.

mod gemm;
mod rows;
#[cfg(test)]
mod tests;

use super::float::Float;
use super::pool;
use crate::backend::spec::{AttnShape, Need};
use crate::error::{Error, Result};
pub(crate) use gemm::release_scratch;
use gemm::{scratch, Scratch, MR};
use rayon::prelude::*;
use rows::{bb_row_task, bwd_row_task, dot_lanes, fwd_task, ld, Ctx};
use std::sync::atomic::{AtomicBool, Ordering};

/// Elements in one strip (a block of rows against all keys).
/// Blocks have `STRIP / n` rows, clamped to [32, 64] and rounded down to a multiple of 8: up to
/// n = 1024 a task's strips stay in the L2 cache; narrower blocks than 32 would leave the register
/// tile (32 f32 columns with AVX-512) half empty, which costs far more than cache misses (5× at
/// n = 2048). So a task holds at most 4 strips of 32·n elements: O(n) memory per thread.
pub(crate) const STRIP: usize = 1 << 16;

/// The element operations the attention kernels need beyond [`Float`].
pub(crate) trait AttnFloat: Float {
    /// e^x. For f32 a branch-free polynomial (Cephes' expf, within 2 ulp) that vectorizes; it returns 0
    /// below −87.3 and +∞ above 88 (the kernels only take exp of values ≤ 0 up to rounding). For f64
    /// the standard library's.
    fn fast_exp(self) -> Self;
}

impl AttnFloat for f64 {
    #[inline(always)]
    fn fast_exp(self) -> f64 {
        self.exp()
    }
}

impl AttnFloat for f32 {
    #[inline(always)]
    fn fast_exp(self) -> f32 {
        const HI: f32 = 88.0;
        const LO: f32 = -87.336_54;
        // Adding 1.5·2^23 rounds to an integer kept in the low mantissa bits.
        const SHIFT: f32 = 12_582_912.0;
        let x = self;
        let xc = x.clamp(LO, HI); // NaN stays NaN
        let t = xc.mul_add(std::f32::consts::LOG2_E, SHIFT);
        let n = t - SHIFT;
        let r = n.mul_add(-0.693_359_4, xc);
        let r = n.mul_add(2.121_944_4e-4, r);
        let mut p = 1.987_569_1e-4f32;
        p = p.mul_add(r, 1.398_199_9e-3);
        p = p.mul_add(r, 8.333_452e-3);
        p = p.mul_add(r, 4.166_579_6e-2);
        p = p.mul_add(r, 1.666_666_5e-1);
        p = p.mul_add(r, 0.5);
        let y = p.mul_add(r * r, r) + 1.0;
        let e = (t.to_bits().wrapping_sub(SHIFT.to_bits()) as i32 + 127) << 23;
        let out = y * f32::from_bits(e as u32);
        if x < LO {
            0.0
        } else if x > HI {
            f32::INFINITY
        } else {
            out
        }
    }
}

// Orchestration: tasks over (head, block), outputs split into disjoint per-task slices.

/// Rows (or keys) per task when the other side has `other` entries: a multiple of MR in [32, 64].
fn block(other: usize) -> usize {
    (STRIP / other.max(1)).clamp(32, 64) / MR * MR
}

/// The tasks (head, first, count) covering `n` rows per head in blocks of `blk`.
fn tasks(heads: usize, n: usize, blk: usize) -> Vec<(usize, usize, usize)> {
    (0..heads).flat_map(|h| (0..n).step_by(blk).map(move |i0| (h, i0, blk.min(n - i0)))).collect()
}

/// Row blocks are gathered into at most this many groups per head. A row task covers one group,
/// accumulating the key-indexed outputs over its blocks into the group's partial; the partials are
/// then added in ascending group order. The partition depends on the shapes alone.
const GROUPS: usize = 8;

/// The tasks of a row pass, one per (head, group of row blocks), and the groups per head.
fn group_tasks(g: &AttnShape) -> (Vec<(usize, usize, usize)>, usize) {
    let blk = block(g.nk);
    let rows = g.nq.div_ceil(blk).div_ceil(GROUPS).max(1) * blk;
    (tasks(g.heads, g.nq, rows), g.nq.div_ceil(rows))
}

/// Runs `row` on each block of `blk` rows of the group task (h, i0, n), in ascending order, with the
/// block's parts of the task's row-indexed slices (`widths` elements per row).
fn blocks<T, const N: usize>(
    blk: usize,
    (h, i0, n): (usize, usize, usize),
    outs: [&mut [T]; N],
    widths: [usize; N],
    mut row: impl FnMut(usize, usize, usize, [&mut [T]; N]),
) {
    let mut outs = outs;
    for b0 in (0..n).step_by(blk) {
        let nr = blk.min(n - b0);
        let parts = std::array::from_fn(|t| {
            let (a, rest) = std::mem::take(&mut outs[t]).split_at_mut(nr * widths[t]);
            outs[t] = rest;
            a
        });
        row(h, i0 + b0, nr, parts);
    }
}

/// The [nk, width] slices of a partials buffer [ng, heads, nk, width] in task order (task t is head
/// t / ng, group t % ng), zeroed by the tasks.
fn partial_slices<'a, T>(buf: &'a mut [T], g: &AttnShape, ng: usize, width: usize) -> Vec<&'a mut [T]> {
    let mut all: Vec<Option<&mut [T]>> = buf.chunks_mut((g.nk * width).max(1)).map(Some).collect();
    (0..g.heads * ng).map(|t| all.get_mut(t % ng * g.heads + t / ng).and_then(Option::take).unwrap_or_default()).collect()
}

/// out = scale·(Σ over groups, ascending, of the partials [ng, len]).
fn reduce<T: Float>(parts: &[T], ng: usize, scale: T, out: &mut [T]) {
    let len = out.len();
    out.par_chunks_mut(4096).enumerate().for_each(|(c, o)| {
        for gi in 0..ng {
            let p = &parts[gi * len + c * 4096..][..o.len()];
            for (o, &p) in o.iter_mut().zip(p) {
                *o += p;
            }
        }
        for o in o.iter_mut() {
            *o = *o * scale;
        }
    });
}

/// Splits a [heads, n, width] buffer into the tasks' disjoint slices.
fn split<'a, T>(mut buf: &'a mut [T], tasks: &[(usize, usize, usize)], width: usize) -> Vec<&'a mut [T]> {
    tasks
        .iter()
        .map(|&(_, _, len)| {
            let (a, rest) = std::mem::take(&mut buf).split_at_mut(len * width);
            buf = rest;
            a
        })
        .collect()
}

/// The layouts an operand is needed in.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// [heads, w, ld(n)]: B operands.
    Transposed,
    /// Per head ⌈n/MR⌉ panels of [w, MR], zero padded: A operands.
    Panels,
}

/// Re-lays out operands ([heads, n, w] each, given as (x, n, w, layout)) into buffers carved from `sc`,
/// in one parallel sweep over (operand, head).
fn relayout<'s, T: Float>(
    op: &'static str,
    sc: &'s mut Scratch,
    heads: usize,
    ops: &[(&[T], usize, usize, Layout)],
) -> Result<Vec<&'s [T]>> {
    let size = |n: usize, w: usize, lay| match lay {
        Layout::Transposed => w * ld(n),
        Layout::Panels => n.div_ceil(MR) * MR * w,
    };
    let lens: Vec<usize> = ops.iter().map(|&(_, n, w, lay)| heads * size(n, w, lay)).collect();
    let mut outs = sc.carve::<T>(&lens).ok_or_else(|| no_scratch::<T>(op, &lens))?;
    let mut jobs = Vec::new();
    for (out, &(x, n, w, lay)) in outs.iter_mut().zip(ops) {
        if n * w > 0 {
            jobs.extend(out.chunks_mut(size(n, w, lay)).zip(x.chunks(n * w)).map(|(o, x)| (o, x, n, w, lay)));
        }
    }
    jobs.into_par_iter().for_each(|(o, x, n, w, lay)| match lay {
        Layout::Transposed => {
            let l = ld(n);
            for i0 in (0..n).step_by(32) {
                for c in 0..w {
                    for i in i0..(i0 + 32).min(n) {
                        o[c * l + i] = x[i * w + c];
                    }
                }
            }
        }
        Layout::Panels => {
            for (i, row) in x.chunks_exact(w).enumerate() {
                let panel = &mut o[i / MR * MR * w..];
                for (c, &v) in row.iter().enumerate() {
                    panel[c * MR + i % MR] = v;
                }
            }
            // Zero the padding rows of the last panel (they are computed, never stored).
            for i in n..n.div_ceil(MR) * MR {
                for c in 0..w {
                    o[i / MR * MR * w + c * MR + i % MR] = T::ZERO;
                }
            }
        }
    });
    Ok(outs.into_iter().map(|o| &*o).collect())
}

/// The error for scratch slices of `lens` elements of `T` that could not be allocated.
fn no_scratch<T>(op: &'static str, lens: &[usize]) -> Error {
    let bytes = lens.iter().map(|&l| l as u128).sum::<u128>() * std::mem::size_of::<T>() as u128;
    Error::oom(op, "attention scratch", Some(bytes), "cpu")
}

/// An `N`-slice carve of `sc`, or the error naming `op`.
fn carve<'s, T: Float, const N: usize>(op: &'static str, sc: &'s mut Scratch, lens: [usize; N]) -> Result<[&'s mut [T]; N]> {
    sc.slices(lens).ok_or_else(|| no_scratch::<T>(op, &lens))
}

/// `Ok(v)`, or the `OutOfMemory` of a task that could not get its scratch.
fn unless_failed<V>(op: &'static str, failed: &AtomicBool, v: V) -> Result<V> {
    if failed.load(Ordering::Relaxed) {
        return Err(Error::OutOfMemory { op, msg: "cannot allocate a row task's attention scratch (its score strips) on cpu".into() });
    }
    Ok(v)
}

/// D = rowsum(dO∘O) per row, into `dd` [heads·nq].
fn row_dots<T: Float>(d_o: &[T], o: &[T], w: usize, dd: &mut [T]) {
    if w == 0 {
        dd.fill(T::ZERO);
    } else {
        dd.par_iter_mut().zip(d_o.par_chunks(w).zip(o.par_chunks(w))).for_each(|(d, (x, y))| *d = dot_lanes(x, y));
    }
}

/// Forward: O [heads, nq, dv] and the row logsumexp ℓ [heads, nq] of the scaled, masked scores.
pub(crate) fn forward<T: AttnFloat>(op: &'static str, g: AttnShape, q: &[T], k: &[T], v: &[T]) -> Result<(Vec<T>, Vec<T>)> {
    let isa = super::best_isa();
    use Layout::*;
    // Every element of both is written by a task.
    let mut o = pool::for_overwrite(op, g.heads * g.nq * g.dv)?;
    let mut lse = pool::for_overwrite(op, g.heads * g.nq)?;
    let mut sc = scratch();
    let ops = [(q, g.nq, g.d, Transposed), (k, g.nk, g.d, Panels)];
    let [qt, kp] = relayout(op, &mut sc, g.heads, &ops)?[..] else { unreachable!() };
    let failed = AtomicBool::new(false);
    let cx = Ctx { q, k, v, qt, kp, ..Ctx::new(g, &failed) };
    let tk = tasks(g.heads, g.nq, block(g.nk));
    let (os, ls) = (split(&mut o, &tk, g.dv), split(&mut lse, &tk, 1));
    tk.into_par_iter().zip(os).zip(ls).for_each(|(((h, i0, nr), o), l)| fwd_task(isa, &cx, h, i0, nr, o, l));
    unless_failed(op, &failed, (o, lse))
}

/// Backward: [dQ | dK | dV] packed in one buffer (shapes [heads, nq, d], [heads, nk, d],
/// [heads, nk, dv]), from Q, K, V, the forward's O and ℓ (`saved`), and dO. Parts not in `need` stay
/// zero.
pub(crate) fn backward<T: AttnFloat>(
    op: &'static str,
    g: AttnShape,
    [q, k, v]: [&[T]; 3],
    [o, lse]: [&[T]; 2],
    d_o: &[T],
    need: Need,
) -> Result<Vec<T>> {
    let isa = super::best_isa();
    use Layout::*;
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let mut out = pool::zeroed(op, nq * g.d + nk * (g.d + g.dv))?;
    let (dq, rest) = out.split_at_mut(nq * g.d);
    let (dk, dv) = rest.split_at_mut(nk * g.d);
    let mut sc = scratch();
    let [dd] = carve::<T, 1>(op, &mut sc, [nq])?;
    row_dots(d_o, o, g.dv, dd);
    let failed = AtomicBool::new(false);
    let cx = Ctx { q, k, v, d_o, lse, dd, ..Ctx::new(g, &failed) };
    let ops = [(q, g.nq, g.d, Transposed), (d_o, g.nq, g.dv, Transposed), (k, g.nk, g.d, Panels), (v, g.nk, g.dv, Panels)];
    let mut sc2 = scratch();
    let [qt, dot, kp, vp] = relayout(op, &mut sc2, g.heads, &ops)?[..] else { unreachable!() };
    let cx = Ctx { qt, dot, kp, vp, ..cx };
    let (tk, ng) = group_tasks(&g);
    let (wk, wv) = if need.kv { (g.d, g.dv) } else { (0, 0) };
    let mut sc3 = scratch();
    let [pk, pv] = carve::<T, 2>(op, &mut sc3, [ng * g.heads * g.nk * wk, ng * g.heads * g.nk * wv])?;
    let (pks, pvs) = (partial_slices(pk, &g, ng, wk), partial_slices(pv, &g, ng, wv));
    let blk = block(g.nk);
    let dqs = split(dq, &tk, g.d);
    tk.into_par_iter().zip(dqs).zip(pks.into_par_iter().zip(pvs)).for_each(|((t, dq), (pk, pv))| {
        pk.fill(T::ZERO);
        pv.fill(T::ZERO);
        blocks(blk, t, [dq], [g.d], |h, i0, nr, [dq]| bwd_row_task(isa, &cx, need, h, i0, nr, dq, (&mut *pk, &mut *pv)));
    });
    if need.kv {
        reduce(pk, ng, cx.c, dk);
        reduce(pv, ng, T::ONE, dv);
    }
    unless_failed(op, &failed, out)
}

/// Backward over backward: [Q̄ | K̄ | V̄ | dŌ] packed in one buffer, the cotangents of Q, K, V and dO
/// given cotangents `abe` = (a, b, e) of (dQ, dK, dV). Parts not in `need` stay zero.
pub(crate) fn backward_backward<T: AttnFloat>(
    op: &'static str,
    g: AttnShape,
    [q, k, v]: [&[T]; 3],
    [o, lse]: [&[T]; 2],
    d_o: &[T],
    [a, b, e]: [&[T]; 3],
    need: Need,
) -> Result<Vec<T>> {
    let isa = super::best_isa();
    use Layout::*;
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let mut out = pool::zeroed(op, nq * (g.d + g.dv) + nk * (g.d + g.dv))?;
    let (qbar, rest) = out.split_at_mut(nq * g.d);
    let (kbar, rest) = rest.split_at_mut(nk * g.d);
    let (vbar, dobar) = rest.split_at_mut(nk * g.dv);
    if !(need.q || need.kv || need.d_o) {
        return Ok(out);
    }
    let mut sc = scratch();
    let [dd, dbar, rho] = carve::<T, 3>(op, &mut sc, [nq; 3])?;
    row_dots(d_o, o, g.dv, dd);
    let failed = AtomicBool::new(false);
    let cx = Ctx { q, k, v, d_o, a, b, e, lse, dd, ..Ctx::new(g, &failed) };
    #[rustfmt::skip]
    let ops = [
        (q, g.nq, g.d, Transposed), (d_o, g.nq, g.dv, Transposed), (a, g.nq, g.d, Transposed),
        (k, g.nk, g.d, Panels), (v, g.nk, g.dv, Panels), (b, g.nk, g.d, Panels), (e, g.nk, g.dv, Panels),
    ];
    let mut sc2 = scratch();
    let [qt, dot, at, kp, vp, bp, ep] = relayout(op, &mut sc2, g.heads, &ops)?[..] else { unreachable!() };
    let cx = Ctx { qt, dot, at, kp, vp, bp, ep, ..cx };
    let (tk, ng) = group_tasks(&g);
    let (wk, wv) = if need.kv { (g.d, g.dv) } else { (0, 0) };
    let mut sc3 = scratch();
    let [pk, pv] = carve::<T, 2>(op, &mut sc3, [ng * g.heads * g.nk * wk, ng * g.heads * g.nk * wv])?;
    let (pks, pvs) = (partial_slices(pk, &g, ng, wk), partial_slices(pv, &g, ng, wv));
    let blk = block(g.nk);
    let (qs, ds) = (split(qbar, &tk, g.d), split(dobar, &tk, g.dv));
    let (dbs, rhos) = (split(dbar, &tk, 1), split(rho, &tk, 1));
    let outs = qs.into_par_iter().zip(ds).zip(dbs.into_par_iter().zip(rhos));
    tk.into_par_iter().zip(outs).zip(pks.into_par_iter().zip(pvs)).for_each(|((t, ((qb, db), (dbr, rh))), (pk, pv))| {
        pk.fill(T::ZERO);
        pv.fill(T::ZERO);
        blocks(blk, t, [qb, db, dbr, rh], [g.d, g.dv, 1, 1], |h, i0, nr, [qb, db, dbr, rh]| {
            bb_row_task(isa, &cx, need, h, i0, nr, qb, db, (dbr, rh), (&mut *pk, &mut *pv));
        });
    });
    if need.kv {
        reduce(pk, ng, cx.c, kbar);
        reduce(pv, ng, T::ONE, vbar);
    }
    unless_failed(op, &failed, out)
}
