//! The GEMM on strips: a register tile of explicit SIMD fused multiply-adds (registers from
//! `cpu::simd`) over A panels of 8 rows, and the per-thread scratch buffers the passes carve their
//! strips from.
//!
//! The tile is 8 rows × two registers with AVX-512 (16 of its 32 registers accumulate), 4 rows × two
//! with AVX2 (8 of 16, leaving room for the two B rows and the broadcast; an 8-row panel is two
//! tiles), 8 × one portable. Its k loop reads raw pointers after one bounds check per tile. Measured on
//! a Zen 3 against the earlier 8 × one AVX2 tile with per-step slice checks, n = 128–512, d = 64, 4
//! heads, 3 interleaved rounds: forward 25–40% and backward 20–35% less time, backward-over-backward
//! 25–40%. Long sums (a row output's, over all keys) run in k blocks sized from the L1 cache.

use crate::backend::cpu::float::Float;
use crate::backend::cpu::simd::{Reg, Simd};
use crate::backend::cpu::tile::Caches;
use crate::backend::cpu::Isa;
use crate::dtype::DType;
use std::cell::RefCell;

/// Rows of the register tile, and of the panels A is read in.
pub(super) const MR: usize = 8;
/// The widest register-tile row: two AVX-512 registers of f32.
const MAX_NR: usize = 32;

/// The left operand of a GEMM, read by panels of MR rows: element (r, kk) of panel p is at
/// `x[p·MR·k + kk·MR + r]` (`Panels`: pre-packed with [`panels`]) or at `x[kk·ld + p·MR + r]`
/// (`Cols`: column-major with leading dimension ld, such as a strip read transposed).
#[derive(Clone, Copy)]
pub(super) enum A<'a, T> {
    Panels(&'a [T]),
    Cols(&'a [T], usize),
}

/// C[m×n] = (C if `acc`, else 0) + A[m×k]·B[k×n] (B and C row-major with row strides `ldb`, `ldc`).
/// Each element of C is one FMA chain over k ascending, whatever the tile shape or instruction set.
///
/// `edge` holds the zero-padded copy of a column-major A's last partial panel: `k·MR` elements when `a`
/// is [`A::Cols`] (callers carve it with their strips, so a kernel allocates nothing), empty otherwise.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm<T: Float, S: Simd>(
    acc: bool,
    m: usize,
    n: usize,
    k: usize,
    a: A<T>,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    edge: &mut [T],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(T::ZERO);
            }
        }
        return;
    }
    // Float is implemented for f32 and f64 only, so these casts are identities.
    use bytemuck::{cast_slice as cs, cast_slice_mut as cm};
    // AVX-512: 8 rows × two registers (16 of 32 registers accumulate); AVX2: 4 rows × two (8 of 16,
    // leaving room for the two B rows and the broadcast); portable: 8 rows × one.
    match (T::DTYPE, S::ISA) {
        (DType::F32, Isa::Avx512) => tiles::<f32, S::R32, 2, 8>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc, cm(edge)),
        (DType::F32, Isa::Avx2) => tiles::<f32, S::R32, 2, 4>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc, cm(edge)),
        (DType::F32, _) => tiles::<f32, S::R32, 1, 8>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc, cm(edge)),
        (_, Isa::Avx512) => tiles::<f64, S::R64, 2, 8>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc, cm(edge)),
        (_, Isa::Avx2) => tiles::<f64, S::R64, 2, 4>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc, cm(edge)),
        _ => tiles::<f64, S::R64, 1, 8>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc, cm(edge)),
    }
}

#[inline(always)]
fn cast_a<T: bytemuck::Pod, U: bytemuck::Pod>(a: A<'_, T>) -> A<'_, U> {
    match a {
        A::Panels(x) => A::Panels(bytemuck::cast_slice(x)),
        A::Cols(x, l) => A::Cols(bytemuck::cast_slice(x), l),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tiles<T: Float, R: Reg<T>, const NV: usize, const TR: usize>(
    acc: bool,
    m: usize,
    n: usize,
    k: usize,
    a: A<T>,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    edge: &mut [T],
) {
    let panels = m.div_ceil(MR);
    // A column-major operand is read in place, except a last partial panel (it could run past the
    // operand's end): that one is copied, zero padded, into `edge`.
    let last = m - (panels - 1) * MR;
    if let A::Cols(x, l) = a {
        if last < MR {
            for kk in 0..k {
                let at = kk * l + (panels - 1) * MR;
                edge[kk * MR..kk * MR + last].copy_from_slice(&x[at..at + last]);
                edge[kk * MR + last..(kk + 1) * MR].fill(T::ZERO);
            }
        }
    }
    let panel = |p: usize| -> (&[T], usize) {
        match a {
            A::Panels(x) => (&x[p * MR * k..(p + 1) * MR * k], MR),
            A::Cols(_, _) if p + 1 == panels && last < MR => (&edge[..k * MR], MR),
            A::Cols(x, l) => (&x[p * MR..], l),
        }
    };
    // Column panels outside, so a kc×NR panel of B stays in L1 while the row panels pass over it. A
    // long k (a row output's sum over all keys) is cut into blocks of kc steps, sized so that the B
    // panel fills a quarter of L1 (a whole k×NR panel is 16 KiB at 256 keys): on one Zen 3 core a
    // 64×64×256 product ran at 55–59 GFLOP/s unblocked and 78–80 blocked (the strip products, k = 64,
    // at 88–94). Between blocks C is stored and reloaded exactly, so each element is still one FMA
    // chain over k.
    let nr = NV * R::LANES;
    let kc = (Caches::get().l1d / 4 / (nr * std::mem::size_of::<T>())).clamp(64, 1024) / 8 * 8;
    for k0 in (0..k).step_by(kc) {
        let (kb, acc) = (kc.min(k - k0), acc || k0 > 0);
        let b = &b[k0 * ldb..];
        for j0 in (0..n).step_by(nr) {
            let w = nr.min(n - j0);
            if NV > 1 && w <= R::LANES {
                // Columns for one register only (a head width of 8 f32 with AVX2, or the last
                // columns): the full-panel tile of one register, rather than half-empty two-register
                // tiles.
                for p in 0..panels {
                    let (ap, stride) = panel(p);
                    let c = &mut c[p * MR * ldc + j0..];
                    tile::<T, R, 1, MR>(acc, MR.min(m - p * MR), w, kb, &ap[k0 * stride..], stride, &b[j0..], ldb, c, ldc);
                }
                continue;
            }
            for p in 0..panels {
                let (ap, stride) = panel(p);
                for r0 in (0..MR.min(m - p * MR)).step_by(TR) {
                    let rows = TR.min(m - p * MR - r0);
                    let c = &mut c[(p * MR + r0) * ldc + j0..];
                    tile::<T, R, NV, TR>(acc, rows, w, kb, &ap[k0 * stride + r0..], stride, &b[j0..], ldb, c, ldc);
                }
            }
        }
    }
}

/// One TR × NV·LANES tile of C (`rows` × `w` of it loaded and stored): element (r, kk) of the A panel
/// is `ap[kk·stride + r]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<T: Float, R: Reg<T>, const NV: usize, const TR: usize>(
    acc: bool,
    rows: usize,
    w: usize,
    k: usize,
    ap: &[T],
    stride: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
) {
    let l = R::LANES;
    let full = w == NV * l;
    let mut t = [[R::zero(); NV]; TR];
    let mut buf = [T::ZERO; MAX_NR];
    if acc {
        for r in 0..rows {
            let row = &c[r * ldc..r * ldc + w];
            let row = if full {
                row
            } else {
                buf[..w].copy_from_slice(row);
                &buf[..]
            };
            for v in 0..NV {
                t[r][v] = R::load(&row[v * l..]);
            }
        }
    }
    if full {
        // The hot loop: one bounds check up front, then raw reads (the loop carries nothing else).
        assert!(ap.len() >= (k - 1) * stride + TR && b.len() >= (k - 1) * ldb + w, "gemm operands shorter than their tiles");
        let (pa, pb) = (ap.as_ptr(), b.as_ptr());
        for kk in 0..k {
            // SAFETY: kk < k, so A's TR values at kk·stride and B's NV·LANES = w at kk·ldb are inside
            // the slices (asserted above).
            let bv: [R; NV] = std::array::from_fn(|v| unsafe { R::load_ptr(pb.add(kk * ldb + v * l)) });
            for (r, tr) in t.iter_mut().enumerate() {
                // SAFETY: as above.
                let a = R::splat(unsafe { *pa.add(kk * stride + r) });
                for (y, &bv) in tr.iter_mut().zip(&bv) {
                    *y = a.fma(bv, *y);
                }
            }
        }
    } else {
        for kk in 0..k {
            #[allow(clippy::unwrap_used)] // infallible: the slice has exactly TR elements
            let av: &[T; TR] = ap[kk * stride..kk * stride + TR].try_into().unwrap();
            buf[..w].copy_from_slice(&b[kk * ldb..kk * ldb + w]);
            let mut bv = [R::zero(); NV];
            for v in 0..NV {
                bv[v] = R::load(&buf[v * l..]);
            }
            for r in 0..TR {
                let a = R::splat(av[r]);
                for v in 0..NV {
                    t[r][v] = a.fma(bv[v], t[r][v]);
                }
            }
        }
    }
    for r in 0..rows {
        if full {
            for v in 0..NV {
                t[r][v].store(&mut c[r * ldc + v * l..]);
            }
        } else {
            for v in 0..NV {
                t[r][v].store(&mut buf[v * l..]);
            }
            c[r * ldc..r * ldc + w].copy_from_slice(&buf[..w]);
        }
    }
}

thread_local! {
    /// Buffers reused across tasks and calls on each thread: fresh strip-sized allocations would cost
    /// page faults and zeroing on every call.
    static POOL: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's pool, given back on drop.
pub(super) struct Scratch(Vec<f64>);

/// Frees this thread's cached scratch buffers.
pub(crate) fn release_scratch() {
    POOL.with(|p| p.borrow_mut().clear());
}

pub(super) fn scratch() -> Scratch {
    Scratch(POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default())
}

impl Scratch {
    /// Disjoint slices of the given lengths, or `None` when the memory cannot be had (the caller
    /// reports [`Error::OutOfMemory`](crate::Error::OutOfMemory)). Their contents are left over from
    /// earlier use: every caller writes an element before reading it.
    pub(super) fn carve<T: Float>(&mut self, lens: &[usize]) -> Option<Vec<&mut [T]>> {
        let total = lens.iter().try_fold(0usize, |a, &l| a.checked_add(l))?;
        let words = total.checked_mul(std::mem::size_of::<T>())?.div_ceil(8);
        if self.0.len() < words {
            self.0.try_reserve_exact(words - self.0.len()).ok()?;
            self.0.resize(words, 0.0);
        }
        let mut rest = &mut bytemuck::cast_slice_mut::<f64, T>(&mut self.0[..words])[..total];
        Some(
            lens.iter()
                .map(|&l| {
                    let (a, r) = std::mem::take(&mut rest).split_at_mut(l);
                    rest = r;
                    a
                })
                .collect(),
        )
    }

    /// `N` disjoint slices of the given lengths (see [`Scratch::carve`]).
    pub(super) fn slices<T: Float, const N: usize>(&mut self, lens: [usize; N]) -> Option<[&mut [T]; N]> {
        self.carve(&lens)?.try_into().ok()
    }
}

/// The most scratch a thread keeps between calls, in bytes. Small and mid-size calls (the common
/// case, where a fresh allocation per call would cost more than the kernel) reuse their buffers; a
/// huge call's buffers are freed when it ends, so memory after it is bounded by this per thread.
/// [`release_scratch`] (through `metagrad::release_memory`) frees what is kept.
pub(crate) const SCRATCH_KEEP_BYTES: usize = 64 << 20;

/// Bytes this thread keeps in its scratch pool.
#[cfg(test)]
pub(crate) fn kept_scratch_bytes() -> usize {
    POOL.with(|p| p.borrow().iter().map(|b| b.capacity() * 8).sum())
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            let kept: usize = p.iter().map(|b| b.capacity() * 8).sum();
            if kept + v.capacity() * 8 <= SCRATCH_KEEP_BYTES {
                p.push(v);
            }
        });
    }
}
