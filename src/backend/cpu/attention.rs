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
//! - **Fast.** Every product is a small GEMM with an 8-row register tile of explicit SIMD FMAs,
//!   compiled for AVX-512, AVX2+FMA and portable code and picked at run time. Strips are stored
//!   key-major, which the row-output GEMMs read in place; for the key-output GEMMs they are packed
//!   into 8-key panels (O(N·block) per strip). The [N, d] inputs are transposed or packed once per
//!   call; buffers come from a per-thread pool. f32 uses a polynomial exp that vectorizes.
//!   In units of N²·d multiply-adds per head the forward costs 2, the backward 3 + 2 for dK, dV; the
//!   backward-over-backward 5 (statistics) + 2 for Q̄ (+ 2 for dŌ, only when asked) + 3 for K̄, V̄.

use crate::dtype::{DType, Float};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Elements in one strip (a block of rows against all keys).
/// Blocks have `STRIP / n` rows, clamped to [32, 64] and rounded down to a multiple of 8: up to
/// n = 1024 a task's strips stay in the L2 cache; narrower blocks than 32 would leave the register
/// tile (32 f32 columns with AVX-512) half empty, which costs far more than cache misses (5× at
/// n = 2048). So a task holds at most 4 strips of 32·n elements: O(n) memory per thread.
pub const STRIP: usize = 1 << 16;

/// The shapes of one attention call: `heads` problems, each Q [nq, d], K [nk, d], V [nk, dv], all
/// contiguous and row-major (head after head), with scale `scale` and an optional causal mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    /// Number of independent problems (the product of the leading batch and head dimensions).
    pub heads: usize,
    /// Queries per problem.
    pub nq: usize,
    /// Keys (and values) per problem.
    pub nk: usize,
    /// Width of queries and keys.
    pub d: usize,
    /// Width of values.
    pub dv: usize,
    /// The factor c in S = c·Q·Kᵀ.
    pub scale: f64,
    /// Whether query i sees only keys j ≤ i (top-left aligned).
    pub causal: bool,
}

impl Geometry {
    /// Keys visible to query row `i`.
    fn visible(&self, i: usize) -> usize {
        if self.causal {
            (i + 1).min(self.nk)
        } else {
            self.nk
        }
    }
}

/// Which outputs a backward kernel should compute; the others are left zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The query cotangent (dQ, or Q̄).
    pub q: bool,
    /// The key and value cotangents (dK and dV, or K̄ and V̄).
    pub kv: bool,
    /// The cotangent of dO (dŌ; backward-over-backward only).
    pub d_o: bool,
}

/// The element operations the attention kernels need beyond [`Float`].
pub trait AttnFloat: Float {
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

// ---------------------------------------------------------------------------------------------------
// Instruction sets and the GEMM on strips.

/// One SIMD register of `T` lanes. The micro-kernel is written with these rather than left to the
/// auto-vectorizer, whose treatment of a register tile is fragile (it may keep the tile in memory and
/// gather/scatter it).
trait Reg<T>: Copy {
    const LANES: usize;
    fn zero() -> Self;
    fn splat(x: T) -> Self;
    /// Loads the first LANES elements of `x`.
    fn load(x: &[T]) -> Self;
    /// Stores into the first LANES elements of `x`.
    fn store(self, x: &mut [T]);
    /// self·b + c, one correctly rounded FMA per lane (so every register width gives the same bits).
    fn fma(self, b: Self, c: Self) -> Self;
}

/// The portable register: four lanes in an array.
#[derive(Clone, Copy)]
struct Lanes4<T>([T; 4]);
impl<T: Float> Reg<T> for Lanes4<T> {
    const LANES: usize = 4;
    #[inline(always)]
    fn zero() -> Self {
        Lanes4([T::ZERO; 4])
    }
    #[inline(always)]
    fn splat(x: T) -> Self {
        Lanes4([x; 4])
    }
    #[inline(always)]
    fn load(x: &[T]) -> Self {
        Lanes4(x[..4].try_into().unwrap())
    }
    #[inline(always)]
    fn store(self, x: &mut [T]) {
        x[..4].copy_from_slice(&self.0)
    }
    #[inline(always)]
    fn fma(self, b: Self, c: Self) -> Self {
        Lanes4(std::array::from_fn(|l| self.0[l].mul_add(b.0[l], c.0[l])))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Reg;
    use std::arch::x86_64::*;
    macro_rules! reg {
        ($ty:ty, $t:ty, $l:expr, $zero:ident, $splat:ident, $load:ident, $store:ident, $fma:ident) => {
            impl Reg<$t> for $ty {
                const LANES: usize = $l;
                #[inline(always)]
                fn zero() -> Self {
                    // SAFETY (all five): these registers are used only by code that the multiversion
                    // dispatcher runs after checking the CPU has the instruction set; loads and stores
                    // go through slices of at least LANES elements (checked by slicing).
                    unsafe { $zero() }
                }
                #[inline(always)]
                fn splat(x: $t) -> Self {
                    unsafe { $splat(x) }
                }
                #[inline(always)]
                fn load(x: &[$t]) -> Self {
                    unsafe { $load(x[..$l].as_ptr()) }
                }
                #[inline(always)]
                fn store(self, x: &mut [$t]) {
                    unsafe { $store(x[..$l].as_mut_ptr(), self) }
                }
                #[inline(always)]
                fn fma(self, b: Self, c: Self) -> Self {
                    unsafe { $fma(self, b, c) }
                }
            }
        };
    }
    reg!(__m512, f32, 16, _mm512_setzero_ps, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps);
    reg!(__m512d, f64, 8, _mm512_setzero_pd, _mm512_set1_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_fmadd_pd);
    reg!(__m256, f32, 8, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps);
    reg!(__m256d, f64, 4, _mm256_setzero_pd, _mm256_set1_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_fmadd_pd);
}

/// An instruction set: the register tile is MR rows × NV registers.
trait Isa {
    const NV: usize;
    type R32: Reg<f32>;
    type R64: Reg<f64>;
}
struct Portable;
impl Isa for Portable {
    const NV: usize = 1;
    type R32 = Lanes4<f32>;
    type R64 = Lanes4<f64>;
}
#[cfg(target_arch = "x86_64")]
struct Avx2;
#[cfg(target_arch = "x86_64")]
impl Isa for Avx2 {
    const NV: usize = 1;
    type R32 = std::arch::x86_64::__m256;
    type R64 = std::arch::x86_64::__m256d;
}
#[cfg(target_arch = "x86_64")]
struct Avx512;
#[cfg(target_arch = "x86_64")]
impl Isa for Avx512 {
    const NV: usize = 2;
    type R32 = std::arch::x86_64::__m512;
    type R64 = std::arch::x86_64::__m512d;
}

/// The best instruction set allowed: 2 AVX-512, 1 AVX2+FMA, 0 portable. Tests lower the cap to check
/// that every path gives the same bits.
static ISA_CAP: AtomicU8 = AtomicU8::new(2);

fn isa_level() -> u8 {
    (super::best_isa() as u8).min(ISA_CAP.load(Ordering::Relaxed))
}

/// Rows of the register tile, and of the panels A is read in.
const MR: usize = 8;
/// The widest register-tile row: two AVX-512 registers of f32.
const MAX_NR: usize = 32;

/// The left operand of a GEMM, read by panels of MR rows: element (r, kk) of panel p is at
/// `x[p·MR·k + kk·MR + r]` (`Panels`: pre-packed with [`panels`]) or at `x[kk·ld + p·MR + r]`
/// (`Cols`: column-major with leading dimension ld, such as a strip read transposed).
#[derive(Clone, Copy)]
enum A<'a, T> {
    Panels(&'a [T]),
    Cols(&'a [T], usize),
}

/// C[m×n] = (C if `acc`, else 0) + A[m×k]·B[k×n] (B and C row-major with row strides `ldb`, `ldc`).
/// Each element of C is one FMA chain over k ascending, whatever the tile shape or instruction set.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float, S: Isa>(acc: bool, m: usize, n: usize, k: usize, a: A<T>, b: &[T], ldb: usize, c: &mut [T], ldc: usize) {
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
    match (T::DTYPE, S::NV) {
        (DType::F32, 2) => tiles::<f32, S::R32, 2>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc),
        (DType::F32, _) => tiles::<f32, S::R32, 1>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc),
        (_, 2) => tiles::<f64, S::R64, 2>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc),
        _ => tiles::<f64, S::R64, 1>(acc, m, n, k, cast_a(a), cs(b), ldb, cm(c), ldc),
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
fn tiles<T: Float, R: Reg<T>, const NV: usize>(
    acc: bool,
    m: usize,
    n: usize,
    k: usize,
    a: A<T>,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
) {
    let panels = m.div_ceil(MR);
    // A column-major operand is read in place, except a last partial panel (it could run past the
    // operand's end): that one is copied, zero padded.
    let mut sc = scratch();
    let [edge] = sc.slices::<T, 1>(k * MR);
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
            A::Cols(_, _) if p + 1 == panels && last < MR => (&edge[..], MR),
            A::Cols(x, l) => (&x[p * MR..], l),
        }
    };
    // Column panels outside, so a k×NR panel of B stays in L1 while the row panels pass over it.
    let nr = NV * R::LANES;
    for j0 in (0..n).step_by(nr) {
        let w = nr.min(n - j0);
        for p in 0..panels {
            let (ap, stride) = panel(p);
            tile::<T, R, NV>(acc, MR.min(m - p * MR), w, k, ap, stride, &b[j0..], ldb, &mut c[p * MR * ldc + j0..], ldc);
        }
    }
}

/// One MR × NV·LANES tile of C (`rows` × `w` of it loaded and stored): element (r, kk) of the A panel
/// is `ap[kk·stride + r]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<T: Float, R: Reg<T>, const NV: usize>(
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
    let mut t = [[R::zero(); NV]; MR];
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
    for kk in 0..k {
        let av: &[T; MR] = ap[kk * stride..kk * stride + MR].try_into().unwrap();
        let brow = &b[kk * ldb..kk * ldb + w];
        let brow = if full {
            brow
        } else {
            buf[..w].copy_from_slice(brow);
            &buf[..]
        };
        let mut bv = [R::zero(); NV];
        for v in 0..NV {
            bv[v] = R::load(&brow[v * l..]);
        }
        for r in 0..MR {
            let a = R::splat(av[r]);
            for v in 0..NV {
                t[r][v] = a.fma(bv[v], t[r][v]);
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
struct Scratch(Vec<f64>);

fn scratch() -> Scratch {
    Scratch(POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default())
}

impl Scratch {
    /// Disjoint slices of the given lengths. Their contents are left over from earlier use: every
    /// caller writes an element before reading it.
    fn carve<T: Float>(&mut self, lens: &[usize]) -> Vec<&mut [T]> {
        let total: usize = lens.iter().sum();
        let words = (total * std::mem::size_of::<T>()).div_ceil(8);
        if self.0.len() < words {
            self.0.resize(words, 0.0);
        }
        let mut rest = &mut bytemuck::cast_slice_mut::<f64, T>(&mut self.0[..words])[..total];
        lens.iter()
            .map(|&l| {
                let (a, r) = std::mem::take(&mut rest).split_at_mut(l);
                rest = r;
                a
            })
            .collect()
    }

    /// `N` disjoint slices of `len` elements (see [`Scratch::carve`]).
    fn slices<T: Float, const N: usize>(&mut self, len: usize) -> [&mut [T]; N] {
        self.carve(&[len; N]).try_into().unwrap_or_else(|_| unreachable!("N slices"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        POOL.with(|p| p.borrow_mut().push(v));
    }
}

// ---------------------------------------------------------------------------------------------------
// Element-wise pieces.

/// x·y summed with 16 interleaved partials combined in a fixed tree (D = rowsum(dO∘O)). Plain
/// multiply and add, not FMA: this runs outside the multiversioned tasks, where FMA is a library call.
fn dot_lanes<T: Float>(x: &[T], y: &[T]) -> T {
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

// ---------------------------------------------------------------------------------------------------
// Per-task work.
//
// A row block holds key-major strips [keys × its rows]: the GEMMs for row outputs (Q̄ = Σ over keys)
// read them in place (`A::Cols`); those for key outputs (K̄ = Σ over rows) read them packed into
// panels ([`acc_keys`]). The GEMMs that produce strips take K, V, b, e pre-packed into panels
// (`A::Panels`) and the row side from a transpose. Row statistics are column sweeps, vectorized over
// the block's rows.

/// Every input of a kernel call (empty slices for what the call does not use).
#[derive(Clone, Copy)]
struct Ctx<'a, T> {
    g: Geometry,
    c: T,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    d_o: &'a [T],
    a: &'a [T],
    b: &'a [T],
    e: &'a [T],
    /// Per-head transposes [heads, width, ld(n)] (B operands): Qᵀ, dOᵀ, aᵀ.
    qt: &'a [T],
    dot: &'a [T],
    at: &'a [T],
    /// Per-head panels (A operands) of K, V, b, e.
    kp: &'a [T],
    vp: &'a [T],
    bp: &'a [T],
    ep: &'a [T],
    /// Row statistics [heads, nq]: logsumexp ℓ and D.
    lse: &'a [T],
    dd: &'a [T],
}

impl<'a, T: Float> Ctx<'a, T> {
    fn new(g: Geometry) -> Self {
        let z: &[T] = &[];
        #[rustfmt::skip]
        let cx = Ctx {
            g, c: T::from_f64(g.scale), q: z, k: z, v: z, d_o: z, a: z, b: z, e: z,
            qt: z, dot: z, at: z, kp: z, vp: z, bp: z, ep: z, lse: z, dd: z,
        };
        cx
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
fn ld(n: usize) -> usize {
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
fn first_live(g: &Geometry, i0: usize, nr: usize, j: usize) -> usize {
    if g.causal {
        j.saturating_sub(i0).min(nr)
    } else {
        0
    }
}

/// The key-major P strip of rows `i0 .. i0 + nr` of head `h`: p[j·nr + r] = exp(c·k_j·q_r − ℓ_r),
/// zero where key j is masked.
#[inline(always)]
fn probs_rows<T: AttnFloat, S: Isa>(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, nkv: usize, p: &mut [T]) {
    let g = cx.g;
    gemm::<T, S>(false, nkv, nr, g.d, pan(cx.kp, h, g.nk, g.d, 0), cols(cx.qt, h, g.nq, g.d, i0), ld(g.nq), p, nr);
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
fn fwd_rows<T: AttnFloat, S: Isa>(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, o: &mut [T], lse: &mut [T]) {
    let g = cx.g;
    let nkv = g.visible(i0 + nr - 1);
    let mut sc = scratch();
    let [s] = sc.slices::<T, 1>(nkv * nr);
    gemm::<T, S>(false, nkv, nr, g.d, pan(cx.kp, h, g.nk, g.d, 0), cols(cx.qt, h, g.nq, g.d, i0), ld(g.nq), s, nr);
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
    gemm::<T, S>(false, nr, g.dv, nkv, A::Cols(s, nr), rows(cx.v, h, g.nk, g.dv, 0), g.dv, o, g.dv);
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
fn acc_keys<T: Float, S: Isa>(nkv: usize, nr: usize, x: &[T], pk: &mut [T], rows: &[T], width: usize, acc: &mut [T]) {
    for (j0, panel) in (0..nkv).step_by(MR).zip(pk.chunks_exact_mut(MR * nr)) {
        let live = MR.min(nkv - j0);
        for (r, col) in panel.chunks_exact_mut(MR).enumerate() {
            for (jj, y) in col.iter_mut().enumerate() {
                *y = if jj < live { x[(j0 + jj) * nr + r] } else { T::ZERO };
            }
        }
    }
    gemm::<T, S>(true, nkv, width, nr, A::Panels(pk), rows, width, acc, width);
}

/// Backward, rows of head `h`: dQ = c·dS·K with dS = P∘(dO·Vᵀ − D), and (into the group partials
/// `kv`, when given) dK/c += dSᵀ·Q and dV += Pᵀ·dO.
#[inline(always)]
fn bwd_rows<T: AttnFloat, S: Isa>(cx: &Ctx<T>, need: Need, h: usize, i0: usize, nr: usize, dq: &mut [T], kv: (&mut [T], &mut [T])) {
    let g = cx.g;
    let nkv = g.visible(i0 + nr - 1);
    let mut sc = scratch();
    let [p, ds, pk] = sc.slices::<T, 3>(nkv.div_ceil(MR) * MR * nr);
    probs_rows::<T, S>(cx, h, i0, nr, nkv, p);
    gemm::<T, S>(false, nkv, nr, g.dv, pan(cx.vp, h, g.nk, g.dv, 0), cols(cx.dot, h, g.nq, g.dv, i0), ld(g.nq), ds, nr);
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
        gemm::<T, S>(false, nr, g.d, nkv, A::Cols(ds, nr), rows(cx.k, h, g.nk, g.d, 0), g.d, dq, g.d);
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
fn bb_rows<T: AttnFloat, S: Isa>(
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
    let [p, dp, dsb, x, pk] = sc.slices::<T, 5>(nkv.div_ceil(MR) * MR * nr);
    probs_rows::<T, S>(cx, h, i0, nr, nkv, p);
    let (qt, dot) = (cols(cx.qt, h, g.nq, g.d, i0), cols(cx.dot, h, g.nq, g.dv, i0));
    gemm::<T, S>(false, nkv, nr, g.dv, pan(cx.vp, h, g.nk, g.dv, 0), dot, ld(g.nq), dp, nr);
    gemm::<T, S>(false, nkv, nr, g.d, pan(cx.kp, h, g.nk, g.d, 0), cols(cx.at, h, g.nq, g.d, i0), ld(g.nq), dsb, nr);
    gemm::<T, S>(true, nkv, nr, g.d, pan(cx.bp, h, g.nk, g.d, 0), qt, ld(g.nq), dsb, nr);
    gemm::<T, S>(false, nkv, nr, g.dv, pan(cx.ep, h, g.nk, g.dv, 0), dot, ld(g.nq), x, nr);
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
        gemm::<T, S>(false, nr, g.d, nkv, A::Cols(dp, nr), rows(cx.b, h, g.nk, g.d, 0), g.d, qbar, g.d);
        gemm::<T, S>(true, nr, g.d, nkv, A::Cols(x, nr), rows(cx.k, h, g.nk, g.d, 0), g.d, qbar, g.d);
        for y in qbar.iter_mut() {
            *y = *y * cx.c;
        }
    }
    if need.d_o {
        gemm::<T, S>(false, nr, g.dv, nkv, A::Cols(p, nr), rows(cx.e, h, g.nk, g.dv, 0), g.dv, dobar, g.dv);
        gemm::<T, S>(true, nr, g.dv, nkv, A::Cols(dsb, nr), rows(cx.v, h, g.nk, g.dv, 0), g.dv, dobar, g.dv);
    }
    if need.kv {
        acc_keys::<T, S>(nkv, nr, dp, pk, rows(cx.a, h, g.nq, g.d, i0), g.d, kv.0);
        acc_keys::<T, S>(nkv, nr, x, pk, rows(cx.q, h, g.nq, g.d, i0), g.d, kv.0);
        acc_keys::<T, S>(nkv, nr, dsb, pk, rows(cx.d_o, h, g.nq, g.dv, i0), g.dv, kv.1);
    }
}

/// Defines `$name`, which runs `$imp` compiled for the best instruction set this CPU has (the same
/// generic code; only the register tile and the vector width change).
macro_rules! multiversion {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) = $imp:ident;)*) => {$(
        #[allow(clippy::too_many_arguments)]
        fn $name<T: AttnFloat>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<T: AttnFloat>($($arg: $ty),*) {
                    $imp::<T, Avx512>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<T: AttnFloat>($($arg: $ty),*) {
                    $imp::<T, Avx2>($($arg),*)
                }
                match isa_level() {
                    // SAFETY: isa_level() checked that the CPU has these features.
                    2 => return unsafe { avx512::<T>($($arg),*) },
                    // SAFETY: as above.
                    1 => return unsafe { avx2::<T>($($arg),*) },
                    _ => {}
                }
            }
            $imp::<T, Portable>($($arg),*)
        }
    )*};
}

multiversion! {
    fn fwd_task(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, o: &mut [T], lse: &mut [T]) = fwd_rows;
    fn bwd_row_task(cx: &Ctx<T>, need: Need, h: usize, i0: usize, nr: usize, dq: &mut [T], kv: (&mut [T], &mut [T])) = bwd_rows;
    fn bb_row_task(cx: &Ctx<T>, need: Need, h: usize, i0: usize, nr: usize, qbar: &mut [T], dobar: &mut [T], stats: (&mut [T], &mut [T]), kv: (&mut [T], &mut [T])) = bb_rows;
}

// ---------------------------------------------------------------------------------------------------
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
fn group_tasks(g: &Geometry) -> (Vec<(usize, usize, usize)>, usize) {
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
fn partial_slices<'a, T>(buf: &'a mut [T], g: &Geometry, ng: usize, width: usize) -> Vec<&'a mut [T]> {
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
fn relayout<'s, T: Float>(sc: &'s mut Scratch, heads: usize, ops: &[(&[T], usize, usize, Layout)]) -> Vec<&'s [T]> {
    let size = |n: usize, w: usize, lay| match lay {
        Layout::Transposed => w * ld(n),
        Layout::Panels => n.div_ceil(MR) * MR * w,
    };
    let lens: Vec<usize> = ops.iter().map(|&(_, n, w, lay)| heads * size(n, w, lay)).collect();
    let mut outs = sc.carve::<T>(&lens);
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
    outs.into_iter().map(|o| &*o).collect()
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
pub fn forward<T: AttnFloat>(g: Geometry, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<T>) {
    use Layout::*;
    // Every element of both is written by a task.
    let mut o = super::pool::for_overwrite(g.heads * g.nq * g.dv);
    let mut lse = super::pool::for_overwrite(g.heads * g.nq);
    let mut sc = scratch();
    let ops = [(q, g.nq, g.d, Transposed), (k, g.nk, g.d, Panels)];
    let [qt, kp] = relayout(&mut sc, g.heads, &ops)[..] else { unreachable!() };
    let cx = Ctx { q, k, v, qt, kp, ..Ctx::new(g) };
    let tk = tasks(g.heads, g.nq, block(g.nk));
    let (os, ls) = (split(&mut o, &tk, g.dv), split(&mut lse, &tk, 1));
    tk.into_par_iter().zip(os).zip(ls).for_each(|(((h, i0, nr), o), l)| fwd_task(&cx, h, i0, nr, o, l));
    (o, lse)
}

/// Backward: [dQ | dK | dV] packed in one buffer (shapes [heads, nq, d], [heads, nk, d],
/// [heads, nk, dv]), from Q, K, V, the forward's O and ℓ (`saved`), and dO. Parts not in `need` stay
/// zero.
pub fn backward<T: AttnFloat>(g: Geometry, [q, k, v]: [&[T]; 3], [o, lse]: [&[T]; 2], d_o: &[T], need: Need) -> Vec<T> {
    use Layout::*;
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let mut out = super::pool::zeroed(nq * g.d + nk * (g.d + g.dv));
    let (dq, rest) = out.split_at_mut(nq * g.d);
    let (dk, dv) = rest.split_at_mut(nk * g.d);
    let mut sc = scratch();
    let [dd] = sc.slices::<T, 1>(nq);
    row_dots(d_o, o, g.dv, dd);
    let cx = Ctx { q, k, v, d_o, lse, dd, ..Ctx::new(g) };
    let ops = [(q, g.nq, g.d, Transposed), (d_o, g.nq, g.dv, Transposed), (k, g.nk, g.d, Panels), (v, g.nk, g.dv, Panels)];
    let mut sc2 = scratch();
    let [qt, dot, kp, vp] = relayout(&mut sc2, g.heads, &ops)[..] else { unreachable!() };
    let cx = Ctx { qt, dot, kp, vp, ..cx };
    let (tk, ng) = group_tasks(&g);
    let (wk, wv) = if need.kv { (g.d, g.dv) } else { (0, 0) };
    let mut sc3 = scratch();
    let [pk, pv] = &mut sc3.carve::<T>(&[ng * g.heads * g.nk * wk, ng * g.heads * g.nk * wv])[..] else { unreachable!() };
    let (pks, pvs) = (partial_slices(pk, &g, ng, wk), partial_slices(pv, &g, ng, wv));
    let blk = block(g.nk);
    let dqs = split(dq, &tk, g.d);
    tk.into_par_iter().zip(dqs).zip(pks.into_par_iter().zip(pvs)).for_each(|((t, dq), (pk, pv))| {
        pk.fill(T::ZERO);
        pv.fill(T::ZERO);
        blocks(blk, t, [dq], [g.d], |h, i0, nr, [dq]| bwd_row_task(&cx, need, h, i0, nr, dq, (&mut *pk, &mut *pv)));
    });
    if need.kv {
        reduce(pk, ng, cx.c, dk);
        reduce(pv, ng, T::ONE, dv);
    }
    out
}

/// Backward over backward: [Q̄ | K̄ | V̄ | dŌ] packed in one buffer, the cotangents of Q, K, V and dO
/// given cotangents `abe` = (a, b, e) of (dQ, dK, dV). Parts not in `need` stay zero.
pub fn backward_backward<T: AttnFloat>(
    g: Geometry,
    [q, k, v]: [&[T]; 3],
    [o, lse]: [&[T]; 2],
    d_o: &[T],
    [a, b, e]: [&[T]; 3],
    need: Need,
) -> Vec<T> {
    use Layout::*;
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let mut out = super::pool::zeroed(nq * (g.d + g.dv) + nk * (g.d + g.dv));
    let (qbar, rest) = out.split_at_mut(nq * g.d);
    let (kbar, rest) = rest.split_at_mut(nk * g.d);
    let (vbar, dobar) = rest.split_at_mut(nk * g.dv);
    if !(need.q || need.kv || need.d_o) {
        return out;
    }
    let mut sc = scratch();
    let [dd, dbar, rho] = sc.slices::<T, 3>(nq);
    row_dots(d_o, o, g.dv, dd);
    let cx = Ctx { q, k, v, d_o, a, b, e, lse, dd, ..Ctx::new(g) };
    #[rustfmt::skip]
    let ops = [
        (q, g.nq, g.d, Transposed), (d_o, g.nq, g.dv, Transposed), (a, g.nq, g.d, Transposed),
        (k, g.nk, g.d, Panels), (v, g.nk, g.dv, Panels), (b, g.nk, g.d, Panels), (e, g.nk, g.dv, Panels),
    ];
    let mut sc2 = scratch();
    let [qt, dot, at, kp, vp, bp, ep] = relayout(&mut sc2, g.heads, &ops)[..] else { unreachable!() };
    let cx = Ctx { qt, dot, at, kp, vp, bp, ep, ..cx };
    let (tk, ng) = group_tasks(&g);
    let (wk, wv) = if need.kv { (g.d, g.dv) } else { (0, 0) };
    let mut sc3 = scratch();
    let [pk, pv] = &mut sc3.carve::<T>(&[ng * g.heads * g.nk * wk, ng * g.heads * g.nk * wv])[..] else { unreachable!() };
    let (pks, pvs) = (partial_slices(pk, &g, ng, wk), partial_slices(pv, &g, ng, wv));
    let blk = block(g.nk);
    let (qs, ds) = (split(qbar, &tk, g.d), split(dobar, &tk, g.dv));
    let (dbs, rhos) = (split(dbar, &tk, 1), split(rho, &tk, 1));
    let outs = qs.into_par_iter().zip(ds).zip(dbs.into_par_iter().zip(rhos));
    tk.into_par_iter().zip(outs).zip(pks.into_par_iter().zip(pvs)).for_each(|((t, ((qb, db), (dbr, rh))), (pk, pv))| {
        pk.fill(T::ZERO);
        pv.fill(T::ZERO);
        blocks(blk, t, [qb, db, dbr, rh], [g.d, g.dv, 1, 1], |h, i0, nr, [qb, db, dbr, rh]| {
            bb_row_task(&cx, need, h, i0, nr, qb, db, (dbr, rh), (&mut *pk, &mut *pv));
        });
    });
    if need.kv {
        reduce(pk, ng, cx.c, kbar);
        reduce(pv, ng, T::ONE, vbar);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_f32_is_accurate() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 87.5 * i as f32 / 200_000.0;
            let (got, want) = (x.fast_exp() as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(f32::NEG_INFINITY.fast_exp(), 0.0);
        assert_eq!((-100f32).fast_exp(), 0.0);
        assert!(f32::NAN.fast_exp().is_nan());
        assert_eq!(0f32.fast_exp(), 1.0);
    }

    fn data<T: Float>(n: usize, seed: u64) -> Vec<T> {
        (0..n).map(|i| T::from_f64(((i as u64 * 7919 + seed * 104_729) % 1013) as f64 / 507.0 - 1.0)).collect()
    }

    /// The portable, AVX2 and AVX-512 instantiations give the same bits.
    #[test]
    fn instruction_sets_agree_bitwise() {
        for causal in [false, true] {
            let g = Geometry { heads: 2, nq: 37, nk: 29, d: 19, dv: 21, scale: 0.3, causal };
            let (q, k, v) = (data::<f32>(2 * 37 * 19, 1), data::<f32>(2 * 29 * 19, 2), data::<f32>(2 * 29 * 21, 3));
            let (d_o, a) = (data::<f32>(2 * 37 * 21, 4), data::<f32>(2 * 37 * 19, 5));
            let (b, e) = (data::<f32>(2 * 29 * 19, 6), data::<f32>(2 * 29 * 21, 7));
            let all = Need { q: true, kv: true, d_o: true };
            let run = || {
                let (o, lse) = forward(g, &q, &k, &v);
                let bw = backward(g, [&q, &k, &v], [&o, &lse], &d_o, all);
                let bb = backward_backward(g, [&q, &k, &v], [&o, &lse], &d_o, [&a, &b, &e], all);
                [o, lse, bw, bb].map(|x| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            };
            let mut results = vec![];
            for cap in [0, 1, 2] {
                ISA_CAP.store(cap, Ordering::Relaxed);
                results.push(run());
            }
            ISA_CAP.store(2, Ordering::Relaxed);
            assert!(results[0] == results[1] && results[1] == results[2], "causal {causal}");
        }
    }
}
