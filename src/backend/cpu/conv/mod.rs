//! Direct 2-D convolution kernels (implicit GEMM): forward, input gradient and weight gradient.
//!
//! Write the convolution as the trilinear form T(x, w, y) = Σ y(n,o,p)·w(o,c,ki,kj)·x(n,c,src(p,ki,kj)).
//! Its three partial derivatives are the three kernels here, and each is a matrix product one of whose
//! operands is *gathered* from an image instead of stored:
//! - [`conv2d_forward`] (∂T/∂y = conv(x, w)): per image, Y[o, p] = Σ_t W[o, t]·X̂[t, p] with t = (c, ki, kj)
//!   and X̂[t, p] the input pixel that tap t of output pixel p reads (zero in the padding);
//! - [`conv2d_backward_input`] (∂T/∂x = conv_transpose(dy, w)): per image, dX[c, q] = Σ_t W'[c, t]·D̂[t, q]
//!   with t = (o, ki, kj) and D̂[t, q] the output gradient that reaches input pixel q through tap (ki, kj)
//!   (zero where the stride skips q);
//! - [`conv2d_backward_weight`] (∂T/∂w = correlate(x, dy)): dWᵀ[t, o] = Σ_{n,p} X̂[t, p]·dY[o, p], with
//!   t = (c, ki, kj), reduced over batch and space.
//!
//! Each takes a *list* of operand pairs and returns the sum over the pairs, reduced as one longer sum:
//! a sum of convolutions is a convolution over the concatenated operands. That is how the fused
//! second-order op computes dȳ = conv(gx, w) + conv(x, gw) in one pass.
//!
//! The gathered operand is never packed element by element: the source images are copied once per call
//! into planes with zero margins (column stride 1; other column strides get one resampled copy per
//! column tap), so row t of X̂ for one destination row is a contiguous run at an offset computed per
//! (tap, row), with a shared zero row standing for rows outside the image. A register tile of MR×NR
//! outputs then accumulates with fused multiply-adds, reading those runs directly (AVX-512 or AVX2+FMA
//! when the CPU has them, chosen at run time; portable code otherwise). The weight gradient transposes
//! each image's dY once per task into NR-wide panels and keeps every tile in registers over the
//! image's rows. Column strides above 1 in the input gradient read zeros where the stride skips a
//! pixel (correct, up to stride_w times the work).
//!
//! Determinism: every output element is one chain of correctly rounded FMAs over its reduction index in
//! ascending order, starting from zero, whatever the tile size, instruction set or thread count, so all
//! paths give the same bits. The weight gradient's reduction over the batch is split into a number of
//! partial sums fixed by the batch size alone (images split into contiguous groups), and the partials
//! are added in group order. Parallel tasks write disjoint outputs.
//!
//! The forward reduction order (c, ki, kj), zeros included, equals that of im2col + matmul, so the
//! forward pass is bitwise equal to the composite path; the gradients round differently (same math).

use super::float::Float;
use super::{best_isa, pool, Isa};
use crate::backend::spec::ConvShape;
use crate::error::Result;
use rayon::prelude::*;

impl ConvShape {
    /// Source axes of tap (ki, kj) for the forward gather: output pixel → input pixel.
    fn fwd_axes(&self, ki: usize, kj: usize) -> (Axis, Axis) {
        let a = |s: usize, k: usize, d: usize, p: usize, len: usize| Axis { mul: s, div: 1, off: (k * d) as isize - p as isize, len };
        (a(self.stride.0, ki, self.dilation.0, self.padding.0, self.h), a(self.stride.1, kj, self.dilation.1, self.padding.1, self.w))
    }
    /// Source axes of tap (ki, kj) for the transposed gather: input pixel → output pixel.
    fn bwd_axes(&self, ki: usize, kj: usize) -> (Axis, Axis) {
        let a = |s: usize, k: usize, d: usize, p: usize, len: usize| Axis { mul: 1, div: s, off: p as isize - (k * d) as isize, len };
        (a(self.stride.0, ki, self.dilation.0, self.padding.0, self.ho), a(self.stride.1, kj, self.dilation.1, self.padding.1, self.wo))
    }
}

/// One axis of a gather: destination index d reads source index (d·mul + off) / div when that division
/// is exact and the result lies in [0, len); otherwise it reads zero.
#[derive(Clone, Copy, Debug)]
struct Axis {
    mul: usize,
    div: usize,
    off: isize,
    len: usize,
}

impl Axis {
    #[inline(always)]
    fn src(&self, d: usize) -> Option<usize> {
        let v = (d * self.mul) as isize + self.off;
        if v < 0 || !(v as usize).is_multiple_of(self.div) {
            return None;
        }
        let s = v as usize / self.div;
        (s < self.len).then_some(s)
    }
}

/// Source planes laid out so that every tap reads a contiguous run of columns: destination columns
/// [dc, dc + len) of column tap kj on source row r of plane `pl` are `data[row(pl, Some(r), kj) + dc..]`,
/// and rows outside the image (`None`) read a row of zeros.
///
/// When the column map is a plain shift (column stride 1) the planes are copied once with zero margins
/// and each column tap is an offset into them; otherwise each column tap gets its own resampled copy
/// (zeros where the padding or the stride leaves a hole). Either way the arithmetic that follows sees
/// exactly the values (zeros included) that im2col would give it.
struct Planes<T> {
    data: Vec<T>,
    rows: usize,
    wp: usize,
    shift: Vec<usize>,
    zero: usize,
}

impl<T: Float> Planes<T> {
    /// `srcs` each hold `per` planes of `rows` × `cols[_].len`; `cols[kj]` is column tap kj's map, and
    /// destination rows are read `dst_wp` wide (whole register panels). Plane `pl` of source `k` is
    /// plane `k·per + pl`.
    fn new(op: &'static str, srcs: &[&[T]], per: usize, rows: usize, cols: &[Axis], dst_wp: usize) -> Result<Planes<T>> {
        let src_w = cols[0].len;
        let count = srcs.len() * per;
        let unit = cols.iter().all(|a| a.mul == 1 && a.div == 1);
        // Zero margins of the shared copy: left of the most negative shift, right of the largest.
        let left = (-cols.iter().map(|a| a.off).min().unwrap_or(0)).max(0) as usize;
        let right = cols.iter().map(|a| a.off).max().unwrap_or(0).max(0) as usize;
        let (wp, blocks) = if unit { ((left + src_w).max(left + right + dst_wp), 1) } else { (dst_wp, cols.len()) };
        let block = (count * rows + 1) * wp;
        let shift: Vec<usize> = if unit {
            cols.iter().map(|a| (left as isize + a.off) as usize).collect()
        } else {
            (0..cols.len()).map(|kj| kj * block).collect()
        };
        let mut data = pool::zeroed(op, blocks * block)?;
        let plane = rows * src_w;
        // block is 0 when the destination rows are empty (wp = 0): nothing to copy then.
        if plane > 0 && block > 0 {
            for (kj, blk) in data.chunks_mut(block).enumerate() {
                blk[..count * rows * wp].par_chunks_mut(rows * wp).enumerate().for_each(|(pl, dst)| {
                    let src = &srcs[pl / per][(pl % per) * plane..(pl % per + 1) * plane];
                    for (s, d) in src.chunks_exact(src_w).zip(dst.chunks_exact_mut(wp)) {
                        if unit {
                            d[left..left + src_w].copy_from_slice(s);
                        } else {
                            for (dc, v) in d.iter_mut().enumerate() {
                                *v = cols[kj].src(dc).map_or(T::ZERO, |c| s[c]);
                            }
                        }
                    }
                });
            }
        }
        Ok(Planes { data, rows, wp, shift, zero: count * rows * wp })
    }

    /// The offset of (plane, source row or `None` for a zero row, column tap kj).
    #[inline(always)]
    fn row(&self, pl: usize, r: Option<usize>, kj: usize) -> usize {
        r.map_or(self.zero, |r| (pl * self.rows + r) * self.wp) + self.shift[kj]
    }
}

/// The register tile: acc[r][j] += Σ_t a[r][t]·b[boffs[t] + j] over t ascending, one FMA per step.
#[inline(always)]
fn micro<T: Float, const MR: usize, const NR: usize>(a: [&[T]; MR], b: &[T], boffs: &[usize], mut acc: [[T; NR]; MR]) -> [[T; NR]; MR] {
    let a: [&[T]; MR] = std::array::from_fn(|r| &a[r][..boffs.len()]);
    for (t, &o) in boffs.iter().enumerate() {
        let bv: [T; NR] = *<&[T; NR]>::try_from(&b[o..o + NR]).unwrap();
        for r in 0..MR {
            let av = a[r][t];
            for j in 0..NR {
                acc[r][j] = av.mul_add(bv[j], acc[r][j]);
            }
        }
    }
    acc
}

/// Defines `$name`, which runs `$job.run::<MR, NR>($args)` compiled for the given instruction set: the
/// kernels are `#[inline(always)]`, so they are generated anew inside each `#[target_feature]` copy.
macro_rules! isa_variants {
    ($name:ident, $job:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name<T: Float, const MR: usize, const NR: usize>(isa: Isa, job: &$job<T>, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512<T: Float, const MR: usize, const NR: usize>(job: &$job<T>, $($arg: $ty),*) {
                job.run::<MR, NR>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<T: Float, const MR: usize, const NR: usize>(job: &$job<T>, $($arg: $ty),*) {
                job.run::<MR, NR>($($arg),*)
            }
            match isa {
                // SAFETY: `best_isa` found the features.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::<T, MR, NR>(job, $($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2::<T, MR, NR>(job, $($arg),*) },
                _ => job.run::<MR, NR>($($arg),*),
            }
        }
    };
}

/// A pointer to an output buffer shared by parallel tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Out<T>(*mut T, usize);
// SAFETY: tasks only write disjoint ranges through `write` (see its callers), and the buffer outlives them.
unsafe impl<T: Send> Send for Out<T> {}
unsafe impl<T: Send> Sync for Out<T> {}
impl<T: Copy> Out<T> {
    /// Copies `src` to elements [at, at + src.len()).
    ///
    /// # Safety
    /// No other task may access that range concurrently.
    #[inline(always)]
    unsafe fn write(self, at: usize, src: &[T]) {
        assert!(at + src.len() <= self.1);
        std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add(at), src.len());
    }
}

/// Row t of a gathered operand: plane `plane + i·per_img` of image i, row map `rows`, column tap `kj`.
#[derive(Clone, Copy, Debug)]
struct Tap {
    plane: usize,
    rows: Axis,
    kj: usize,
}

/// Destination pixels per parallel task of the gathered-B product (rounded to whole rows).
const PIXELS_PER_TASK: usize = 256;

/// out[i, m, q] = Σ_t a[m, t]·B_i[t, q] for images i, rows m < m_rows and destination pixels q of a
/// dst_h × dst_w grid, where `a` is m_rows × taps.len() (row-major, zero rows padding it to whole
/// tiles) and row t of B_i is `taps[t]` read from `planes`. Each output is one FMA chain over t ascending.
struct GatheredB<'a, T> {
    a: &'a [T],
    m_rows: usize,
    planes: &'a Planes<T>,
    taps: &'a [Tap],
    per_img: usize,
    dst_h: usize,
    dst_w: usize,
    out: Out<T>,
}

impl<T: Float> GatheredB<'_, T> {
    /// Image i, destination rows `rows`.
    #[inline(always)]
    fn run<const MR: usize, const NR: usize>(&self, i: usize, rows: std::ops::Range<usize>) {
        let (kt, pixels) = (self.taps.len(), self.dst_h * self.dst_w);
        let data = &self.planes.data;
        let mut boffs = vec![0usize; kt];
        for dr in rows {
            for (b, tap) in boffs.iter_mut().zip(self.taps) {
                *b = self.planes.row(tap.plane + i * self.per_img, tap.rows.src(dr), tap.kj);
            }
            for dc in (0..self.dst_w).step_by(NR) {
                let w = NR.min(self.dst_w - dc);
                for m0 in (0..self.m_rows).step_by(MR) {
                    let arows = std::array::from_fn(|r| &self.a[(m0 + r) * kt..(m0 + r + 1) * kt]);
                    let acc = micro::<T, MR, NR>(arows, &data[dc..], &boffs, [[T::ZERO; NR]; MR]);
                    for r in 0..MR.min(self.m_rows - m0) {
                        // SAFETY: the task for (image i, these rows) alone writes these elements.
                        unsafe { self.out.write((i * self.m_rows + m0 + r) * pixels + dr * self.dst_w + dc, &acc[r][..w]) };
                    }
                }
            }
        }
    }
}

isa_variants!(gathered_b_rows, GatheredB, (i: usize, rows: std::ops::Range<usize>));

/// Runs [`GatheredB`] over all images in parallel tasks of whole destination rows.
#[allow(clippy::too_many_arguments)]
fn gemm_gathered_b<T: Float, const MR: usize, const NR: usize>(
    op: &'static str,
    isa: Isa,
    a: &[T],
    m_rows: usize,
    planes: &Planes<T>,
    taps: &[Tap],
    per_img: usize,
    imgs: usize,
    (dst_h, dst_w): (usize, usize),
) -> Result<Vec<T>> {
    let kt = taps.len();
    let mut out = pool::zeroed(op, imgs * m_rows * dst_h * dst_w)?;
    if out.is_empty() || kt == 0 {
        return Ok(out);
    }
    let mut padded = a.to_vec();
    padded.resize(m_rows.div_ceil(MR) * MR * kt, T::ZERO);
    let rows_per_task = PIXELS_PER_TASK.div_ceil(dst_w.div_ceil(NR) * NR).max(1);
    let groups = dst_h.div_ceil(rows_per_task);
    let job = GatheredB { a: &padded, m_rows, planes, taps, per_img, dst_h, dst_w, out: Out(out.as_mut_ptr(), out.len()) };
    (0..imgs * groups).into_par_iter().for_each(|task| {
        let (i, g) = (task / groups, task % groups);
        gathered_b_rows::<T, MR, NR>(isa, &job, i, g * rows_per_task..((g + 1) * rows_per_task).min(dst_h));
    });
    Ok(out)
}

/// Runs `$f::<T, MR, NR>` with the register tile chosen for `$isa` and T's width.
macro_rules! dispatch {
    ($op:expr, $isa:expr, $T:ty, $f:ident ( $($arg:expr),* )) => {{
        let wide = std::mem::size_of::<$T>() == 4;
        match ($isa, wide) {
            (Isa::Avx512, true) => $f::<$T, 8, 32>($op, $isa, $($arg),*),
            (Isa::Avx512, false) => $f::<$T, 8, 16>($op, $isa, $($arg),*),
            (_, true) => $f::<$T, 4, 16>($op, $isa, $($arg),*),
            (_, false) => $f::<$T, 4, 8>($op, $isa, $($arg),*),
        }
    }};
}

/// y = Σ_i conv(x_i, w_i) for pairs (x_i [n, c, h, w], w_i [o, c, kh, kw]): [n, o, ho, wo]. The
/// reduction runs over pair 0's (c, ki, kj) in ascending order, then pair 1's, and so on.
/// Operand lengths are checked by the caller (`CpuStorage::conv`).
pub(crate) fn conv2d_forward<T: Float>(op: &'static str, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    forward_with(op, best_isa(), s, pairs)
}

fn forward_with<T: Float>(op: &'static str, isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    dispatch!(op, isa, T, forward_tiled(s, pairs))
}

fn forward_tiled<T: Float, const MR: usize, const NR: usize>(
    op: &'static str,
    isa: Isa,
    s: &ConvShape,
    pairs: &[(&[T], &[T])],
) -> Result<Vec<T>> {
    let k = s.c * s.kh * s.kw;
    // A = [w_0 | w_1 | ...]: row o holds every pair's weights for output channel o.
    let mut a = Vec::with_capacity(s.o * k * pairs.len());
    for o in 0..s.o {
        for (_, w) in pairs {
            a.extend_from_slice(&w[o * k..(o + 1) * k]);
        }
    }
    let mut taps = Vec::with_capacity(k * pairs.len());
    for p in 0..pairs.len() {
        for c in 0..s.c {
            for ki in 0..s.kh {
                for kj in 0..s.kw {
                    taps.push(Tap { plane: p * s.n * s.c + c, rows: s.fwd_axes(ki, 0).0, kj });
                }
            }
        }
    }
    let cols: Vec<Axis> = (0..s.kw).map(|kj| s.fwd_axes(0, kj).1).collect();
    let xs: Vec<&[T]> = pairs.iter().map(|p| p.0).collect();
    let planes = Planes::new(op, &xs, s.n * s.c, s.h, &cols, s.wo.div_ceil(NR) * NR)?;
    gemm_gathered_b::<T, MR, NR>(op, isa, &a, s.o, &planes, &taps, s.c, s.n, (s.ho, s.wo))
}

/// dx = Σ_i conv_transpose(dy_i, w_i) for pairs (dy_i [n, o, ho, wo], w_i [o, c, kh, kw]): [n, c, h, w].
/// The reduction runs over pair 0's (o, ki, kj) in ascending order, then pair 1's, and so on.
pub(crate) fn conv2d_backward_input<T: Float>(op: &'static str, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    backward_input_with(op, best_isa(), s, pairs)
}

fn backward_input_with<T: Float>(op: &'static str, isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    dispatch!(op, isa, T, backward_input_tiled(s, pairs))
}

fn backward_input_tiled<T: Float, const MR: usize, const NR: usize>(
    op: &'static str,
    isa: Isa,
    s: &ConvShape,
    pairs: &[(&[T], &[T])],
) -> Result<Vec<T>> {
    let taps_per = s.kh * s.kw;
    let k = s.o * taps_per;
    let kt = k * pairs.len();
    // A[c, (pair, o, ki, kj)] = w_pair[o, c, ki, kj].
    let mut a = vec![T::ZERO; s.c * kt];
    for c in 0..s.c {
        for (p, (_, w)) in pairs.iter().enumerate() {
            for o in 0..s.o {
                let src = &w[(o * s.c + c) * taps_per..(o * s.c + c + 1) * taps_per];
                a[c * kt + p * k + o * taps_per..][..taps_per].copy_from_slice(src);
            }
        }
    }
    let mut taps = Vec::with_capacity(kt);
    for p in 0..pairs.len() {
        for o in 0..s.o {
            for ki in 0..s.kh {
                for kj in 0..s.kw {
                    taps.push(Tap { plane: p * s.n * s.o + o, rows: s.bwd_axes(ki, 0).0, kj });
                }
            }
        }
    }
    let cols: Vec<Axis> = (0..s.kw).map(|kj| s.bwd_axes(0, kj).1).collect();
    let dys: Vec<&[T]> = pairs.iter().map(|p| p.0).collect();
    let planes = Planes::new(op, &dys, s.n * s.o, s.ho, &cols, s.w.div_ceil(NR) * NR)?;
    gemm_gathered_b::<T, MR, NR>(op, isa, &a, s.c, &planes, &taps, s.o, s.n, (s.h, s.w))
}

/// Most partial sums of the weight gradient (contiguous groups of images, reduced in group order).
const MAX_SPLITS: usize = 16;
/// Rows of dWᵀ (taps (c, ki, kj)) per parallel task of the weight gradient: large, because each task
/// transposes its images' output gradients once for all its rows.
const ROWS_PER_TASK: usize = 512;

/// dw = Σ_i correlate(x_i, dy_i) for pairs (x_i [n, c, h, w], dy_i [n, o, ho, wo]): [o, c, kh, kw].
///
/// The batch is cut into `min(n, 16)` contiguous groups of images; within a group the sum runs over
/// pairs, then images, then output pixels, ascending; the group partials are added in group order.
pub(crate) fn conv2d_backward_weight<T: Float>(op: &'static str, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    backward_weight_with(op, best_isa(), s, pairs)
}

fn backward_weight_with<T: Float>(op: &'static str, isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    dispatch!(op, isa, T, weight_tiled(s, pairs))
}

/// One task of the weight gradient: dWᵀ[t, o] += Σ X̂[t, p]·dY[o, p] over taps `trows` and the pixels of
/// images `imgs`, into acc[t − trows.start][o] (o padded to whole panels). The broadcast operand is the
/// gathered input (rows read from [`Planes`]), the vector operand dYᵀ, transposed one image at a time
/// into panels; each tile stays in registers over an image's output rows.
struct WeightGrad<'a, T> {
    s: &'a ConvShape,
    pairs: &'a [(&'a [T], &'a [T])],
    planes: &'a Planes<T>,
}

impl<T: Float> WeightGrad<'_, T> {
    #[inline(always)]
    fn run<const MR: usize, const NR: usize>(&self, imgs: std::ops::Range<usize>, trows: std::ops::Range<usize>, acc: &mut [T]) {
        let (s, planes) = (self.s, self.planes);
        let (taps, wo, pixels, panels) = (s.kh * s.kw, s.wo, s.ho * s.wo, s.o.div_ceil(NR));
        let op = panels * NR;
        let mut bp = vec![T::ZERO; panels * pixels * NR]; // dYᵀ of one image: [panel][pixel][NR]
        let boffs: Vec<usize> = (0..wo).map(|t| t * NR).collect();
        let zeros = vec![T::ZERO; wo];
        // Per tap of this task: (plane within the image, row map, column tap).
        let tap_info: Vec<(usize, Axis, usize)> = trows
            .clone()
            .map(|t| {
                let (c, ki, kj) = (t / taps, t / s.kw % s.kh, t % s.kw);
                (c, s.fwd_axes(ki, kj).0, kj)
            })
            .collect();
        for (p, (_, dy)) in self.pairs.iter().enumerate() {
            for i in imgs.clone() {
                for o in 0..s.o {
                    let src = &dy[(i * s.o + o) * pixels..][..pixels];
                    let (panel, j) = (o / NR, o % NR);
                    for (q, &v) in src.iter().enumerate() {
                        bp[(panel * pixels + q) * NR + j] = v;
                    }
                }
                let plane0 = (p * s.n + i) * s.c;
                for m0 in trows.clone().step_by(MR) {
                    let base = (m0 - trows.start) * op;
                    for panel in 0..panels {
                        let mut tile = [[T::ZERO; NR]; MR];
                        for r in 0..MR {
                            tile[r].copy_from_slice(&acc[base + r * op + panel * NR..][..NR]);
                        }
                        for dr in 0..s.ho {
                            let mut arows: [&[T]; MR] = [&zeros[..]; MR];
                            for (a, &(c, rows, kj)) in arows.iter_mut().zip(&tap_info[m0 - trows.start..]) {
                                let at = planes.row(plane0 + c, rows.src(dr), kj);
                                *a = &planes.data[at..at + wo];
                            }
                            tile = micro::<T, MR, NR>(arows, &bp[(panel * pixels + dr * wo) * NR..], &boffs, tile);
                        }
                        for r in 0..MR {
                            acc[base + r * op + panel * NR..][..NR].copy_from_slice(&tile[r]);
                        }
                    }
                }
            }
        }
    }
}

isa_variants!(weight_rows, WeightGrad, (imgs: std::ops::Range<usize>, trows: std::ops::Range<usize>, acc: &mut [T]));

/// dWᵀ[t, o] = Σ X̂[t, p]·dY[o, p], reduced per group of images, then over the groups in order.
fn weight_tiled<T: Float, const MR: usize, const NR: usize>(
    op: &'static str,
    isa: Isa,
    s: &ConvShape,
    pairs: &[(&[T], &[T])],
) -> Result<Vec<T>> {
    let k = s.c * s.kh * s.kw;
    let mut dw = pool::zeroed(op, s.o * k)?;
    if dw.is_empty() || s.n == 0 || s.ho * s.wo == 0 {
        return Ok(dw);
    }
    let cols: Vec<Axis> = (0..s.kw).map(|kj| s.fwd_axes(0, kj).1).collect();
    let xs: Vec<&[T]> = pairs.iter().map(|p| p.0).collect();
    let planes = Planes::new(op, &xs, s.n * s.c, s.h, &cols, s.wo)?;
    let splits = s.n.min(MAX_SPLITS);
    let rows_per_task = ROWS_PER_TASK.div_ceil(MR) * MR;
    let groups = k.div_ceil(rows_per_task);
    let opad = s.o.div_ceil(NR) * NR;
    // partial[split][t][o] (t padded to whole tasks, o padded to whole panels).
    let mut partial = pool::zeroed(op, splits * groups * rows_per_task * opad)?;
    let job = WeightGrad { s, pairs, planes: &planes };
    partial.par_chunks_mut(rows_per_task * opad).enumerate().for_each(|(task, acc)| {
        let (split, g) = (task / groups, task % groups);
        let imgs = split * s.n / splits..(split + 1) * s.n / splits;
        weight_rows::<T, MR, NR>(isa, &job, imgs, g * rows_per_task..((g + 1) * rows_per_task).min(k), acc);
    });
    // dw[o, t] = Σ_split partial[split][t][o], splits in order.
    dw.par_chunks_mut(k).enumerate().for_each(|(o, row)| {
        for (t, v) in row.iter_mut().enumerate() {
            let (g, r) = (t / rows_per_task, t % rows_per_task);
            let mut sum = partial[(g * rows_per_task + r) * opad + o];
            for split in 1..splits {
                sum += partial[((split * groups + g) * rows_per_task + r) * opad + o];
            }
            *v = sum;
        }
    });
    Ok(dw)
}

#[cfg(test)]
mod tests;
