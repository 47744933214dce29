//! Matrix multiply: a BLIS-style loop nest (packing, cache blocking from the machine's cache sizes, a
//! register micro-kernel) that keeps one summation order for every output.
//!
//! C (m×n) = op(A)·op(B), all row-major, where op(A) is A stored m×k, or with `ta` the transpose of A
//! stored k×m (likewise B: k×n, or with `tb` the transpose of B stored n×k).
//!
//! # Loops
//! ```text
//! for ic in m, step mc:                    A block mc×kc packed into MR-tall panels (L3-sized)
//!   for pc in k, step kc:                  k blocks, ascending
//!     pack A[ic.., pc..]                   (once, shared by every task)
//!     for jc in n, step nc:                B block kc×nc packed into NR-wide panels (L2-sized)
//!       pack B[pc.., jc..]                 (once, shared by every task)
//!       tasks (rows of the A block × groups of B panels), each:
//!         for each A panel (MR×kc, stays in L1; its values are broadcast):
//!           for each B panel (kc×NR, streams from L2; its rows are vector loads):
//!             micro-kernel: the MR×NR tile of C += A panel · B panel, over kc
//! ```
//! The operand that lives in L3 (the A block) is packed outermost, once per k block, and read
//! against every B block, as BLIS does with its L3-resident operand; packed inside the column loop it
//! was repacked n / nc times (11 on a 2048³ product, a tenth of its time). When the whole column
//! block of op(B) fits the B block's budget (small products, as in a small model's training step),
//! all its k blocks are packed in one parallel region and each task runs them in order: fewer
//! parallel regions per product.
//!
//! Where C is a single row or column of tiles, the large operand meets one tile per panel and is read
//! where it lies instead of packed ([`InPlace`]).
//!
//! The inner loop walks along rows of C, so consecutive tiles touch the same rows of C (the same pages,
//! sequential lines the hardware prefetcher follows). This is BLIS's loop nest with the roles of the two
//! operands as in its column-major micro-kernels. The blocking comes from the caches this CPU reports
//! (L1d sizes kc, L2 sizes nc, L3 sizes mc) and the register tile ([`super::tile`], shared with the
//! convolutions) from the instruction set: 12×32 f32 (12×16 f64) with AVX-512, 6×16 (6×8) with AVX2,
//! 4×8 portable, or a shorter one where m would leave most of the last row of tiles empty.
//!
//! # Why the bits never change
//! Each element of C is one chain of correctly rounded fused multiply-adds over k in ascending order,
//! starting from zero: within a k block the micro-kernel keeps it in a register; between k blocks it is
//! stored to C and loaded back, which is exact. So every blocking, tile shape, instruction set, task
//! split and thread count gives the same bits as the scalar loop `s = fma(a[i,p], b[p,j], s)`.
//!
//! # Threads
//! Each packing step is one parallel region over panels, and each B block's tiles one parallel region
//! over tasks: about four per thread (rows of the A block, and groups of B panels where C has few
//! rows), each writing its own tiles of C, so nothing inside a region synchronizes. Small products
//! run on the calling thread.

use super::float::Float;
use super::pool;
use super::tile::{self, aligned, tile_into, Caches, Packed, PackedA, StridedA, TileJob, Tiled, C};
use super::transpose::{transpose_rows, Transpose};
use crate::error::{shape_err, Result};
use rayon::prelude::*;
use std::ops::Range;

/// Products of at most this many multiply-adds (about 10 µs of one core) run on the calling thread.
pub(super) const SEQUENTIAL_MACS: usize = 1 << 20;

/// Products of at most this many multiply-adds (about 100 µs of two cores) run as one part of C per
/// thread, in one parallel region (see [`product`]); larger ones share their packed blocks between
/// threads, region by region.
const SPLIT_MACS: usize = 1 << 24;

/// The block sizes of one product: kc (k per block), mc (rows of A per block), nc (columns of B per
/// block), for an MR×NR tile of `size`-byte elements.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    kc: usize,
    mc: usize,
    nc: usize,
    /// Products of at most this many multiply-adds run as one part per thread (see [`product`]).
    split: usize,
}

impl Blocks {
    fn new(mr: usize, nr: usize, size: usize) -> Blocks {
        let c = Caches::get();
        let kc = c.kc(mr, size);
        // A B block (kc×nc) fills half of L2.
        let nc = (c.l2 / 2 / (kc * size)).clamp(nr, 8192) / nr * nr;
        // An A block (mc×kc) fills half of this core's share of L3.
        let mc = (c.l3 / 2 / (kc * size)).clamp(mr, 4096) / mr * mr;
        Blocks { kc, mc, nc, split: SPLIT_MACS }
    }
}

/// C = op(A)·op(B) (m×n) into `c` (length m·n, overwritten): op(A) is `a` as m×k, or with `ta` the
/// transpose of `a` stored k×m; op(B) is `b` as k×n, or with `tb` the transpose of `b` stored n×k.
/// Bitwise equal to transposing first, and to the scalar FMA chain over k.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_t_into<T: Tiled>(
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
    if Some(a.len()) != m.checked_mul(k) || Some(b.len()) != k.checked_mul(n) || Some(c.len()) != m.checked_mul(n) {
        return shape_err(op, format!("matmul operands of {}, {} and {} elements do not fit {m}x{k}x{n}", a.len(), b.len(), c.len()));
    }
    if k == 0 {
        c.fill(T::ZERO);
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    // One instruction set for the whole call: the orchestration and the kernels agree on the tile.
    let isa = super::best_isa();
    let (mr, nr) = T::tile(isa, m);
    // A narrow C (n well below the tile width) wastes most of each tile on padding; Cᵀ = op(B)ᵀ·op(A)ᵀ
    // is the same products in the same order (one FMA chain over k per element), so compute that and
    // transpose it back when its tiles are fuller.
    let padded = |rows: usize, cols: usize| rows.div_ceil(mr) * mr * cols.div_ceil(nr) * nr;
    // Where only one orientation reads its larger operand in place (see [`InPlace`]), take it.
    let (mr_t, nr_t) = T::tile(isa, n);
    let flip = match (InPlace::of(m, n, tb, mr, nr).larger(m, n), InPlace::of(n, m, !ta, mr_t, nr_t).larger(n, m)) {
        (true, false) => false,
        (false, true) => true,
        _ => padded(n, m) * 2 < padded(m, n),
    };
    if flip {
        let mut ct = pool::for_overwrite::<T>(op, m * n)?;
        matmul_t_into(op, &mut ct, b, a, n, k, m, !tb, !ta)?;
        tile::run(isa, mr, TransposeBack { ct: &ct, c, m, n });
        pool::recycle(ct);
        return Ok(());
    }
    let p = Problem { a, b, m, k, n, ta, tb };
    product(op, c, &p, isa, (mr, nr), Blocks::new(mr, nr, std::mem::size_of::<T>()))
}

/// One orientation of [`matmul_t_into`] with the tile `(mr, nr)` and the blocks `bl` (from the
/// caches; the tests pass small ones, to reach every loop on small products).
///
/// A product of at most `bl.split` multiply-adds is split into one part of C per thread (whole tiles;
/// the grid that gives each part the least work, counting the packing of its own operands), each
/// running the loop nest sequentially with its own buffers: one parallel region. Split into its
/// packing and task regions instead, a 64×784×128 product (a small model's layer) ran 2 threads at
/// 46% of their FMA peak against 73% for 1 thread, measured on a Zen 3: the regions' wake-ups cost
/// more than the duplicated packing.
fn product<T: Tiled>(op: &'static str, c: &mut [T], p: &Problem<'_, T>, isa: super::Isa, tile: (usize, usize), bl: Blocks) -> Result<()> {
    let ((m, k, n), (mr, nr)) = ((p.m, p.k, p.n), tile);
    let threads = rayon::current_num_threads();
    let macs = m.saturating_mul(k).saturating_mul(n);
    let out = C { ptr: c.as_mut_ptr(), ld: n };
    if threads < 2 || macs <= SEQUENTIAL_MACS || macs > bl.split {
        // SAFETY: `c` is the whole m×n output (checked by the caller), borrowed mutably here.
        return unsafe { blocked(op, out, p, isa, tile, bl, 0..m, 0..n, threads > 1 && macs > SEQUENTIAL_MACS) };
    }
    let (mt, nt) = (m.div_ceil(mr), n.div_ceil(nr));
    let cost = |(tr, tc): (usize, usize)| {
        let (rows, cols) = (mt.div_ceil(tr) * mr, nt.div_ceil(tc) * nr);
        rows * cols * k + 8 * (rows + cols) * k
    };
    let grid = (1..=threads.min(mt))
        .flat_map(|tr| (1..=(threads / tr).min(nt)).map(move |tc| (tr, tc)))
        .min_by_key(|&g| cost(g))
        .unwrap_or((1, 1));
    let (rt, ct) = (mt.div_ceil(grid.0) * mr, nt.div_ceil(grid.1) * nr);
    let parts: Vec<(Range<usize>, Range<usize>)> =
        (0..m).step_by(rt).flat_map(|i| (0..n).step_by(ct).map(move |j| (i..(i + rt).min(m), j..(j + ct).min(n)))).collect();
    parts.into_par_iter().try_for_each(|(rows, cols)| {
        // SAFETY: the parts are disjoint blocks of the m×n output, one per task.
        unsafe { blocked(op, out, p, isa, tile, bl, rows, cols, false) }
    })
}

/// The loop nest of [`matmul_t_into`] on rows × cols of C, in parallel regions or on the calling
/// thread.
///
/// # Safety
/// `out` must be valid for the m×n output at stride n, and its block rows × cols accessed by no one
/// else meanwhile; rows and cols start on tile boundaries.
#[allow(clippy::too_many_arguments)]
unsafe fn blocked<T: Tiled>(
    op: &'static str,
    out: C<T>,
    p: &Problem<'_, T>,
    isa: super::Isa,
    (mr, nr): (usize, usize),
    bl: Blocks,
    rows: Range<usize>,
    cols: Range<usize>,
    parallel: bool,
) -> Result<()> {
    let (m, k, n) = (p.m, p.k, p.n);
    let inplace = InPlace::of(m, n, p.tb, mr, nr);
    // Equal blocks (in whole units) rather than full ones and a sliver: a last k block of a few steps
    // would pay the tile's loads and stores for almost no work.
    let even = |len: usize, max: usize, unit: usize| len.div_ceil(len.div_ceil(max.max(1))).div_ceil(unit) * unit;
    let (kc, nc) = (even(k, bl.kc, 8), even(cols.len(), bl.nc, nr));
    let threads = rayon::current_num_threads();
    // Row tasks: about four per thread, so that a core slowed by something else hands its share to
    // the others (work stealing).
    let tasks = if parallel { 4 * threads } else { 1 };
    // The k blocks packed per parallel region: one (the B block stays in L2 while every row task reads
    // it), or all of them when the whole column block of op(B) fits that budget anyway (a small
    // product: one packing region and one task region instead of two per k block, and the tasks run
    // their k blocks in order, so each C element keeps its one FMA chain over k ascending).
    let blocks_k: Vec<(usize, usize)> = (0..k).step_by(kc).map(|pc| (pc, kc.min(k - pc))).collect();
    let whole_k = k.saturating_mul(nc.min(cols.len())) <= bl.kc * bl.nc;
    let (per_region, group_k) = if whole_k { (blocks_k.len(), k) } else { (1, kc) };
    // The A block: the rows of op(A) packed at once, for the group's k steps, within half of the L3
    // share of each thread taking part. It is packed once and read against every B block (BLIS packs
    // its L3-resident operand outermost for the same reason: a 2048³ product repacked A once per B
    // block, 11 times, a tenth of its time).
    let mc = even(rows.len(), (bl.mc * bl.kc * if parallel { threads } else { 1 } / group_k).max(mr), mr);
    let a_panels = |h: usize| if inplace.a { usize::from(!h.is_multiple_of(mr)) } else { h.div_ceil(mr) };
    // (mc is whole panels, so only the last A block can end in a partial one.)
    let a_cap = if inplace.a { a_panels(rows.len()) } else { a_panels(mc.min(rows.len())) } * mr * group_k;
    let b_cap = if whole_k { k * nc.min(cols.len()).div_ceil(nr) * nr } else { kc * nc };
    let mut a_buf = pool::for_overwrite::<T>(op, a_cap + 64)?;
    let mut b_buf = pool::for_overwrite::<T>(op, b_cap + 64)?;
    let (ap, bp) = (aligned(&mut a_buf, a_cap), aligned(&mut b_buf, b_cap));
    fn run_all<J: Send>(parallel: bool, jobs: Vec<J>, f: impl Fn(J) + Sync + Send) {
        if parallel {
            jobs.into_par_iter().for_each(f);
        } else {
            jobs.into_iter().for_each(f);
        }
    }
    for ic in rows.clone().step_by(mc) {
        let ih = mc.min(rows.end - ic);
        for group in blocks_k.chunks(per_region) {
            // The group's A blocks for rows ic..ic + ih, block after block, each as MR-tall panels
            // (with op(A) read in place, only a partial last panel).
            let mut jobs: Vec<(usize, usize, &mut [T])> = Vec::with_capacity(group.len() * a_panels(ih));
            let mut rest = &mut ap[..];
            for &(pc, kb) in group {
                let first = if inplace.a { ih / mr } else { 0 };
                for r in first..first + a_panels(ih) {
                    let (dst, tail) = rest.split_at_mut(kb * mr);
                    jobs.push((pc, r, dst));
                    rest = tail;
                }
            }
            run_all(parallel, jobs, |(pc, r, dst): (usize, usize, &mut [T])| {
                let kb = dst.len() / mr;
                tile::run(isa, mr, Pack { p, a: true, dst, at: ic + r * mr, len: mr.min(ih - r * mr), p0: pc, kc: kb })
            });
            let mut at = 0;
            let a_blocks: Vec<&[T]> = group
                .iter()
                .map(|&(_, kb)| {
                    let a = &ap[at..at + a_panels(ih) * kb * mr];
                    at += a.len();
                    a
                })
                .collect();
            for jc in cols.clone().step_by(nc) {
                let jn = nc.min(cols.end - jc);
                let npanels = jn.div_ceil(nr);
                // The group's B blocks, packed once and shared by every row task (block after block,
                // each as NR-wide panels of its kb rows).
                let mut jobs: Vec<(usize, usize, &mut [T])> = Vec::with_capacity(group.len() * npanels);
                let mut rest = &mut bp[..];
                for &(pc, kb) in group {
                    for q in 0..npanels {
                        let (dst, tail) = rest.split_at_mut(kb * nr);
                        // A full panel of an op(B) read in place is not copied.
                        if !(inplace.b && (q + 1) * nr <= jn) {
                            jobs.push((pc, q, dst));
                        }
                        rest = tail;
                    }
                }
                run_all(parallel, jobs, |(pc, q, dst): (usize, usize, &mut [T])| {
                    let kb = dst.len() / nr;
                    tile::run(isa, mr, Pack { p, a: false, dst, at: jc + q * nr, len: nr.min(jn - q * nr), p0: pc, kc: kb })
                });
                let mut at = 0;
                let blocks: Vec<Block<'_, T>> = group
                    .iter()
                    .zip(&a_blocks)
                    .map(|(&(pc, kb), &a)| {
                        let b = &bp[at..at + npanels * kb * nr];
                        at += npanels * kb * nr;
                        Block { jc, jn, pc, kb, a, b }
                    })
                    .collect();
                // Tasks: rows of the A block × groups of B panels (a C with few rows is split by
                // columns too).
                let mt = even(ih, ih.div_ceil(tasks).max(mr), mr);
                let row_tasks = ih.div_ceil(mt);
                let per_group = npanels.div_ceil(tasks.div_ceil(row_tasks).min(npanels));
                let groups = npanels.div_ceil(per_group);
                let task = |t: usize| {
                    let (r, g) = (t / groups, t % groups);
                    let q = g * per_group..((g + 1) * per_group).min(npanels);
                    let (i0, i1) = (ic + r * mt, (ic + (r + 1) * mt).min(ic + ih));
                    blocks.iter().for_each(|b| tile::run(isa, mr, RowTask { p, b, inplace, ic, i0, i1, q: q.clone(), c: out }))
                };
                if parallel {
                    (0..row_tasks * groups).into_par_iter().for_each(task);
                } else {
                    (0..row_tasks * groups).for_each(task);
                }
            }
        }
    }
    pool::recycle(a_buf);
    pool::recycle(b_buf);
    Ok(())
}

/// Which operands the tiles read where they lie instead of from packed copies.
///
/// Packing an operand costs a read and a write of all of it, which pays where each of its panels is
/// read by many tiles. Where C is a single row of tiles (m ≤ MR) each panel of op(B) meets one tile,
/// and where it is a single column (n ≤ NR) each panel of op(A) does: the last layer of a classifier
/// (n = 10) and its gradients, a batch of one. There packing would copy the whole large operand for a
/// single use (a 512×512×10 product spent most of its time doing so), so it is read in place: op(B)
/// when row-major (its rows are the vector loads), op(A) in either layout (its values are broadcast).
/// A partial last panel is still packed, so that no vector read passes the end of its buffer.
/// Measured, reading in place panels that several tiles share (a batch of 64 against a weight) was
/// no faster than packing them, so the rule stops at one. The bits do not change: the tiles run the
/// same FMA chains whatever their operands' addresses.
#[derive(Clone, Copy, Debug)]
struct InPlace {
    a: bool,
    b: bool,
}

impl InPlace {
    /// The choice for an m×n product with an MR×NR tile. A column narrower than half a tile is left
    /// packed: its lanes would be mostly padding, and transposed (see [`matmul_t_into`]) it runs fuller
    /// tiles.
    fn of(m: usize, n: usize, tb: bool, mr: usize, nr: usize) -> InPlace {
        InPlace { a: n <= nr && 2 * n > nr, b: !tb && m <= mr }
    }

    /// Whether the larger operand (op(A) when m ≥ n) is read in place.
    fn larger(self, m: usize, n: usize) -> bool {
        if m >= n {
            self.a
        } else {
            self.b
        }
    }
}

/// The operands of one product (see [`matmul_t_into`]).
#[derive(Clone, Copy)]
pub(super) struct Problem<'a, T> {
    a: &'a [T],
    b: &'a [T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
}

impl<T: Float> Problem<'_, T> {
    /// op(A)[i, p].
    #[cfg(test)]
    fn a_at(&self, i: usize, p: usize) -> T {
        if self.ta {
            self.a[p * self.m + i]
        } else {
            self.a[i * self.k + p]
        }
    }

    /// Packs rows i0..i0 + rows (≤ MR) of op(A), columns p0..p0 + kc, into `dst` as kc × MR (zero
    /// padded below the last row). Stores are contiguous MR-wide rows.
    #[inline(always)]
    fn pack_a<R: Transpose<T>, const MR: usize>(&self, dst: &mut [T], i0: usize, rows: usize, p0: usize, kc: usize) {
        if rows < MR {
            dst.fill(T::ZERO);
        }
        if self.ta {
            for (kk, d) in dst.chunks_exact_mut(MR).take(kc).enumerate() {
                copy_upto::<T, MR>(d, &self.a[(p0 + kk) * self.m + i0..], rows);
            }
        } else {
            // Row-major A: the rows×kc block transposed in registers.
            let src = |r: usize| self.a[(i0 + r) * self.k + p0..][..kc].as_ptr();
            assert!(dst.len() >= kc * MR);
            // SAFETY: each row holds kc elements (sliced in `src`); dst holds kc rows of MR ≥ rows.
            unsafe { transpose_rows::<T, R>(rows, src, kc, dst.as_mut_ptr(), MR) };
        }
    }

    /// Packs columns j0..j0 + cols (≤ NR) of op(B), rows p0..p0 + kc, into `dst` as kc × NR (zero
    /// padded right of the last column). Stores are contiguous NR-wide rows.
    #[inline(always)]
    fn pack_b<R: Transpose<T>, const NV: usize>(&self, dst: &mut [T], j0: usize, cols: usize, p0: usize, kc: usize) {
        let nr = NV * R::LANES;
        if cols < nr {
            dst.fill(T::ZERO);
        }
        if !self.tb {
            for (kk, d) in dst.chunks_exact_mut(nr).take(kc).enumerate() {
                let src = &self.b[(p0 + kk) * self.n + j0..];
                if cols == nr {
                    // Whole rows as register moves (no memcpy call).
                    for v in 0..NV {
                        R::load(&src[v * R::LANES..]).store(&mut d[v * R::LANES..]);
                    }
                } else {
                    d[..cols].copy_from_slice(&src[..cols]);
                }
            }
        } else {
            // B stored n×k: the cols×kc block transposed in registers.
            let src = |j: usize| self.b[(j0 + j) * self.k + p0..][..kc].as_ptr();
            assert!(dst.len() >= kc * nr);
            // SAFETY: each row holds kc elements (sliced in `src`); dst holds kc rows of nr ≥ cols.
            unsafe { transpose_rows::<T, R>(cols, src, kc, dst.as_mut_ptr(), nr) };
        }
    }

    #[cfg(test)]
    fn b_at(&self, p: usize, j: usize) -> T {
        if self.tb {
            self.b[j * self.k + p]
        } else {
            self.b[p * self.n + j]
        }
    }
}

/// dst[..w] = src[..w] for w ≤ N; the full-width case is a fixed-size copy (vector moves, no memcpy
/// call).
#[inline(always)]
fn copy_upto<T: Copy, const N: usize>(dst: &mut [T], src: &[T], w: usize) {
    if w == N {
        // As arrays: `copy_from_slice` of a constant length can still become a memcpy call.
        #[allow(clippy::unwrap_used)] // infallible: both slices have exactly N elements
        let (s, d): ([T; N], &mut [T; N]) = (src[..N].try_into().unwrap(), (&mut dst[..N]).try_into().unwrap());
        *d = s;
    } else {
        dst[..w].copy_from_slice(&src[..w]);
    }
}

/// One k block of the product: op(B)'s columns jc..jc + jn and k steps pc..pc + kb as NR-wide packed
/// panels, beside the A block's MR-tall packed panels of the same steps.
pub(super) struct Block<'a, T> {
    jc: usize,
    jn: usize,
    pc: usize,
    kb: usize,
    a: &'a [T],
    b: &'a [T],
}

/// C (m×n) = the transpose of Cᵀ (`ct`, n×m), through register block transposes (a scalar loop of
/// strided loads cost several percent of a small model's step).
struct TransposeBack<'a, T> {
    ct: &'a [T],
    c: &'a mut [T],
    m: usize,
    n: usize,
}

impl<T: Float> TileJob<T> for TransposeBack<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<R: Transpose<T>, const MR: usize, const NV: usize>(self) {
        let TransposeBack { ct, c, m, n } = self;
        assert!(ct.len() >= m * n && c.len() >= m * n);
        // SAFETY: row j of Cᵀ is ct[j·m..][..m] (checked above); C holds m rows of n at stride n.
        unsafe { transpose_rows::<T, R>(n, |j| ct[j * m..].as_ptr(), m, c.as_mut_ptr(), n) };
    }
}

/// Packs one panel: of op(A) (`a`: rows at..at + len, see [`Problem::pack_a`]) or of op(B) (columns
/// at..at + len, see [`Problem::pack_b`]), k steps p0..p0 + kc.
struct Pack<'a, T> {
    p: &'a Problem<'a, T>,
    a: bool,
    dst: &'a mut [T],
    at: usize,
    len: usize,
    p0: usize,
    kc: usize,
}

impl<T: Float> TileJob<T> for Pack<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<R: Transpose<T>, const MR: usize, const NV: usize>(self) {
        let Pack { p, a, dst, at, len, p0, kc } = self;
        if a {
            p.pack_a::<R, MR>(dst, at, len, p0, kc)
        } else {
            p.pack_b::<R, NV>(dst, at, len, p0, kc)
        }
    }
}

/// Rows i0..i1 of C (inside the A block that starts at row ic) against the panels `q` of one k block:
/// for each A panel (stays in L1) sweeps the B panels (stream from L2).
struct RowTask<'a, T> {
    p: &'a Problem<'a, T>,
    b: &'a Block<'a, T>,
    inplace: InPlace,
    ic: usize,
    i0: usize,
    i1: usize,
    q: Range<usize>,
    c: C<T>,
}

impl<T: Float> TileJob<T> for RowTask<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<R: Transpose<T>, const MR: usize, const NV: usize>(self) {
        let RowTask { p, b, inplace, ic, i0, i1, q, c } = self;
        let (kb, nr) = (b.kb, NV * R::LANES);
        for i in (i0..i1).step_by(MR) {
            let h = MR.min(i1 - i);
            let a_here = inplace.a && h == MR;
            // Panel (i − ic) / MR of the A block (with op(A) in place, the one packed: the last).
            let a_packed = || {
                let r = if inplace.a { 0 } else { (i - ic) / MR };
                PackedA::new(&b.a[r * kb * MR..(r + 1) * kb * MR], kb, MR)
            };
            let (off, rs, ks) = if p.ta { (b.pc * p.m + i, 1, p.m) } else { (i * p.k + b.pc, p.k, 1) };
            for q in q.clone() {
                let (j, w) = (b.jc + q * nr, nr.min(b.jn - q * nr));
                let b_here = inplace.b && w == nr;
                let b_packed = || Packed::new(&b.b[q * kb * nr..(q + 1) * kb * nr], kb, nr);
                macro_rules! tile {
                    ($a:expr, $b:expr) => {
                        // SAFETY: rows i..i + h and columns j..j + w lie inside C and inside this
                        // task's rows (no other task touches them); C has ld = n.
                        unsafe { tile_into::<T, R, _, _, MR, NV>(kb, $a, $b, c, i, j, h, w, b.pc == 0) }
                    };
                }
                let a_in = || StridedA::new(p.a, off, rs, ks, MR, kb);
                let b_in = || Packed::strided(p.b, b.pc * p.n + j, p.n, kb, nr);
                match (a_here, b_here) {
                    (true, true) => tile!(a_in(), b_in()),
                    (true, false) => tile!(a_in(), b_packed()),
                    (false, true) => tile!(a_packed(), b_in()),
                    (false, false) => tile!(a_packed(), b_packed()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
