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
//! - **Nothing N×N is materialized.** A task holds *strips*: its block of query rows against all
//!   (visible) keys, or its block of keys against all (visible) rows, for a handful of score-shaped
//!   quantities. Strips are capped at [`STRIP`] elements, which fixes the block size.
//! - **Deterministic without atomics.** Row-indexed outputs (O, dQ, Q̄, dŌ) are written by row tasks,
//!   column-indexed ones (dK, dV, K̄, V̄) by column tasks in a separate pass that recomputes P from ℓ.
//!   Every output element is owned by one task and is one chain of fused multiply-adds in ascending key
//!   (or row) order; row statistics are sums with 16 interleaved partials combined in a fixed tree. So
//!   the bits depend on the shapes alone: not on the thread count, the block size, or the instruction
//!   set (the register tile widens with AVX2 or AVX-512; the arithmetic does not change).
//! - **Fast.** Every product is a small GEMM on strips with an MR×NR register tile of FMAs (vectorized
//!   across the tile's columns), compiled three times (portable, AVX2+FMA, AVX-512) and picked at run
//!   time; f32 uses a polynomial exp that vectorizes. In units of N²·d multiply-adds per head the
//!   forward costs 2, the backward 3 (rows) + 4 (columns), the backward-over-backward 5 (statistics,
//!   kept in the strips) + 2 for Q̄ (+ 2 for dŌ, only when asked) + 8 (columns).

use crate::dtype::{DType, Float};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Elements in one strip (a block of rows against all keys, or a block of keys against all rows).
/// Blocks have `STRIP / n` rows, clamped to [8, 64]: a few strips per task stay in the L2 cache.
pub const STRIP: usize = 1 << 15;

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
    /// The first query row that sees key `j`.
    fn first_row(&self, j: usize) -> usize {
        if self.causal {
            j.min(self.nq)
        } else {
            0
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

/// An instruction set: the register tile is MR rows × two registers.
trait Isa {
    const MR: usize;
    type R32: Reg<f32>;
    type R64: Reg<f64>;
}
struct Portable;
impl Isa for Portable {
    const MR: usize = 4;
    type R32 = Lanes4<f32>;
    type R64 = Lanes4<f64>;
}
#[cfg(target_arch = "x86_64")]
struct Avx2;
#[cfg(target_arch = "x86_64")]
impl Isa for Avx2 {
    const MR: usize = 4;
    type R32 = std::arch::x86_64::__m256;
    type R64 = std::arch::x86_64::__m256d;
}
#[cfg(target_arch = "x86_64")]
struct Avx512;
#[cfg(target_arch = "x86_64")]
impl Isa for Avx512 {
    const MR: usize = 8;
    type R32 = std::arch::x86_64::__m512;
    type R64 = std::arch::x86_64::__m512d;
}

/// The best instruction set allowed: 2 AVX-512, 1 AVX2+FMA, 0 portable. Tests lower the cap to check
/// that every path gives the same bits.
static ISA_CAP: AtomicU8 = AtomicU8::new(2);

fn isa_level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    let found = if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
        2
    } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        1
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let found = 0;
    found.min(ISA_CAP.load(Ordering::Relaxed))
}

/// C[m×n] = (C if `acc`, else 0) + A[m×k]·B[k×n], row-major with row strides `lda`, `ldb`, `ldc`.
/// Each element of C is one FMA chain over k ascending, whatever the tile shape.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float, S: Isa>(acc: bool, m: usize, n: usize, k: usize, a: &[T], lda: usize, b: &[T], ldb: usize, c: &mut [T], ldc: usize) {
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
    match (T::DTYPE, S::MR) {
        (DType::F32, 8) => tiles::<f32, S::R32, 8>(acc, m, n, k, cs(a), lda, cs(b), ldb, cm(c), ldc),
        (DType::F32, _) => tiles::<f32, S::R32, 4>(acc, m, n, k, cs(a), lda, cs(b), ldb, cm(c), ldc),
        (_, 8) => tiles::<f64, S::R64, 8>(acc, m, n, k, cs(a), lda, cs(b), ldb, cm(c), ldc),
        _ => tiles::<f64, S::R64, 4>(acc, m, n, k, cs(a), lda, cs(b), ldb, cm(c), ldc),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tiles<T: Float, R: Reg<T>, const MR: usize>(
    acc: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
) {
    // A packed into panels of MR rows, k-major (zero rows pad the last panel): the micro-kernel then
    // broadcasts from one contiguous MR-vector per k step.
    let panels = m.div_ceil(MR);
    let mut sc = scratch();
    let [ap] = sc.slices::<T, 1>(panels * k * MR);
    for (p, panel) in ap.chunks_exact_mut(k * MR).enumerate() {
        let rows = MR.min(m - p * MR);
        for r in 0..rows {
            let row = &a[(p * MR + r) * lda..(p * MR + r) * lda + k];
            for (kk, &x) in row.iter().enumerate() {
                panel[kk * MR + r] = x;
            }
        }
        for kk in 0..k {
            panel[kk * MR + rows..(kk + 1) * MR].fill(T::ZERO);
        }
    }
    // Column panels outside, so a k×NR panel of B stays in L1 while the row panels pass over it.
    let nr = 2 * R::LANES;
    for j0 in (0..n).step_by(nr) {
        let w = nr.min(n - j0);
        for (p, panel) in ap.chunks_exact(k * MR).enumerate() {
            tile::<T, R, MR>(acc, MR.min(m - p * MR), w, panel, &b[j0..], ldb, &mut c[p * MR * ldc + j0..], ldc);
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
    /// `N` disjoint slices of `len` elements. Their contents are left over from earlier use: every
    /// caller writes an element before reading it.
    fn slices<T: Float, const N: usize>(&mut self, len: usize) -> [&mut [T]; N] {
        let words = (N * len * std::mem::size_of::<T>()).div_ceil(8);
        if self.0.len() < words {
            self.0.resize(words, 0.0);
        }
        let mut rest = &mut bytemuck::cast_slice_mut::<f64, T>(&mut self.0[..words])[..N * len];
        std::array::from_fn(|_| {
            let (a, r) = std::mem::take(&mut rest).split_at_mut(len);
            rest = r;
            a
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        POOL.with(|p| p.borrow_mut().push(v));
    }
}

/// The widest register tile row: two AVX-512 registers of f32.
const MAX_NR: usize = 32;

/// One MR × 2·LANES tile of C (`rows` × `w` of it loaded and stored) from a packed A panel and B rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<T: Float, R: Reg<T>, const MR: usize>(acc: bool, rows: usize, w: usize, ap: &[T], b: &[T], ldb: usize, c: &mut [T], ldc: usize) {
    let l = R::LANES;
    let full = w == 2 * l;
    let mut t = [[R::zero(); 2]; MR];
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
            t[r] = [R::load(row), R::load(&row[l..])];
        }
    }
    for (kk, av) in ap.chunks_exact(MR).enumerate() {
        let av: &[T; MR] = av.try_into().unwrap();
        let brow = &b[kk * ldb..kk * ldb + w];
        let brow = if full {
            brow
        } else {
            buf[..w].copy_from_slice(brow);
            &buf[..]
        };
        let (b0, b1) = (R::load(brow), R::load(&brow[l..]));
        for r in 0..MR {
            let a = R::splat(av[r]);
            t[r][0] = a.fma(b0, t[r][0]);
            t[r][1] = a.fma(b1, t[r][1]);
        }
    }
    for r in 0..rows {
        if full {
            t[r][0].store(&mut c[r * ldc..]);
            t[r][1].store(&mut c[r * ldc + l..]);
        } else {
            t[r][0].store(&mut buf);
            t[r][1].store(&mut buf[l..]);
            c[r * ldc..r * ldc + w].copy_from_slice(&buf[..w]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Row reductions with a fixed order: 16 interleaved partials, combined in a fixed tree.

const LANES: usize = 16;

#[inline(always)]
fn tree<T: Float>(mut acc: [T; LANES]) -> T {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

#[inline(always)]
fn sum_lanes<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for l in 0..LANES {
            acc[l] += ch[l];
        }
    }
    for (l, &v) in it.remainder().iter().enumerate() {
        acc[l] += v;
    }
    tree(acc)
}

#[inline(always)]
fn dot_lanes<T: Float>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let (mut ix, mut iy) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    for (cx, cy) in (&mut ix).zip(&mut iy) {
        for l in 0..LANES {
            acc[l] = cx[l].mul_add(cy[l], acc[l]);
        }
    }
    for (l, (&a, &b)) in ix.remainder().iter().zip(iy.remainder()).enumerate() {
        acc[l] = a.mul_add(b, acc[l]);
    }
    tree(acc)
}

/// The maximum (exact in any order); −∞ for an empty slice.
#[inline(always)]
fn max_lanes<T: Float>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for l in 0..LANES {
            acc[l] = if ch[l] > acc[l] { ch[l] } else { acc[l] };
        }
    }
    for (l, &v) in it.remainder().iter().enumerate() {
        acc[l] = if v > acc[l] { v } else { acc[l] };
    }
    acc.iter().fold(T::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Σ p·(x + s·dp): the dO·eᵀ and dS̄∘dP part of rowsum(P̄∘P).
#[inline(always)]
fn pbar_sum<T: Float>(p: &[T], x: &[T], s: &[T], dp: &[T]) -> T {
    let n = p.len();
    let (x, s, dp) = (&x[..n], &s[..n], &dp[..n]);
    let mut acc = [T::ZERO; LANES];
    let full = n / LANES * LANES;
    for j0 in (0..full).step_by(LANES) {
        for l in 0..LANES {
            let j = j0 + l;
            acc[l] = p[j].mul_add(s[j].mul_add(dp[j], x[j]), acc[l]);
        }
    }
    for j in full..n {
        acc[j - full] = p[j].mul_add(s[j].mul_add(dp[j], x[j]), acc[j - full]);
    }
    tree(acc)
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
// Per-task work. `Ctx` holds every input of a call; empty slices for what a kernel does not use.

#[derive(Clone, Copy)]
struct Ctx<'a, T> {
    g: Geometry,
    c: T,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    /// Transposes per head: Kᵀ [d, nk], Vᵀ [dv, nk], Qᵀ [d, nq], dOᵀ [dv, nq], aᵀ [d, nq], bᵀ [d, nk],
    /// eᵀ [dv, nk].
    kt: &'a [T],
    vt: &'a [T],
    qt: &'a [T],
    dot: &'a [T],
    at: &'a [T],
    bt: &'a [T],
    et: &'a [T],
    /// Row statistics [heads, nq]: logsumexp, D, and (backward-over-backward) D̄ and ρ.
    lse: &'a [T],
    dd: &'a [T],
    dbar: &'a [T],
    rho: &'a [T],
    d_o: &'a [T],
    a: &'a [T],
    b: &'a [T],
    e: &'a [T],
}

impl<'a, T: Float> Ctx<'a, T> {
    fn new(g: Geometry) -> Self {
        let e: &[T] = &[];
        Ctx {
            g,
            c: T::from_f64(g.scale),
            q: e,
            k: e,
            v: e,
            kt: e,
            vt: e,
            qt: e,
            dot: e,
            at: e,
            bt: e,
            et: e,
            lse: e,
            dd: e,
            dbar: e,
            rho: e,
            d_o: e,
            a: e,
            b: e,
            e,
        }
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

/// Head `h` of a per-head transpose [heads, width, ld(n)], starting at column `from`.
#[inline(always)]
fn cols<T>(xt: &[T], h: usize, n: usize, width: usize, from: usize) -> &[T] {
    &xt[h * ld(n) * width + from..(h + 1) * ld(n) * width]
}

/// The P strip of row block `i0 .. i0 + nr` of head `h` against keys `0..nkv`: exp(c·q·k − ℓ), zero
/// past each row's visible keys.
#[inline(always)]
fn probs_rows<T: AttnFloat, S: Isa>(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, nkv: usize, p: &mut [T]) {
    let g = cx.g;
    gemm::<T, S>(false, nr, nkv, g.d, rows(cx.q, h, g.nq, g.d, i0), g.d, cols(cx.kt, h, g.nk, g.d, 0), ld(g.nk), p, nkv);
    for r in 0..nr {
        let (vis, l) = (g.visible(i0 + r), cx.lse[h * g.nq + i0 + r]);
        let (live, dead) = p[r * nkv..(r + 1) * nkv].split_at_mut(vis);
        for x in live.iter_mut() {
            *x = x.mul_add(cx.c, -l).fast_exp();
        }
        dead.fill(T::ZERO);
    }
}

/// The Pᵀ strip of key block `j0 .. j0 + nc` of head `h` against rows `i_start..nq`: exp(c·k·q − ℓ),
/// zero before each key's first visible row.
#[inline(always)]
fn probs_cols<T: AttnFloat, S: Isa>(cx: &Ctx<T>, h: usize, j0: usize, nc: usize, i_start: usize, pt: &mut [T]) {
    let g = cx.g;
    let nr = g.nq - i_start;
    gemm::<T, S>(false, nc, nr, g.d, rows(cx.k, h, g.nk, g.d, j0), g.d, cols(cx.qt, h, g.nq, g.d, i_start), ld(g.nq), pt, nr);
    let lse = &cx.lse[h * g.nq + i_start..(h + 1) * g.nq];
    for jj in 0..nc {
        let f = g.first_row(j0 + jj).max(i_start) - i_start;
        let (dead, live) = pt[jj * nr..(jj + 1) * nr].split_at_mut(f);
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
    let [s] = sc.slices::<T, 1>(nr * nkv);
    gemm::<T, S>(false, nr, nkv, g.d, rows(cx.q, h, g.nq, g.d, i0), g.d, cols(cx.kt, h, g.nk, g.d, 0), ld(g.nk), s, nkv);
    let mut inv = [T::ZERO; 64];
    for r in 0..nr {
        let (live, dead) = s[r * nkv..(r + 1) * nkv].split_at_mut(g.visible(i0 + r));
        for x in live.iter_mut() {
            *x = *x * cx.c;
        }
        let mut m = max_lanes(live);
        if !m.is_finite() {
            m = T::ZERO; // no visible key (or ±∞/NaN scores): let the arithmetic propagate it
        }
        for x in live.iter_mut() {
            *x = (*x - m).fast_exp();
        }
        dead.fill(T::ZERO);
        let l = sum_lanes(live);
        lse[r] = m + l.ln();
        inv[r] = if l == T::ZERO { T::ZERO } else { T::ONE / l };
    }
    gemm::<T, S>(false, nr, g.dv, nkv, s, nkv, rows(cx.v, h, g.nk, g.dv, 0), g.dv, o, g.dv);
    for r in 0..nr {
        for x in &mut o[r * g.dv..(r + 1) * g.dv] {
            *x = *x * inv[r];
        }
    }
}

/// Backward, rows of head `h`: dQ = c·dS·K with dS = P∘(dO·Vᵀ − D).
#[inline(always)]
fn bwd_rows<T: AttnFloat, S: Isa>(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, dq: &mut [T]) {
    let g = cx.g;
    let nkv = g.visible(i0 + nr - 1);
    let mut sc = scratch();
    let [p, ds] = sc.slices::<T, 2>(nr * nkv);
    probs_rows::<T, S>(cx, h, i0, nr, nkv, p);
    gemm::<T, S>(false, nr, nkv, g.dv, rows(cx.d_o, h, g.nq, g.dv, i0), g.dv, cols(cx.vt, h, g.nk, g.dv, 0), ld(g.nk), ds, nkv);
    for r in 0..nr {
        let dd = cx.dd[h * g.nq + i0 + r];
        for (x, &p) in ds[r * nkv..(r + 1) * nkv].iter_mut().zip(&p[r * nkv..(r + 1) * nkv]) {
            *x = p * (*x - dd);
        }
    }
    gemm::<T, S>(false, nr, g.d, nkv, ds, nkv, rows(cx.k, h, g.nk, g.d, 0), g.d, dq, g.d);
    for x in dq.iter_mut() {
        *x = *x * cx.c;
    }
}

/// Backward, keys `j0 .. j0 + nc` of head `h`: dV = Pᵀ·dO and dK = c·dSᵀ·Q.
#[inline(always)]
fn bwd_cols<T: AttnFloat, S: Isa>(cx: &Ctx<T>, h: usize, j0: usize, nc: usize, dk: &mut [T], dv: &mut [T]) {
    let g = cx.g;
    let i_start = g.first_row(j0);
    let nr = g.nq - i_start;
    let mut sc = scratch();
    let [pt, dst] = sc.slices::<T, 2>(nc * nr);
    probs_cols::<T, S>(cx, h, j0, nc, i_start, pt);
    gemm::<T, S>(false, nc, nr, g.dv, rows(cx.v, h, g.nk, g.dv, j0), g.dv, cols(cx.dot, h, g.nq, g.dv, i_start), ld(g.nq), dst, nr);
    let dd = &cx.dd[h * g.nq + i_start..(h + 1) * g.nq];
    for jj in 0..nc {
        let row = jj * nr..(jj + 1) * nr;
        for ((x, &p), &d) in dst[row.clone()].iter_mut().zip(&pt[row]).zip(dd) {
            *x = p * (*x - d);
        }
    }
    gemm::<T, S>(false, nc, g.dv, nr, pt, nr, rows(cx.d_o, h, g.nq, g.dv, i_start), g.dv, dv, g.dv);
    gemm::<T, S>(false, nc, g.d, nr, dst, nr, rows(cx.q, h, g.nq, g.d, i_start), g.d, dk, g.d);
    for x in dk.iter_mut() {
        *x = *x * cx.c;
    }
}

/// The dP, dS̄ and X = dO·eᵀ strips of a row block (keys `0..nkv`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bb_strips_rows<T: AttnFloat, S: Isa>(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, nkv: usize, dp: &mut [T], dsb: &mut [T], x: &mut [T]) {
    let g = cx.g;
    let (dorows, vt) = (rows(cx.d_o, h, g.nq, g.dv, i0), cols(cx.vt, h, g.nk, g.dv, 0));
    gemm::<T, S>(false, nr, nkv, g.dv, dorows, g.dv, vt, ld(g.nk), dp, nkv);
    gemm::<T, S>(false, nr, nkv, g.d, rows(cx.a, h, g.nq, g.d, i0), g.d, cols(cx.kt, h, g.nk, g.d, 0), ld(g.nk), dsb, nkv);
    gemm::<T, S>(true, nr, nkv, g.d, rows(cx.q, h, g.nq, g.d, i0), g.d, cols(cx.bt, h, g.nk, g.d, 0), ld(g.nk), dsb, nkv);
    for y in dsb.iter_mut() {
        *y = *y * cx.c;
    }
    gemm::<T, S>(false, nr, nkv, g.dv, dorows, g.dv, cols(cx.et, h, g.nk, g.dv, 0), ld(g.nk), x, nkv);
}

/// Backward-over-backward, rows of head `h`: the statistics D̄ and ρ (always: the column pass needs
/// them), then Q̄ = c·(dS·b + S̄·K) and dŌ = P·e + dP̄·V where asked.
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
    stats: (&mut [T], &mut [T]),
) {
    let g = cx.g;
    let nkv = g.visible(i0 + nr - 1);
    let mut sc = scratch();
    let [p, dp, dsb, x] = sc.slices::<T, 4>(nr * nkv);
    probs_rows::<T, S>(cx, h, i0, nr, nkv, p);
    bb_strips_rows::<T, S>(cx, h, i0, nr, nkv, dp, dsb, x);
    let (dbar, rho) = stats;
    for r in 0..nr {
        let vis = g.visible(i0 + r);
        let row = r * nkv..r * nkv + vis;
        let dd = cx.dd[h * g.nq + i0 + r];
        dbar[r] = -dot_lanes(&p[row.clone()], &dsb[row.clone()]);
        rho[r] = pbar_sum(&p[row.clone()], &x[row.clone()], &dsb[row.clone()], &dp[row]) + (dbar[r] + dbar[r]) * dd;
        if need.q || need.d_o {
            let row = r * nkv..(r + 1) * nkv;
            let (p, dp, dsb, x) = (&p[row.clone()], &mut dp[row.clone()], &mut dsb[row.clone()], &mut x[row]);
            for j in 0..vis {
                bar_terms(p[j], &mut dp[j], &mut dsb[j], &mut x[j], dd, dbar[r], rho[r]);
            }
            dp[vis..].fill(T::ZERO);
            dsb[vis..].fill(T::ZERO);
            x[vis..].fill(T::ZERO);
        }
    }
    if need.q {
        gemm::<T, S>(false, nr, g.d, nkv, dp, nkv, rows(cx.b, h, g.nk, g.d, 0), g.d, qbar, g.d);
        gemm::<T, S>(true, nr, g.d, nkv, x, nkv, rows(cx.k, h, g.nk, g.d, 0), g.d, qbar, g.d);
        for y in qbar.iter_mut() {
            *y = *y * cx.c;
        }
    }
    if need.d_o {
        gemm::<T, S>(false, nr, g.dv, nkv, p, nkv, rows(cx.e, h, g.nk, g.dv, 0), g.dv, dobar, g.dv);
        gemm::<T, S>(true, nr, g.dv, nkv, dsb, nkv, rows(cx.v, h, g.nk, g.dv, 0), g.dv, dobar, g.dv);
    }
}

/// Backward-over-backward, keys of head `h`: K̄ = c·(dSᵀ·a + S̄ᵀ·Q) and V̄ = dP̄ᵀ·dO, with the row
/// statistics from the row pass.
#[inline(always)]
fn bb_cols<T: AttnFloat, S: Isa>(cx: &Ctx<T>, h: usize, j0: usize, nc: usize, kbar: &mut [T], vbar: &mut [T]) {
    let g = cx.g;
    let i_start = g.first_row(j0);
    let nr = g.nq - i_start;
    let n = nc * nr;
    let mut sc = scratch();
    let [pt, dpt, dsbt, xt] = sc.slices::<T, 4>(n);
    probs_cols::<T, S>(cx, h, j0, nc, i_start, pt);
    let dot = cols(cx.dot, h, g.nq, g.dv, i_start);
    let (krows, qt) = (rows(cx.k, h, g.nk, g.d, j0), cols(cx.qt, h, g.nq, g.d, i_start));
    gemm::<T, S>(false, nc, nr, g.dv, rows(cx.v, h, g.nk, g.dv, j0), g.dv, dot, ld(g.nq), dpt, nr);
    gemm::<T, S>(false, nc, nr, g.d, krows, g.d, cols(cx.at, h, g.nq, g.d, i_start), ld(g.nq), dsbt, nr);
    gemm::<T, S>(true, nc, nr, g.d, rows(cx.b, h, g.nk, g.d, j0), g.d, qt, ld(g.nq), dsbt, nr);
    for y in dsbt.iter_mut() {
        *y = *y * cx.c;
    }
    gemm::<T, S>(false, nc, nr, g.dv, rows(cx.e, h, g.nk, g.dv, j0), g.dv, dot, ld(g.nq), xt, nr);
    let span = h * g.nq + i_start..(h + 1) * g.nq;
    let (dd, dbar, rho) = (&cx.dd[span.clone()], &cx.dbar[span.clone()], &cx.rho[span]);
    for jj in 0..nc {
        let row = jj * nr..(jj + 1) * nr;
        let (p, dp, dsb, x) = (&pt[row.clone()], &mut dpt[row.clone()], &mut dsbt[row.clone()], &mut xt[row]);
        for i in 0..nr {
            bar_terms(p[i], &mut dp[i], &mut dsb[i], &mut x[i], dd[i], dbar[i], rho[i]);
        }
    }
    let (arows, qrows) = (rows(cx.a, h, g.nq, g.d, i_start), rows(cx.q, h, g.nq, g.d, i_start));
    gemm::<T, S>(false, nc, g.d, nr, dpt, nr, arows, g.d, kbar, g.d);
    gemm::<T, S>(true, nc, g.d, nr, xt, nr, qrows, g.d, kbar, g.d);
    for y in kbar.iter_mut() {
        *y = *y * cx.c;
    }
    gemm::<T, S>(false, nc, g.dv, nr, dsbt, nr, rows(cx.d_o, h, g.nq, g.dv, i_start), g.dv, vbar, g.dv);
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
    fn bwd_row_task(cx: &Ctx<T>, h: usize, i0: usize, nr: usize, dq: &mut [T]) = bwd_rows;
    fn bwd_col_task(cx: &Ctx<T>, h: usize, j0: usize, nc: usize, dk: &mut [T], dv: &mut [T]) = bwd_cols;
    fn bb_row_task(cx: &Ctx<T>, need: Need, h: usize, i0: usize, nr: usize, qbar: &mut [T], dobar: &mut [T], stats: (&mut [T], &mut [T])) = bb_rows;
    fn bb_col_task(cx: &Ctx<T>, h: usize, j0: usize, nc: usize, kbar: &mut [T], vbar: &mut [T]) = bb_cols;
}

// ---------------------------------------------------------------------------------------------------
// Orchestration: tasks over (head, block), outputs split into disjoint per-task slices.

/// Rows (or keys) per task when the other side has `other` entries.
fn block(other: usize) -> usize {
    (STRIP / other.max(1)).clamp(8, 64)
}

/// The tasks (head, first, count) covering `n` rows per head in blocks of `blk`.
fn tasks(heads: usize, n: usize, blk: usize) -> Vec<(usize, usize, usize)> {
    (0..heads).flat_map(|h| (0..n).step_by(blk).map(move |i0| (h, i0, blk.min(n - i0)))).collect()
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

/// Per-head transposes: [heads, n, w] → [heads, w, ld(n)], in 32×32 blocks.
fn transpose<T: Float>(x: &[T], heads: usize, n: usize, w: usize) -> Vec<T> {
    const B: usize = 32;
    let l = ld(n);
    let mut out = vec![T::ZERO; heads * w * l];
    if n * w > 0 {
        out.par_chunks_mut(w * l).zip(x.par_chunks(n * w)).for_each(|(o, x)| {
            for i0 in (0..n).step_by(B) {
                for c0 in (0..w).step_by(B) {
                    for c in c0..(c0 + B).min(w) {
                        for i in i0..(i0 + B).min(n) {
                            o[c * l + i] = x[i * w + c];
                        }
                    }
                }
            }
        });
    }
    out
}

/// D = rowsum(dO∘O) per row, [heads·nq].
fn row_dots<T: Float>(d_o: &[T], o: &[T], rows: usize, w: usize) -> Vec<T> {
    if w == 0 {
        return vec![T::ZERO; rows];
    }
    d_o.par_chunks(w).zip(o.par_chunks(w)).map(|(x, y)| dot_lanes(x, y)).collect()
}

/// Forward: O [heads, nq, dv] and the row logsumexp ℓ [heads, nq] of the scaled, masked scores.
pub fn forward<T: AttnFloat>(g: Geometry, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<T>) {
    let mut o = vec![T::ZERO; g.heads * g.nq * g.dv];
    let mut lse = vec![T::ZERO; g.heads * g.nq];
    let kt = transpose(k, g.heads, g.nk, g.d);
    let cx = Ctx { q, k, v, kt: &kt, ..Ctx::new(g) };
    let tk = tasks(g.heads, g.nq, block(g.nk));
    let (os, ls) = (split(&mut o, &tk, g.dv), split(&mut lse, &tk, 1));
    tk.into_par_iter().zip(os).zip(ls).for_each(|(((h, i0, nr), o), l)| fwd_task(&cx, h, i0, nr, o, l));
    (o, lse)
}

/// Backward: [dQ | dK | dV] packed in one buffer (shapes [heads, nq, d], [heads, nk, d],
/// [heads, nk, dv]), from Q, K, V, the forward's O and ℓ (`saved`), and dO. Parts not in `need` stay
/// zero.
pub fn backward<T: AttnFloat>(g: Geometry, [q, k, v]: [&[T]; 3], [o, lse]: [&[T]; 2], d_o: &[T], need: Need) -> Vec<T> {
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let mut out = vec![T::ZERO; nq * g.d + nk * (g.d + g.dv)];
    let (dq, rest) = out.split_at_mut(nq * g.d);
    let (dk, dv) = rest.split_at_mut(nk * g.d);
    let dd = row_dots(d_o, o, nq, g.dv);
    let cx = Ctx { q, k, v, lse, dd: &dd, d_o, ..Ctx::new(g) };
    if need.q {
        let (kt, vt) = (transpose(k, g.heads, g.nk, g.d), transpose(v, g.heads, g.nk, g.dv));
        let cx = Ctx { kt: &kt, vt: &vt, ..cx };
        let tk = tasks(g.heads, g.nq, block(g.nk));
        let dqs = split(dq, &tk, g.d);
        tk.into_par_iter().zip(dqs).for_each(|((h, i0, nr), dq)| bwd_row_task(&cx, h, i0, nr, dq));
    }
    if need.kv {
        let (qt, dot) = (transpose(q, g.heads, g.nq, g.d), transpose(d_o, g.heads, g.nq, g.dv));
        let cx = Ctx { qt: &qt, dot: &dot, ..cx };
        let tk = tasks(g.heads, g.nk, block(g.nq));
        let (dks, dvs) = (split(dk, &tk, g.d), split(dv, &tk, g.dv));
        tk.into_par_iter().zip(dks).zip(dvs).for_each(|(((h, j0, nc), dk), dv)| bwd_col_task(&cx, h, j0, nc, dk, dv));
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
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let mut out = vec![T::ZERO; nq * (g.d + g.dv) + nk * (g.d + g.dv)];
    let (qbar, rest) = out.split_at_mut(nq * g.d);
    let (kbar, rest) = rest.split_at_mut(nk * g.d);
    let (vbar, dobar) = rest.split_at_mut(nk * g.dv);
    if !(need.q || need.kv || need.d_o) {
        return out;
    }
    let dd = row_dots(d_o, o, nq, g.dv);
    let (kt, vt) = (transpose(k, g.heads, g.nk, g.d), transpose(v, g.heads, g.nk, g.dv));
    let (bt, et) = (transpose(b, g.heads, g.nk, g.d), transpose(e, g.heads, g.nk, g.dv));
    let cx = Ctx { q, k, v, kt: &kt, vt: &vt, bt: &bt, et: &et, lse, dd: &dd, d_o, a, b, e, ..Ctx::new(g) };
    let (mut dbar, mut rho) = (vec![T::ZERO; nq], vec![T::ZERO; nq]);
    let tk = tasks(g.heads, g.nq, block(g.nk));
    let (qs, ds) = (split(qbar, &tk, g.d), split(dobar, &tk, g.dv));
    let (dbs, rhos) = (split(&mut dbar, &tk, 1), split(&mut rho, &tk, 1));
    tk.into_par_iter().zip(qs).zip(ds).zip(dbs.into_par_iter().zip(rhos)).for_each(|((((h, i0, nr), qb), db), st)| {
        bb_row_task(&cx, need, h, i0, nr, qb, db, st);
    });
    if need.kv {
        let (qt, dot, at) = (transpose(q, g.heads, g.nq, g.d), transpose(d_o, g.heads, g.nq, g.dv), transpose(a, g.heads, g.nq, g.d));
        let cx = Ctx { qt: &qt, dot: &dot, at: &at, dbar: &dbar, rho: &rho, ..cx };
        let tk = tasks(g.heads, g.nk, block(g.nq));
        let (ks, vs) = (split(kbar, &tk, g.d), split(vbar, &tk, g.dv));
        tk.into_par_iter().zip(ks).zip(vs).for_each(|(((h, j0, nc), kb), vb)| bb_col_task(&cx, h, j0, nc, kb, vb));
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
