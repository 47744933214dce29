//! The per-task work of the three passes: one block of query rows against all visible keys, with its
//! strips of score-shaped quantities, and the `multiversion!` copies of each task for every
//! instruction set.

use super::gemm::{gemm, scratch, A, MR};
use super::AttnFloat;
use crate::backend::cpu::float::Float;
use crate::backend::cpu::simd::{multiversion, Simd};
use crate::backend::cpu::transpose::{transpose_rows, Transpose};
use crate::backend::spec::{AttnShape, Need};
use crate::dtype::DType;
use std::sync::atomic::{AtomicBool, Ordering};

// Element-wise pieces.

/// x·y summed with 16 interleaved partials combined in a fixed tree (D = rowsum(dO∘O)). Plain
/// multiply and add, not FMA: this runs outside the multiversioned tasks, where FMA is a library call.
pub(super) fn dot_lanes<T: Float>(x: &[T], y: &[T]) -> T {
    const L: usize = 16;
    let mut acc = [T::ZERO; L];
    let (mut ix, mut iy) = (x.chunks_exact(L), y.chunks_exact(L));
    for (cx, cy) in (&mut ix).zip(&mut iy) {
        for l in 0..L {
            acc[l] += cx[l] * cy[l];
        }
    }
    for (l, (&a, &b)) in ix.remainder().iter().zip(iy.remainder()).enumerate() {
        acc[l] += a * b;
    }
    let mut w = L / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// The backward-over-backward element terms, in place: given P, dP, dS̄ and X = dO·eᵀ with the row
/// statistics D, D̄, ρ, computes P̄ = X + dS̄∘(dP − D) + D̄·dP and then
/// S̄ = P∘(P̄ − ρ) (into `x`), dS = P∘(dP − D) (into `dp`), dP̄ = P∘(dS̄ + D̄) (into `dsb`).
#[inline(always)]
fn bar_terms<T: Float>(p: T, dp: &mut T, dsb: &mut T, x: &mut T, dd: T, dbar: T, rho: T) {
    let u = *dp - dd;
    let pbar = dbar.mul_add(*dp, dsb.mul_add(u, *x));
    *x = p * (pbar - rho);
    *dp = p * u;
    *dsb = p * (*dsb + dbar);
}

// Per-task work.
//
// A row block holds key-major strips [keys × its rows]: the GEMMs for row outputs (Q̄ = Σ over keys)
// read them in place (`A::Cols`); those for key outputs (K̄ = Σ over rows) read them packed into
// panels ([`acc_keys`]). The GEMMs that produce strips take K, V, b, e pre-packed into panels
// (`A::Panels`) and the row side from a transpose. Row statistics are column sweeps, vectorized over
// the block's rows.

/// Every input of a kernel call (empty slices for what the call does not use).
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a, T> {
    pub(super) g: AttnShape,
    pub(super) c: T,
    pub(super) q: &'a [T],
    pub(super) k: &'a [T],
    pub(super) v: &'a [T],
    pub(super) d_o: &'a [T],
    pub(super) a: &'a [T],
    pub(super) b: &'a [T],
    pub(super) e: &'a [T],
    /// Per-head transposes [heads, width, ld(n)] (B operands): Qᵀ, dOᵀ, aᵀ.
    pub(super) qt: &'a [T],
    pub(super) dot: &'a [T],
    pub(super) at: &'a [T],
    /// Per-head panels (A operands) of K, V, b, e.
    pub(super) kp: &'a [T],
    pub(super) vp: &'a [T],
    pub(super) bp: &'a [T],
    pub(super) ep: &'a [T],
    /// Row statistics [heads, nq]: logsumexp ℓ and D.
    pub(super) lse: &'a [T],
    pub(super) dd: &'a [T],
    /// Set by a task whose scratch could not be allocated; the call then returns `OutOfMemory`.
    pub(super) failed: &'a AtomicBool,
}

impl<'a, T: Float> Ctx<'a, T> {
    pub(super) fn new(g: AttnShape, failed: &'a AtomicBool) -> Self {
        let z: &[T] = &[];
        #[rustfmt::skip]
        let cx = Ctx {
            g, c: T::from_f64(g.scale), q: z, k: z, v: z, d_o: z, a: z, b: z, e: z,
            qt: z, dot: z, at: z, kp: z, vp: z, bp: z, ep: z, lse: z, dd: z, failed,
        };
        cx
    }

    /// Records that a task could not get its scratch (its outputs are then not computed).
    fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// Rows `from..` of head `h` of a [heads, n, width] tensor.
#[inline(always)]
fn rows<T>(x: &[T], h: usize, n: usize, width: usize, from: usize) -> &[T] {
    &x[(h * n + from) * width..(h + 1) * n * width]
}

/// The leading dimension of a per-head transpose of n rows: padded to an odd number of 64-byte lines
/// (for f32), so the rows of a B panel fall into different L1 sets rather than thrashing two of them.
#[inline(always)]
pub(super) fn ld(n: usize) -> usize {
    n.next_multiple_of(32) + 16
}

/// Head `h` of a per-head transpose [heads, width, ld(n)], from column `from`.
#[inline(always)]
fn cols<T>(xt: &[T], h: usize, n: usize, width: usize, from: usize) -> &[T] {
    &xt[h * ld(n) * width + from..(h + 1) * ld(n) * width]
}

/// Head `h` of per-head panels of [heads, n, width], from row `from` (a multiple of MR).
#[inline(always)]
fn pan<T>(xp: &[T], h: usize, n: usize, width: usize, from: usize) -> A<'_, T> {
    let per = n.div_ceil(MR) * MR * width;
    A::Panels(&xp[h * per + from * width..(h + 1) * per])
}

/// In a row task's key-major strip, the first of its rows (from `i0`) that sees key `j`.
#[inline(always)]
fn first_live(g: &AttnShape, i0: usize, nr: usize, j: usize) -> usize {
    if g.causal {
        j.saturating_sub(i0).min(nr)
    } else {
        0
    }
}

/// The key-major P strip of rows `i0 .. i0 + nr` of head `h`: p[j·nr + r] = exp(c·k_j·q_r − ℓ_r),
/// zero where key j is masked.
#[inline(always)]
fn probs_rows<T: AttnFloat, S: Simd>(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, nkv: usize, p: &mut [T]) {
    let g = cx.g;
    gemm::<T, S>(false, nkv, nr, g.d, pan(cx.kp, h, g.nk, g.d, 0), cols(cx.qt, h, g.nq, g.d, i0), ld(g.nq), p, nr, &mut []);
    let lse = &cx.lse[h * g.nq + i0..h * g.nq + i0 + nr];
    for j in 0..nkv {
        let f = first_live(&g, i0, nr, j);
        let (dead, live) = p[j * nr..(j + 1) * nr].split_at_mut(f);
        dead.fill(T::ZERO);
        for (x, &l) in live.iter_mut().zip(&lse[f..]) {
            *x = x.mul_add(cx.c, -l).fast_exp();
        }
    }
}

/// Forward, rows `i0 .. i0 + nr` of head `h`: O (`o`, nr×dv) and ℓ (`lse`, nr).
#[inline(always)]
fn fwd_rows<T: AttnFloat, S: Simd>(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, o: &mut [T], lse: &mut [T]) {
    let g = cx.g;
    let nkv = g.visible(i0 + nr - 1);
    let mut sc = scratch();
    let Some([s, edge]) = sc.slices::<T, 2>([nkv * nr, nkv * MR]) else { return cx.fail() };
    gemm::<T, S>(false, nkv, nr, g.d, pan(cx.kp, h, g.nk, g.d, 0), cols(cx.qt, h, g.nq, g.d, i0), ld(g.nq), s, nr, &mut []);
    let (mut m, mut l) = ([T::NEG_INFINITY; 64], [T::ZERO; 64]);
    let (m, l) = (&mut m[..nr], &mut l[..nr]);
    for j in 0..nkv {
        let f = first_live(&g, i0, nr, j);
        for (x, m) in s[j * nr + f..(j + 1) * nr].iter_mut().zip(&mut m[f..]) {
            *x = *x * cx.c;
            *m = if *x > *m { *x } else { *m };
        }
    }
    for m in m.iter_mut() {
        if !m.is_finite() {
            *m = T::ZERO; // no visible key (or ±∞/NaN scores): let the arithmetic propagate it
        }
    }
    for j in 0..nkv {
        let f = first_live(&g, i0, nr, j);
        let (dead, live) = s[j * nr..(j + 1) * nr].split_at_mut(f);
        dead.fill(T::ZERO);
        for ((x, &m), l) in live.iter_mut().zip(&m[f..]).zip(&mut l[f..]) {
            *x = (*x - m).fast_exp();
            *l += *x;
        }
    }
    gemm::<T, S>(false, nr, g.dv, nkv, A::Cols(s, nr), rows(cx.v, h, g.nk, g.dv, 0), g.dv, o, g.dv, edge);
    for r in 0..nr {
        lse[r] = m[r] + l[r].ln();
        let inv = if l[r] == T::ZERO { T::ZERO } else { T::ONE / l[r] };
        for x in &mut o[r * g.dv..(r + 1) * g.dv] {
            *x = *x * inv;
        }
    }
}

/// Key-indexed partials of a row task: `acc` [nk, width] += xᵀ·`rows` for a key-major strip `x`
/// [nkv × nr] and `rows` [nr, width] (the task's rows of an [N, width] input), through `pk`, which
/// receives `x` packed into panels.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn acc_keys<T: Float, S: Simd>(nkv: usize, nr: usize, x: &[T], pk: &mut [T], rows: &[T], width: usize, acc: &mut [T]) {
    // Panel p holds keys 8p.. as nr steps of MR: an MR × nr block of the strip transposed, through
    // register block transposes (element by element it was about a fifth of the backward's row task).
    // Float is implemented for f32 and f64 only, so the casts are identities.
    use bytemuck::{cast_slice as cs, cast_slice_mut as cm};
    match T::DTYPE {
        DType::F32 => pack_keys::<f32, S::R32>(nkv, nr, cs(x), cm(pk)),
        _ => pack_keys::<f64, S::R64>(nkv, nr, cs(x), cm(pk)),
    }
    gemm::<T, S>(true, nkv, width, nr, A::Panels(pk), rows, width, acc, width, &mut []);
}

/// `pk` = the key-major strip `x` [nkv × nr] as panels of MR keys: pk[p·MR·nr + r·MR + jj] =
/// x[(p·MR + jj)·nr + r], zero for keys past nkv.
#[inline(always)]
fn pack_keys<T: Float, R: Transpose<T>>(nkv: usize, nr: usize, x: &[T], pk: &mut [T]) {
    assert!(x.len() >= nkv * nr && pk.len() >= nkv.div_ceil(MR) * MR * nr, "strip or panels shorter than {nkv}x{nr}");
    for (j0, panel) in (0..nkv).step_by(MR).zip(pk.chunks_exact_mut(MR * nr)) {
        let live = MR.min(nkv - j0);
        if live < MR {
            panel.fill(T::ZERO);
        }
        // SAFETY: rows j0..j0 + live of the strip hold nr elements each (asserted above); the panel
        // holds nr rows of MR ≥ live elements.
        unsafe { transpose_rows::<T, R>(live, |jj| x[(j0 + jj) * nr..].as_ptr(), nr, panel.as_mut_ptr(), MR) };
    }
}

/// Backward, rows of head `h`: dQ = c·dS·K with dS = P∘(dO·Vᵀ − D), and (into the group partials
/// `kv`, when given) dK/c += dSᵀ·Q and dV += Pᵀ·dO.
#[inline(always)]
fn bwd_rows<T: AttnFloat, S: Simd>(cx: &Ctx<T>, need: Need, h: usize, i0: usize, nr: usize, dq: &mut [T], kv: (&mut [T], &mut [T])) {
    let g = cx.g;
    let nkv = g.visible(i0 + nr - 1);
    let mut sc = scratch();
    let len = nkv.div_ceil(MR) * MR * nr;
    let Some([p, ds, pk, edge]) = sc.slices::<T, 4>([len, len, len, nkv * MR]) else { return cx.fail() };
    probs_rows::<T, S>(cx, h, i0, nr, nkv, p);
    gemm::<T, S>(false, nkv, nr, g.dv, pan(cx.vp, h, g.nk, g.dv, 0), cols(cx.dot, h, g.nq, g.dv, i0), ld(g.nq), ds, nr, &mut []);
    let dd = &cx.dd[h * g.nq + i0..h * g.nq + i0 + nr];
    for j in 0..nkv {
        for ((x, &p), &d) in ds[j * nr..(j + 1) * nr].iter_mut().zip(&p[j * nr..(j + 1) * nr]).zip(dd) {
            *x = p * (*x - d);
        }
    }
    if need.kv {
        acc_keys::<T, S>(nkv, nr, ds, pk, rows(cx.q, h, g.nq, g.d, i0), g.d, kv.0);
        acc_keys::<T, S>(nkv, nr, p, pk, rows(cx.d_o, h, g.nq, g.dv, i0), g.dv, kv.1);
    }
    if need.q {
        gemm::<T, S>(false, nr, g.d, nkv, A::Cols(ds, nr), rows(cx.k, h, g.nk, g.d, 0), g.d, dq, g.d, edge);
        for x in dq.iter_mut() {
            *x = *x * cx.c;
        }
    }
}

/// Backward-over-backward, rows of head `h`: the statistics D̄ = −rowsum(P∘dS̄) and ρ = rowsum(P̄∘P)
/// (always: the key outputs need them), then Q̄ = c·(dS·b + S̄·K) and dŌ = P·e + dP̄·V where asked,
/// and (into the group partials `kv`) K̄/c += dSᵀ·a + S̄ᵀ·Q and V̄ += dP̄ᵀ·dO.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bb_rows<T: AttnFloat, S: Simd>(
    cx: &Ctx<T>,
    need: Need,
    h: usize,
    i0: usize,
    nr: usize,
    qbar: &mut [T],
    dobar: &mut [T],
    (dbar, rho): (&mut [T], &mut [T]),
    kv: (&mut [T], &mut [T]),
) {
    let g = cx.g;
    let nkv = g.visible(i0 + nr - 1);
    let mut sc = scratch();
    let len = nkv.div_ceil(MR) * MR * nr;
    let Some([p, dp, dsb, x, pk, edge]) = sc.slices::<T, 6>([len, len, len, len, len, nkv * MR]) else { return cx.fail() };
    probs_rows::<T, S>(cx, h, i0, nr, nkv, p);
    let (qt, dot) = (cols(cx.qt, h, g.nq, g.d, i0), cols(cx.dot, h, g.nq, g.dv, i0));
    gemm::<T, S>(false, nkv, nr, g.dv, pan(cx.vp, h, g.nk, g.dv, 0), dot, ld(g.nq), dp, nr, &mut []);
    gemm::<T, S>(false, nkv, nr, g.d, pan(cx.kp, h, g.nk, g.d, 0), cols(cx.at, h, g.nq, g.d, i0), ld(g.nq), dsb, nr, &mut []);
    gemm::<T, S>(true, nkv, nr, g.d, pan(cx.bp, h, g.nk, g.d, 0), qt, ld(g.nq), dsb, nr, &mut []);
    gemm::<T, S>(false, nkv, nr, g.dv, pan(cx.ep, h, g.nk, g.dv, 0), dot, ld(g.nq), x, nr, &mut []);
    let dd = &cx.dd[h * g.nq + i0..h * g.nq + i0 + nr];
    // Statistics: Σ_j P∘dS̄ and Σ_j P∘(X + dS̄∘dP) per row, keys ascending; with Σ_j P∘dP = D,
    // ρ = Σ_j P∘P̄ = Σ_j P∘(X + dS̄∘dP) + 2·D̄·D.
    let (mut s1, mut s2) = ([T::ZERO; 64], [T::ZERO; 64]);
    for j in 0..nkv {
        let f = first_live(&g, i0, nr, j);
        let span = j * nr + f..(j + 1) * nr;
        let (p, dp, x) = (&p[span.clone()], &dp[span.clone()], &x[span.clone()]);
        for (r, y) in dsb[span].iter_mut().enumerate() {
            *y = *y * cx.c;
            s1[f + r] = p[r].mul_add(*y, s1[f + r]);
            s2[f + r] = p[r].mul_add(y.mul_add(dp[r], x[r]), s2[f + r]);
        }
    }
    for r in 0..nr {
        dbar[r] = -s1[r];
        rho[r] = s2[r] + (dbar[r] + dbar[r]) * dd[r];
    }
    if !(need.q || need.d_o || need.kv) {
        return;
    }
    for j in 0..nkv {
        let f = first_live(&g, i0, nr, j);
        let row = j * nr..(j + 1) * nr;
        let (p, dp, dsb, x) = (&p[row.clone()], &mut dp[row.clone()], &mut dsb[row.clone()], &mut x[row]);
        for r in f..nr {
            bar_terms(p[r], &mut dp[r], &mut dsb[r], &mut x[r], dd[r], dbar[r], rho[r]);
        }
        dp[..f].fill(T::ZERO);
        dsb[..f].fill(T::ZERO);
        x[..f].fill(T::ZERO);
    }
    if need.q {
        gemm::<T, S>(false, nr, g.d, nkv, A::Cols(dp, nr), rows(cx.b, h, g.nk, g.d, 0), g.d, qbar, g.d, edge);
        gemm::<T, S>(true, nr, g.d, nkv, A::Cols(x, nr), rows(cx.k, h, g.nk, g.d, 0), g.d, qbar, g.d, edge);
        for y in qbar.iter_mut() {
            *y = *y * cx.c;
        }
    }
    if need.d_o {
        gemm::<T, S>(false, nr, g.dv, nkv, A::Cols(p, nr), rows(cx.e, h, g.nk, g.dv, 0), g.dv, dobar, g.dv, edge);
        gemm::<T, S>(true, nr, g.dv, nkv, A::Cols(dsb, nr), rows(cx.v, h, g.nk, g.dv, 0), g.dv, dobar, g.dv, edge);
    }
    if need.kv {
        acc_keys::<T, S>(nkv, nr, dp, pk, rows(cx.a, h, g.nq, g.d, i0), g.d, kv.0);
        acc_keys::<T, S>(nkv, nr, x, pk, rows(cx.q, h, g.nq, g.d, i0), g.d, kv.0);
        acc_keys::<T, S>(nkv, nr, dsb, pk, rows(cx.d_o, h, g.nq, g.dv, i0), g.dv, kv.1);
    }
}

// One copy of each task per instruction set (the same generic code; only the register tile and the
// vector width change).
multiversion! {
    pub(super) fn fwd_task<T: AttnFloat>(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, o: &mut [T], lse: &mut [T]) = fwd_rows;
    pub(super) fn bwd_row_task<T: AttnFloat>(cx: &Ctx<T>, need: Need, h: usize, i0: usize, nr: usize, dq: &mut [T], kv: (&mut [T], &mut [T])) = bwd_rows;
    pub(super) fn bb_row_task<T: AttnFloat>(cx: &Ctx<T>, need: Need, h: usize, i0: usize, nr: usize, qbar: &mut [T], dobar: &mut [T], stats: (&mut [T], &mut [T]), kv: (&mut [T], &mut [T])) = bb_rows;
}
