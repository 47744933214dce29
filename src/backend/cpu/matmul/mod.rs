//! Matrix multiply: a BLIS-style loop nest (packing, cache blocking from the machine's cache sizes, a
//! register micro-kernel) that keeps one summation order for every output.
//!
//! C (m×n) = op(A)·op(B), all row-major, where op(A) is A stored m×k, or with `ta` the transpose of A
//! stored k×m (likewise B: k×n, or with `tb` the transpose of B stored n×k).
//!
//! # Loops (per task, see below)
//! ```text
//! for jc in n, step nc:                    B block kc×nc packed into NR-wide panels (L2-sized)
//!   for pc in k, step kc:                  k blocks, ascending
//!     pack B[pc.., jc..]
//!     for ic in m, step mc:                A block mc×kc packed into MR-tall panels (L3-sized)
//!       pack A[ic.., pc..]
//!       for each A panel (MR×kc, stays in L1; its values are broadcast):
//!         for each B panel (kc×NR, streams from L2; its rows are vector loads):
//!           micro-kernel: the MR×NR tile of C += A panel · B panel, over kc
//! ```
//! The inner loop walks along rows of C, so consecutive tiles touch the same rows of C (the same pages,
//! sequential lines the hardware prefetcher follows). This is BLIS's loop nest with the roles of the two
//! operands as in its column-major micro-kernels. The blocking comes from the caches this CPU reports
//! (L1d sizes kc, L2 sizes nc, L3 sizes mc) and the register tile from the instruction set: 12×32 f32
//! (12×16 f64) with AVX-512, 6×16 (6×8) with AVX2, 4×8 portable.
//!
//! # Why the bits never change
//! Each element of C is one chain of correctly rounded fused multiply-adds over k in ascending order,
//! starting from zero: within a k block the micro-kernel keeps it in a register; between k blocks it is
//! stored to C and loaded back, which is exact. So every blocking, tile shape, instruction set, task
//! split and thread count gives the same bits as the scalar loop `s = fma(a[i,p], b[p,j], s)`.
//!
//! # Threads
//! The product is split into as many tasks as threads (rows of C when m ≥ n, else columns, in whole
//! tiles); each task runs the loops above on its part with its own packing buffers, so there is one
//! parallel region per product and no synchronization inside it. Small products run on the calling
//! thread.

use super::float::Float;
use super::simd::{multiversion, Reg, Simd};
use super::transpose::{transpose_rows, Transpose};
use super::{pool, Isa};
use crate::error::{shape_err, Result};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// Products of at most this many multiply-adds (about 10 µs of one core) run on the calling thread.
const SEQUENTIAL_MACS: usize = 1 << 20;

/// The data caches of this CPU, per core (bytes), from Linux's sysfs; conservative defaults where it
/// says nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caches {
    /// Level-1 data cache.
    pub l1d: usize,
    /// Level-2 cache.
    pub l2: usize,
    /// The level-3 cache's share per core.
    pub l3: usize,
}

impl Caches {
    /// This machine's caches (read once).
    pub(crate) fn get() -> Caches {
        static CACHES: OnceLock<Caches> = OnceLock::new();
        *CACHES.get_or_init(|| {
            let mut c = Caches { l1d: 32 << 10, l2: 1 << 20, l3: 2 << 20 };
            for i in 0..8 {
                let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
                let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).map(|s| s.trim().to_string());
                let (Ok(level), Ok(kind), Ok(size)) = (read("level"), read("type"), read("size")) else { break };
                let bytes = match size.strip_suffix('K') {
                    Some(k) => k.parse::<usize>().map(|k| k << 10),
                    None => size.strip_suffix('M').map_or_else(|| size.parse::<usize>(), |m| m.parse::<usize>().map(|m| m << 20)),
                };
                let Ok(bytes) = bytes else { continue };
                let sharing = read("shared_cpu_list").map_or(1, |l| cpu_count(&l)).max(1);
                match (level.as_str(), kind.as_str()) {
                    ("1", "Data") => c.l1d = bytes,
                    ("2", _) => c.l2 = bytes / sharing,
                    ("3", _) => c.l3 = bytes / sharing,
                    _ => {}
                }
            }
            c
        })
    }
}

/// The number of CPUs in a sysfs list such as "0-3,8".
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.trim().parse::<usize>().unwrap_or(0).saturating_sub(a.trim().parse::<usize>().unwrap_or(0)) + 1,
            None => 1,
        })
        .sum()
}

/// The block sizes of one product: kc (k per block), mc (rows of A per block), nc (columns of B per
/// block), for an MR×NR tile of `size`-byte elements.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    kc: usize,
    mc: usize,
    nc: usize,
}

impl Blocks {
    fn new(mr: usize, nr: usize, size: usize) -> Blocks {
        let c = Caches::get();
        // An A panel (MR×kc) fills half of L1, leaving room for the B panel streaming through.
        let kc = (c.l1d / 2 / (mr * size)).clamp(64, 1024) / 8 * 8;
        // A B block (kc×nc) fills half of L2.
        let nc = (c.l2 / 2 / (kc * size)).clamp(nr, 8192) / nr * nr;
        // An A block (mc×kc) fills half of this core's share of L3.
        let mc = (c.l3 / 2 / (kc * size)).clamp(mr, 4096) / mr * mr;
        Blocks { kc, mc, nc }
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
    let (mr, nr) = tile(isa, std::mem::size_of::<T>());
    // A narrow C (n well below the tile width) wastes most of each tile on padding; Cᵀ = op(B)ᵀ·op(A)ᵀ
    // is the same products in the same order (one FMA chain over k per element), so compute that and
    // transpose it back when its tiles are fuller.
    let padded = |rows: usize, cols: usize| rows.div_ceil(mr) * mr * cols.div_ceil(nr) * nr;
    if padded(n, m) * 2 < padded(m, n) {
        let mut ct = pool::for_overwrite::<T>(op, m * n)?;
        matmul_t_into(op, &mut ct, b, a, n, k, m, !tb, !ta)?;
        for (i, row) in c.chunks_exact_mut(n).enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x = ct[j * m + i];
            }
        }
        pool::recycle(ct);
        return Ok(());
    }
    let p = Problem { a, b, m, k, n, ta, tb };
    let size = std::mem::size_of::<T>();
    let bl = Blocks::new(mr, nr, size);
    // Equal blocks (in whole units) rather than full ones and a sliver: a last k block of a few steps
    // would pay the tile's loads and stores for almost no work.
    let even = |len: usize, max: usize, unit: usize| len.div_ceil(len.div_ceil(max)).div_ceil(unit) * unit;
    let (kc, nc) = (even(k, bl.kc, 8), even(n, bl.nc, nr));
    let parallel = m.saturating_mul(k).saturating_mul(n) > SEQUENTIAL_MACS && rayon::current_num_threads() > 1;
    // Row tasks: about four per thread, so that a core slowed by something else hands its share to
    // the others (work stealing), each at most one A block.
    let tasks = if parallel { 4 * rayon::current_num_threads() } else { 1 };
    let mt = even(m, m.div_ceil(tasks).max(mr).min(bl.mc), mr);
    let mut b_buf = pool::for_overwrite::<T>(op, kc * nc + 64)?;
    let bp = aligned(&mut b_buf, kc * nc);
    let out = C { ptr: c.as_mut_ptr(), ld: n };
    for jc in (0..n).step_by(nc) {
        let jn = nc.min(n - jc);
        for pc in (0..k).step_by(kc) {
            let kb = kc.min(k - pc);
            // The B block, packed once and shared by every row task (it stays in the L2 of each core
            // that reads it).
            let panels = &mut bp[..jn.div_ceil(nr) * kb * nr];
            let pack = |(q, dst): (usize, &mut [T])| pack_b_panel(isa, &p, dst, jc + q * nr, nr.min(jn - q * nr), pc, kb);
            if parallel {
                panels.par_chunks_mut(kb * nr).enumerate().for_each(pack);
            } else {
                panels.chunks_mut(kb * nr).enumerate().for_each(pack);
            }
            let block = Block { jc, jn, pc, kb, b: panels };
            // Tasks: row blocks × groups of B panels (a C with few rows is split by columns too).
            let (row_tasks, npanels) = (m.div_ceil(mt), jn.div_ceil(nr));
            let per_group = npanels.div_ceil(tasks.div_ceil(row_tasks).min(npanels));
            let groups = npanels.div_ceil(per_group);
            let task = |t: usize| {
                let (r, g) = (t / groups, t % groups);
                let q = g * per_group..((g + 1) * per_group).min(npanels);
                row_task(isa, op, &p, &block, r * mt, ((r + 1) * mt).min(m), q, out)
            };
            if parallel {
                (0..row_tasks * groups).into_par_iter().try_for_each(task)?;
            } else {
                (0..row_tasks * groups).try_for_each(task)?;
            }
        }
    }
    pool::recycle(b_buf);
    Ok(())
}

/// The register tile (MR, NR) for a level and an element size.
fn tile(isa: Isa, size: usize) -> (usize, usize) {
    match (isa, size) {
        (Isa::Avx512, 4) => (12, 32),
        (Isa::Avx512, _) => (12, 16),
        (Isa::Avx2, 4) => (6, 16),
        (Isa::Avx2, _) => (6, 8),
        (Isa::Portable, _) => (4, 8),
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
            let src: Vec<*const T> = (0..rows).map(|r| self.a[(i0 + r) * self.k + p0..][..kc].as_ptr()).collect();
            assert!(dst.len() >= kc * MR);
            // SAFETY: each row holds kc elements (sliced above); dst holds kc rows of MR ≥ rows.
            unsafe { transpose_rows::<T, R>(&src, kc, dst.as_mut_ptr(), MR) };
        }
    }

    /// Packs columns j0..j0 + cols (≤ NR) of op(B), rows p0..p0 + kc, into `dst` as kc × NR (zero
    /// padded right of the last column). Stores are contiguous NR-wide rows.
    #[inline(always)]
    fn pack_b<R: Transpose<T>, const NR: usize>(&self, dst: &mut [T], j0: usize, cols: usize, p0: usize, kc: usize) {
        if cols < NR {
            dst.fill(T::ZERO);
        }
        if !self.tb {
            for (kk, d) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
                copy_upto::<T, NR>(d, &self.b[(p0 + kk) * self.n + j0..], cols);
            }
        } else {
            // B stored n×k: the cols×kc block transposed in registers.
            let src: Vec<*const T> = (0..cols).map(|j| self.b[(j0 + j) * self.k + p0..][..kc].as_ptr()).collect();
            assert!(dst.len() >= kc * NR);
            // SAFETY: each row holds kc elements (sliced above); dst holds kc rows of NR ≥ cols.
            unsafe { transpose_rows::<T, R>(&src, kc, dst.as_mut_ptr(), NR) };
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
        dst[..N].copy_from_slice(&src[..N]);
    } else {
        dst[..w].copy_from_slice(&src[..w]);
    }
}

/// One packed B block: columns jc..jc + jn, k steps pc..pc + kb, as NR-wide panels.
pub(super) struct Block<'a, T> {
    jc: usize,
    jn: usize,
    pc: usize,
    kb: usize,
    b: &'a [T],
}

/// C, shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct C<T> {
    ptr: *mut T,
    ld: usize,
}
// SAFETY: tasks write disjoint parts (their `Part`s do not overlap), and the buffer outlives them.
unsafe impl<T: Send> Send for C<T> {}
unsafe impl<T: Send> Sync for C<T> {}

multiversion! {
    fn pack_b_panel<T: Tiled>(p: &Problem<'_, T>, dst: &mut [T], j0: usize, cols: usize, p0: usize, kc: usize) = pack_b_isa;
    fn row_task<T: Tiled>(op: &'static str, p: &Problem<'_, T>, b: &Block<'_, T>, i0: usize, i1: usize, q: Range<usize>, c: C<T>) -> Result<()> = rows_isa;
}

#[inline(always)]
fn pack_b_isa<T: Tiled, S: Simd>(p: &Problem<'_, T>, dst: &mut [T], j0: usize, cols: usize, p0: usize, kc: usize) {
    T::pack_b::<S>(p, dst, j0, cols, p0, kc)
}

#[inline(always)]
fn rows_isa<T: Tiled, S: Simd>(
    op: &'static str,
    p: &Problem<'_, T>,
    b: &Block<'_, T>,
    i0: usize,
    i1: usize,
    q: Range<usize>,
    c: C<T>,
) -> Result<()> {
    T::rows::<S>(op, p, b, i0, i1, q, c)
}

/// The register tile of each element type and instruction set, as types and constants: f32 and f64
/// pick their register type from the instruction set `S` and the tile (MR rows, NV registers of NR
/// columns) from [`tile`].
pub(super) trait Tiled: Float {
    fn pack_b<S: Simd>(p: &Problem<'_, Self>, dst: &mut [Self], j0: usize, cols: usize, p0: usize, kc: usize);
    fn rows<S: Simd>(
        op: &'static str,
        p: &Problem<'_, Self>,
        b: &Block<'_, Self>,
        i0: usize,
        i1: usize,
        q: Range<usize>,
        c: C<Self>,
    ) -> Result<()>;
}

macro_rules! tiled {
    ($t:ty, $R:ident, [$($isa:ident => ($mr:expr, $nv:expr, $nr:expr)),*]) => {
        impl Tiled for $t {
            #[inline(always)]
            fn pack_b<S: Simd>(p: &Problem<'_, $t>, dst: &mut [$t], j0: usize, cols: usize, p0: usize, kc: usize) {
                match S::ISA {
                    $(Isa::$isa => p.pack_b::<S::$R, $nr>(dst, j0, cols, p0, kc),)*
                }
            }
            #[inline(always)]
            fn rows<S: Simd>(op: &'static str, p: &Problem<'_, $t>, b: &Block<'_, $t>, i0: usize, i1: usize, q: Range<usize>, c: C<$t>) -> Result<()> {
                match S::ISA {
                    $(Isa::$isa => rows::<$t, S::$R, $mr, $nv, $nr>(op, p, b, i0, i1, q, c),)*
                }
            }
        }
    };
}
tiled!(f32, R32, [Avx512 => (12, 2, 32), Avx2 => (6, 2, 16), Portable => (4, 2, 8)]);
tiled!(f64, R64, [Avx512 => (12, 2, 16), Avx2 => (6, 2, 8), Portable => (4, 2, 8)]);

/// Rows i0..i1 of C against the panels `q` of one packed B block: packs the rows' A block (MR-tall
/// panels, its own buffer), then for each A panel (stays in L1) sweeps the B panels (stream from L2).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows<T: Float, R: Transpose<T>, const MR: usize, const NV: usize, const NR: usize>(
    op: &'static str,
    p: &Problem<'_, T>,
    b: &Block<'_, T>,
    i0: usize,
    i1: usize,
    q: Range<usize>,
    c: C<T>,
) -> Result<()> {
    assert!(NR == NV * R::LANES, "tile width");
    let (im, kb) = (i1 - i0, b.kb);
    let mut a_buf = pool::for_overwrite::<T>(op, im.div_ceil(MR) * MR * kb + 64)?;
    let ap = aligned(&mut a_buf, im.div_ceil(MR) * MR * kb);
    for (q, dst) in ap.chunks_exact_mut(kb * MR).enumerate() {
        p.pack_a::<R, MR>(dst, i0 + q * MR, MR.min(im - q * MR), b.pc, kb);
    }
    for r in 0..im.div_ceil(MR) {
        let (i, h) = (i0 + r * MR, MR.min(im - r * MR));
        let apanel = &ap[r * kb * MR..(r + 1) * kb * MR];
        for q in q.clone() {
            let (j, w) = (b.jc + q * NR, NR.min(b.jn - q * NR));
            let bpanel = &b.b[q * kb * NR..(q + 1) * kb * NR];
            // SAFETY: rows i..i + h and columns j..j + w lie inside C and inside this task's rows
            // (no other task touches them); C has ld = n columns.
            unsafe { tile_into::<T, R, MR, NV>(kb, apanel, bpanel, c, i, j, h, w, b.pc == 0) };
        }
    }
    pool::recycle(a_buf);
    Ok(())
}

/// C[i..i + h, j..j + w] = (0 if `first`, else itself) + the tile product of the panels.
///
/// # Safety
/// The block of C must be valid for reads and writes and accessed by no one else meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_into<T: Float, R: Reg<T>, const MR: usize, const NV: usize>(
    kc: usize,
    a: &[T],
    b: &[T],
    c: C<T>,
    i: usize,
    j: usize,
    h: usize,
    w: usize,
    first: bool,
) {
    let l = R::LANES;
    let at = |r: usize| c.ptr.wrapping_add((i + r) * c.ld + j);
    if h == MR && w == NV * l {
        // SAFETY: a full tile inside C (the caller's contract).
        unsafe { micro::<T, R, MR, NV>(kc, a, b, at(0), c.ld, first) };
        return;
    }
    // An edge tile: through a buffer, loading and storing only the valid part.
    let mut buf = [[T::ZERO; 64]; MR];
    if !first {
        for (r, row) in buf.iter_mut().enumerate().take(h) {
            // SAFETY: row r of the valid block.
            unsafe { std::ptr::copy_nonoverlapping(at(r), row.as_mut_ptr(), w) };
        }
    }
    // SAFETY: buf rows hold NV·LANES ≤ 64 elements.
    unsafe { micro::<T, R, MR, NV>(kc, a, b, buf.as_mut_ptr() as *mut T, 64, first) };
    for (r, row) in buf.iter().enumerate().take(h) {
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), at(r), w) };
    }
}

/// The register tile: c[r·ldc + col] = (0 if `first`, else itself) + Σ_kk a[kk·MR + r]·b[kk·NR + col],
/// kk ascending, one FMA per step.
///
/// # Safety
/// `c` must be valid for MR rows of NV·LANES elements at stride `ldc`; `a` holds kc·MR and `b` kc·NR
/// elements (checked).
#[inline(always)]
unsafe fn micro<T: Float, R: Reg<T>, const MR: usize, const NV: usize>(kc: usize, a: &[T], b: &[T], c: *mut T, ldc: usize, first: bool) {
    let l = R::LANES;
    let nr = NV * l;
    assert!(a.len() >= kc * MR && b.len() >= kc * nr);
    let mut acc = [[R::zero(); NV]; MR];
    if !first {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                // SAFETY: inside the tile (the caller's contract).
                *x = unsafe { R::load_ptr(c.add(r * ldc + v * l)) };
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for kk in 0..kc {
        // The B panel streams from L2: ask for its rows a few steps ahead.
        for v in 0..NV {
            prefetch(bp.wrapping_add((kk + PREFETCH_AHEAD) * nr + v * l));
        }
        // SAFETY: kk < kc, and the panels hold kc rows (asserted above).
        let bv: [R; NV] = std::array::from_fn(|v| unsafe { R::load_ptr(bp.add(kk * nr + v * l)) });
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let x = R::splat(unsafe { *ap.add(kk * MR + r) });
            for (v, y) in row.iter_mut().enumerate() {
                *y = x.fma(bv[v], *y);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            // SAFETY: inside the tile (the caller's contract).
            unsafe { x.store_ptr(c.add(r * ldc + v * l)) };
        }
    }
}

/// How many k steps ahead the micro-kernel prefetches the B panel.
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to bring the cache line of `p` into L1 (a hint: it never faults, any address is fine).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The first `len` elements of `buf` from its first 64-byte boundary (`buf` has 64 spare elements), so
/// that no vector load of the micro-kernel straddles two cache lines.
#[inline(always)]
fn aligned<T>(buf: &mut [T], len: usize) -> &mut [T] {
    let skip = buf.as_ptr().align_offset(64).min(buf.len() - len);
    &mut buf[skip..skip + len]
}

#[cfg(test)]
mod tests;
