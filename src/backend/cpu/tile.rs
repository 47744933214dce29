//! The register tile that every matrix product on the CPU runs (matmul, the three convolution kernels),
//! and the machine facts its callers block by.
//!
//! A product's caller packs or locates its operands and calls [`tile_into`] on one MR×NR tile of the
//! output: MR rows broadcast from a packed A panel (kc × MR, each k step's MR values side by side), NR
//! columns read as vector loads from the rows of B. Where B's rows live is the [`Rows`] trait: a packed
//! panel (matmul, the weight gradient) or runs of an image at offsets from a table (the convolution's
//! gathered operand, never copied). The tile shapes per element type and instruction set are one table
//! ([`Tiled`]), and the caches the blocking is sized from are read from the machine ([`Caches`]).
//!
//! # Why the bits never change
//! Each output of a tile is one chain of correctly rounded fused multiply-adds over k in ascending order:
//! from zero (`first`) or from the value already in the output, which a caller that blocks over k stored
//! there exactly. So every blocking, tile shape, instruction set and thread count gives the bits of the
//! scalar loop `s = fma(a[i,p], b[p,j], s)`.

use super::float::Float;
use super::simd::{Reg, Simd};
use super::transpose::Transpose;
use super::Isa;
use std::sync::OnceLock;

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

    /// The k block of an MR-tall A panel of `size`-byte elements: the panel fills half of L1, leaving
    /// room for the B rows streaming through (a multiple of 8, within [64, 1024]).
    pub(crate) fn kc(&self, mr: usize, size: usize) -> usize {
        (self.l1d / 2 / (mr * size)).clamp(64, 1024) / 8 * 8
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

/// Work generic over the register tile: [`Tiled::with_tile`] calls `run` with the register type and
/// tile of the element type and instruction set at hand.
pub(crate) trait TileJob<T: Float> {
    /// What the work returns.
    type Out;
    /// The work, for registers `R` and an MR × (NV·LANES) tile.
    fn run<R: Transpose<T>, const MR: usize, const NV: usize>(self) -> Self::Out;
}

/// Runs `job` compiled for the instruction set `isa` (lowered to what the CPU has) with the tile of
/// `mr` rows that [`Tiled::tile`] chose for it: the one entry point of every tiled kernel. The job's
/// `run` is `#[inline(always)]`, so it is generated anew inside each `#[target_feature]` copy.
pub(crate) fn run<T: Tiled, J: TileJob<T>>(isa: Isa, mr: usize, job: J) -> J::Out {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512<T: Tiled, J: TileJob<T>>(mr: usize, job: J) -> J::Out {
            T::with_tile::<super::simd::Avx512, J>(mr, job)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<T: Tiled, J: TileJob<T>>(mr: usize, job: J) -> J::Out {
            T::with_tile::<super::simd::Avx2, J>(mr, job)
        }
        match isa.min(super::detected()) {
            // SAFETY: detected() checked that the CPU has these features.
            Isa::Avx512 => return unsafe { avx512::<T, J>(mr, job) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { avx2::<T, J>(mr, job) },
            Isa::Portable => {}
        }
    }
    T::with_tile::<super::simd::Portable, J>(mr, job)
}

/// The register tiles of each element type and instruction set (one table, below).
pub(crate) trait Tiled: Float {
    /// The tile (MR rows, NR columns) for level `isa` and an output of `m` rows: the tall tile, or the
    /// short one where the tall one would leave more than 5% of the last row of tiles empty and the
    /// short one less (32 rows: 4 tiles of 8 rather than 3 of 12).
    fn tile(isa: Isa, m: usize) -> (usize, usize);
    /// Runs `job` with this type's registers for the instruction set `S` and the tile of `mr` rows that
    /// [`Tiled::tile`] chose.
    fn with_tile<S: Simd, J: TileJob<Self>>(mr: usize, job: J) -> J::Out;
}

/// Of a tall and a short tile height, the one for `m` rows (see [`Tiled::tile`]).
fn pick(tall: usize, short: usize, m: usize) -> usize {
    let waste = |mr: usize| m.div_ceil(mr) * mr - m;
    if waste(tall) * 20 > m.div_ceil(tall) * tall && waste(short) < waste(tall) {
        short
    } else {
        tall
    }
}

macro_rules! tiled {
    ($t:ty, $R:ident, [$($isa:ident => ($tall:expr, $short:expr, $nv:expr, $nr:expr)),*]) => {
        impl Tiled for $t {
            fn tile(isa: Isa, m: usize) -> (usize, usize) {
                match isa {
                    $(Isa::$isa => (pick($tall, $short, m), $nr),)*
                }
            }
            #[inline(always)]
            fn with_tile<S: Simd, J: TileJob<$t>>(mr: usize, job: J) -> J::Out {
                match S::ISA {
                    $(Isa::$isa => {
                        assert!($nv * <S::$R as Reg<$t>>::LANES == $nr, "tile width");
                        if mr == $tall {
                            job.run::<S::$R, $tall, $nv>()
                        } else {
                            assert_eq!(mr, $short, "tile height");
                            job.run::<S::$R, $short, $nv>()
                        }
                    })*
                }
            }
        }
    };
}
// Two vector registers of columns; rows as many as the register file holds beside them (AVX-512: 24
// accumulators + 2 B rows + a broadcast of 32 registers; AVX2: 12 + 2 + 1 of 16), or fewer where the
// output has few rows.
tiled!(f32, R32, [Avx512 => (12, 8, 2, 32), Avx2 => (6, 4, 2, 16), Portable => (4, 2, 2, 8)]);
tiled!(f64, R64, [Avx512 => (12, 8, 2, 16), Avx2 => (6, 4, 2, 8), Portable => (4, 2, 2, 8)]);

/// Where A's value for tile row r at step kk is (the value the micro-kernel broadcasts).
///
/// # Safety
/// An implementation guarantees that `at(kk, r)` is valid for reading one element for every kk below
/// `len()` and r below `rows()` (its constructor checks that).
pub(crate) unsafe trait Bcast<T>: Copy {
    /// The element of row r at step kk.
    fn at(&self, kk: usize, r: usize) -> *const T;
    /// The number of steps.
    fn len(&self) -> usize;
    /// The number of rows.
    fn rows(&self) -> usize;
}

/// A packed A panel: kc steps of MR contiguous values.
#[derive(Clone, Copy)]
pub(crate) struct PackedA<T> {
    ptr: *const T,
    mr: usize,
    kc: usize,
}

impl<T> PackedA<T> {
    /// The first kc steps of MR values of `panel` (checked).
    #[inline(always)]
    pub(crate) fn new(panel: &[T], kc: usize, mr: usize) -> PackedA<T> {
        assert!(panel.len() >= kc * mr, "packed panel of {} elements is shorter than {kc}x{mr}", panel.len());
        PackedA { ptr: panel.as_ptr(), mr, kc }
    }
}

// SAFETY: `new` checked that kc steps of mr values lie inside the panel.
unsafe impl<T: Copy> Bcast<T> for PackedA<T> {
    #[inline(always)]
    fn at(&self, kk: usize, r: usize) -> *const T {
        self.ptr.wrapping_add(kk * self.mr + r)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.kc
    }
    #[inline(always)]
    fn rows(&self) -> usize {
        self.mr
    }
}

/// A read in place: row r of the tile is the contiguous run `rows[r][..kc]` (no packing; the pointers
/// stay in registers for tiles of up to 8 rows).
#[derive(Clone, Copy)]
pub(crate) struct RowPtrs<T, const MR: usize> {
    rows: [*const T; MR],
    kc: usize,
}

impl<T, const MR: usize> RowPtrs<T, MR> {
    /// Rows of at least kc elements each (checked).
    #[inline(always)]
    pub(crate) fn new(rows: [&[T]; MR], kc: usize) -> RowPtrs<T, MR> {
        assert!(rows.iter().all(|r| r.len() >= kc), "a row is shorter than {kc}");
        RowPtrs { rows: rows.map(|r| r.as_ptr()), kc }
    }
}

// SAFETY: `new` checked that every row holds kc elements.
unsafe impl<T: Copy, const MR: usize> Bcast<T> for RowPtrs<T, MR> {
    #[inline(always)]
    fn at(&self, kk: usize, r: usize) -> *const T {
        self.rows[r].wrapping_add(kk)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.kc
    }
    #[inline(always)]
    fn rows(&self) -> usize {
        MR
    }
}

/// A read in place at fixed strides: row r of the tile at step kk is `data[off + r·rs + kk·ks]` (a
/// row-major A has rs = k, ks = 1; a transposed one rs = 1, ks = m). For an operand that meets one
/// tile only, where packing would copy it for a single use.
#[derive(Clone, Copy)]
pub(crate) struct StridedA<T> {
    ptr: *const T,
    rs: usize,
    ks: usize,
    rows: usize,
    kc: usize,
}

impl<T> StridedA<T> {
    /// `rows` rows of kc steps from `data[off..]` at strides rs (rows) and ks (steps), all inside
    /// `data` (checked).
    #[inline(always)]
    pub(crate) fn new(data: &[T], off: usize, rs: usize, ks: usize, rows: usize, kc: usize) -> StridedA<T> {
        let last = off + rows.saturating_sub(1) * rs + kc.saturating_sub(1) * ks;
        assert!(rows == 0 || kc == 0 || last < data.len(), "strided operand reaches {last} in {} elements", data.len());
        StridedA { ptr: data.as_ptr().wrapping_add(off), rs, ks, rows, kc }
    }
}

// SAFETY: `new` checked that the last element (row rows - 1, step kc - 1) lies inside the data.
unsafe impl<T: Copy> Bcast<T> for StridedA<T> {
    #[inline(always)]
    fn at(&self, kk: usize, r: usize) -> *const T {
        self.ptr.wrapping_add(r * self.rs + kk * self.ks)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.kc
    }
    #[inline(always)]
    fn rows(&self) -> usize {
        self.rows
    }
}

/// Where the k-th row of B's NR columns is.
///
/// # Safety
/// An implementation guarantees that `row(kk)` is valid for reading NR elements for every kk below
/// the `kc` it was built for (its constructor checks that).
pub(crate) unsafe trait Rows<T>: Copy {
    /// The start of row kk.
    fn row(&self, kk: usize) -> *const T;
    /// The number of rows.
    fn len(&self) -> usize;
    /// A hint that element `col` of row kk will be read soon.
    #[inline(always)]
    fn prefetch(&self, _kk: usize, _col: usize) {}
}

/// Rows of B at a fixed stride: row kk is `data[off + kk·ld..][..NR]`. A packed panel has ld = NR
/// ([`Packed::new`]); a row-major B read where it lies, for a panel that meets one tile only, has the
/// matrix's row length ([`Packed::strided`]).
#[derive(Clone, Copy)]
pub(crate) struct Packed<T> {
    ptr: *const T,
    ld: usize,
    kc: usize,
}

impl<T> Packed<T> {
    /// The first kc rows of NR elements of the packed `panel` (checked).
    #[inline(always)]
    pub(crate) fn new(panel: &[T], kc: usize, nr: usize) -> Packed<T> {
        Packed::strided(panel, 0, nr, kc, nr)
    }

    /// kc rows of nr elements from `data[off..]` at stride ld, all inside `data` (checked).
    #[inline(always)]
    pub(crate) fn strided(data: &[T], off: usize, ld: usize, kc: usize, nr: usize) -> Packed<T> {
        let end = off + kc.saturating_sub(1) * ld + nr;
        assert!(kc == 0 || end <= data.len(), "rows of B reach {end} in {} elements", data.len());
        Packed { ptr: data.as_ptr().wrapping_add(off), ld, kc }
    }
}

// SAFETY: the constructors checked that the last row's nr elements lie inside the data.
unsafe impl<T: Copy> Rows<T> for Packed<T> {
    #[inline(always)]
    fn row(&self, kk: usize) -> *const T {
        self.ptr.wrapping_add(kk * self.ld)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.kc
    }
    #[inline(always)]
    fn prefetch(&self, kk: usize, col: usize) {
        // The rows stream from L2 (or, a stride apart, defeat the next-line prefetcher): ask for them
        // a few steps ahead (any address is fine).
        prefetch(self.row(kk + PREFETCH_AHEAD).wrapping_add(col));
    }
}

/// Rows of B found in place: row kk is `data[offs[kk]..][..NR]`.
#[derive(Clone, Copy)]
pub(crate) struct Gathered<'a, T> {
    base: *const T,
    offs: &'a [usize],
}

impl<'a, T> Gathered<'a, T> {
    /// Row kk of B is `data[offs[kk]..offs[kk] + nr]` (checked).
    #[inline(always)]
    pub(crate) fn new(data: &'a [T], offs: &'a [usize], nr: usize) -> Gathered<'a, T> {
        let end = offs.iter().copied().max().unwrap_or(0) + nr;
        assert!(offs.is_empty() || end <= data.len(), "gathered rows reach {end} in {} elements", data.len());
        Gathered { base: data.as_ptr(), offs }
    }
}

// SAFETY: `new` checked that every row lies inside the data.
unsafe impl<T: Copy> Rows<T> for Gathered<'_, T> {
    #[inline(always)]
    fn row(&self, kk: usize) -> *const T {
        self.base.wrapping_add(self.offs[kk])
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.offs.len()
    }
}

/// An output matrix shared by tasks that write disjoint tiles of it: element (i, j) at `ptr + i·ld + j`.
#[derive(Clone, Copy)]
pub(crate) struct C<T> {
    /// Element (0, 0).
    pub ptr: *mut T,
    /// The row stride.
    pub ld: usize,
}
// SAFETY: tasks write disjoint tiles (see `tile_into`'s contract), and the buffer outlives them.
unsafe impl<T: Send> Send for C<T> {}
unsafe impl<T: Send> Sync for C<T> {}

/// C[i..i + h, j..j + w] = (0 if `first`, else itself) + Σ_kk A[kk][r]·B[kk][col], kk < kc ascending,
/// one FMA per step.
///
/// # Safety
/// The block of C must be valid for reads and writes and accessed by no one else meanwhile; h ≤ MR,
/// w ≤ NR.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_into<T: Float, R: Reg<T>, A: Bcast<T>, B: Rows<T>, const MR: usize, const NV: usize>(
    kc: usize,
    a: A,
    b: B,
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
        unsafe { micro::<T, R, A, B, MR, NV>(kc, a, b, at(0), c.ld, first) };
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
    unsafe { micro::<T, R, A, B, MR, NV>(kc, a, b, buf.as_mut_ptr() as *mut T, 64, first) };
    for (r, row) in buf.iter().enumerate().take(h) {
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), at(r), w) };
    }
}

/// The register tile: c[r·ldc + col] = (0 if `first`, else itself) + Σ_kk A[kk][r]·B[kk][col], kk
/// ascending, one FMA per step.
///
/// # Safety
/// `c` must be valid for MR rows of NV·LANES elements at stride `ldc`; A and B hold kc steps (checked),
/// and A was built for MR rows.
#[inline(always)]
unsafe fn micro<T: Float, R: Reg<T>, A: Bcast<T>, B: Rows<T>, const MR: usize, const NV: usize>(
    kc: usize,
    a: A,
    b: B,
    c: *mut T,
    ldc: usize,
    first: bool,
) {
    let l = R::LANES;
    assert!(a.len() >= kc && a.rows() >= MR && b.len() >= kc);
    let mut acc = [[R::zero(); NV]; MR];
    if !first {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                // SAFETY: inside the tile (the caller's contract).
                *x = unsafe { R::load_ptr(c.add(r * ldc + v * l)) };
            }
        }
    }
    for kk in 0..kc {
        for v in 0..NV {
            b.prefetch(kk, v * l);
        }
        let row = b.row(kk);
        // SAFETY: kk < kc ≤ b.len(), so the row holds NR = NV·LANES elements (the `Rows` contract).
        let bv: [R; NV] = std::array::from_fn(|v| unsafe { R::load_ptr(row.add(v * l)) });
        for (r, accs) in acc.iter_mut().enumerate() {
            // SAFETY: kk < kc ≤ a.len() and r < MR (the `Bcast` contract).
            let x = R::splat(unsafe { *a.at(kk, r) });
            for (v, y) in accs.iter_mut().enumerate() {
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

/// How many k steps ahead the micro-kernel prefetches a packed B panel.
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
pub(crate) fn aligned<T>(buf: &mut [T], len: usize) -> &mut [T] {
    let skip = buf.as_ptr().align_offset(64).min(buf.len() - len);
    &mut buf[skip..skip + len]
}

#[cfg(test)]
mod tests {
    #[test]
    fn sysfs_cpu_lists_count() {
        assert_eq!(super::cpu_count("0-3,8"), 5);
        assert_eq!(super::cpu_count("0"), 1);
    }
}
