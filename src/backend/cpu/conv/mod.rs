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
//! (tap, row), with a shared zero row standing for rows outside the image. The offsets are located
//! once per call for every destination row and tap ([`Located`]); a task adds its image's offset.
//! All three products then run the register tile of [`super::tile`] (the matmul's micro-kernel):
//! - forward and input gradient: A (weights) packed in MR-tall panels, B's rows read in place at the
//!   located offsets ([`super::tile::Gathered`]), one tile column per NR destination pixels of a row;
//! - weight gradient: the broadcast operand read in place (the MR taps' gathered rows,
//!   [`super::tile::RowPtrs`]), dY transposed per output row into NR-wide panels shared by every tile
//!   of taps.
//!
//! Column strides above 1 in the input gradient read zeros where the stride skips a pixel (correct,
//! up to stride_w times the work).
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
use super::tile::{self, aligned, tile_into, Caches, Gathered, Packed, PackedA, RowPtrs, TileJob, Tiled, C};
use super::transpose::{transpose_rows, Transpose};
use super::{best_isa, pool, Isa};
use crate::backend::spec::ConvShape;
use crate::error::Result;
use rayon::prelude::*;
use std::ops::Range;

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
        // A product past isize::MAX lies past every source index (a huge stride): no source.
        let v = isize::try_from(d.checked_mul(self.mul)?).ok()?.checked_add(self.off)?;
        if v < 0 {
            return None;
        }
        // A division only where a stride makes one (the common unit case is a plain shift).
        let s = match self.div {
            1 => v as usize,
            div if (v as usize).is_multiple_of(div) => v as usize / div,
            _ => return None,
        };
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
struct Planes<T: Float> {
    data: Vec<T>,
    rows: usize,
    wp: usize,
    shift: Vec<usize>,
    zero: usize,
}

impl<T: Float> Drop for Planes<T> {
    fn drop(&mut self) {
        // The next call of the same shape gets these pages back without faulting them in again.
        pool::recycle(std::mem::take(&mut self.data));
    }
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
        // Every element is written once below (margins, data and the zero row), so no clearing pass.
        let mut data = pool::for_overwrite(op, blocks * block)?;
        if block > 0 {
            for (kj, blk) in data.chunks_mut(block).enumerate() {
                let (body, zero_row) = blk.split_at_mut(count * rows * wp);
                zero_row.fill(T::ZERO);
                if body.is_empty() {
                    continue;
                }
                body.par_chunks_mut(rows * wp).enumerate().for_each(|(pl, dst)| {
                    let src = &srcs[pl / per][(pl % per) * rows * src_w..][..rows * src_w];
                    for (r, d) in dst.chunks_exact_mut(wp).enumerate() {
                        let s = &src[r * src_w..][..src_w];
                        if unit {
                            d[..left].fill(T::ZERO);
                            d[left..left + src_w].copy_from_slice(s);
                            d[left + src_w..].fill(T::ZERO);
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

/// Row t of a gathered operand: plane `plane + i·per_img` of image i, row map `rows`, column tap `kj`.
#[derive(Clone, Copy, Debug)]
struct Tap {
    plane: usize,
    rows: Axis,
    kj: usize,
}

/// Where the taps' runs are for destination rows `rows`: per row and tap, the offset of its run in
/// image 0's planes, and a mask that is all ones where the tap reads inside the image (so its run moves
/// with the image: image i's is at offset + (mask & i·image stride)) and zero where it reads the zero
/// row (which does not move). Computed once per call for all the images.
struct Located {
    rel: Vec<usize>,
    inside: Vec<usize>,
    taps: usize,
}

impl Located {
    fn new<T: Float>(planes: &Planes<T>, taps: &[Tap], rows: Range<usize>) -> Located {
        let n = taps.len();
        let (mut rel, mut inside) = (Vec::with_capacity(rows.len() * n), Vec::with_capacity(rows.len() * n));
        for dr in rows {
            for tap in taps {
                let src = tap.rows.src(dr);
                rel.push(planes.row(tap.plane, src, tap.kj));
                inside.push(if src.is_some() { usize::MAX } else { 0 });
            }
        }
        Located { rel, inside, taps: n }
    }

    /// The offsets of the runs of taps `t0..t0 + out.len()` for destination row `d` (counted from the
    /// first located row) of the image at offset `img`, into `out`.
    #[inline(always)]
    fn fill(&self, d: usize, t0: usize, img: usize, out: &mut [usize]) {
        let at = d * self.taps + t0;
        let (rel, inside) = (&self.rel[at..][..out.len()], &self.inside[at..][..out.len()]);
        for ((o, &r), &m) in out.iter_mut().zip(rel).zip(inside) {
            *o = r + (m & img);
        }
    }
}

/// Destination pixels per parallel task of the gathered-B product (rounded to whole rows).
const PIXELS_PER_TASK: usize = 256;

/// out[i, m, q] = Σ_t A[m, t]·B_i[t, q] for images i, rows m < m_rows and destination pixels q of a
/// dst_h × dst_w grid, where A is packed in MR-tall panels ([m tile][t][MR], zero rows below m_rows) and
/// row t of B_i is `taps[t]` read in place from `planes`. Each output is one FMA chain over t ascending.
struct GatheredB<'a, T: Float> {
    a: &'a [T],
    mr: usize,
    m_rows: usize,
    kc: usize,
    planes: &'a Planes<T>,
    taps: &'a [Tap],
    loc: &'a Located,
    per_img: usize,
    dst_w: usize,
    out: C<T>,
}

/// Images `imgs`, destination rows `rows` of a [`GatheredB`]. The B rows of each destination row are
/// located once for all the images (an offset per tap, plus the image's offset where the tap reads
/// inside the image), then every NR-wide run of the row is one column of tiles.
struct GatheredTask<'a, T: Float> {
    job: &'a GatheredB<'a, T>,
    imgs: Range<usize>,
    rows: Range<usize>,
}

impl<T: Float> TileJob<T> for GatheredTask<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<R: Transpose<T>, const MR: usize, const NV: usize>(self) {
        let GatheredTask { job: j, imgs, rows } = self;
        assert_eq!(MR, j.mr, "A packed for another tile");
        let (kt, nr, p) = (j.taps.len(), NV * R::LANES, j.planes);
        let mut boffs = vec![0usize; kt];
        for i in imgs {
            let img = i * j.per_img * p.rows * p.wp;
            for dr in rows.clone() {
                j.loc.fill(dr, 0, img, &mut boffs);
                for dc in (0..j.dst_w).step_by(nr) {
                    let w = nr.min(j.dst_w - dc);
                    for pc in (0..kt).step_by(j.kc) {
                        let kb = j.kc.min(kt - pc);
                        let b = Gathered::new(&p.data[dc..], &boffs[pc..pc + kb], nr);
                        for mt in 0..j.m_rows.div_ceil(MR) {
                            let a = PackedA::new(&j.a[(mt * kt + pc) * MR..], kb, MR);
                            let (m, h) = (mt * MR, MR.min(j.m_rows - mt * MR));
                            // SAFETY: rows (i, m..m + h) and pixels dr·dst_w + dc.. + w lie inside the
                            // output, and only this task (these images and rows) writes them.
                            unsafe { tile_into::<T, R, _, _, MR, NV>(kb, a, b, j.out, i * j.m_rows + m, dr * j.dst_w + dc, h, w, pc == 0) };
                        }
                    }
                }
            }
        }
    }
}

/// Runs [`GatheredB`] over all images in parallel tasks of whole destination rows; `a` is m_rows ×
/// taps.len(), row-major; `planes` were laid out for destination rows `T::tile(isa, _).1` wide.
#[allow(clippy::too_many_arguments)]
fn gemm_gathered_b<T: Tiled>(
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
    if kt == 0 {
        return pool::zeroed(op, imgs * m_rows * dst_h * dst_w);
    }
    let mut out = pool::for_overwrite(op, imgs * m_rows * dst_h * dst_w)?;
    if out.is_empty() {
        return Ok(out);
    }
    // A in MR-tall panels: panel[t][r] = A[m0 + r, t].
    let (mr, nr) = T::tile(isa, m_rows);
    let mut packed = pool::zeroed(op, m_rows.div_ceil(mr) * mr * kt)?;
    for (m, row) in a.chunks_exact(kt).enumerate() {
        let panel = &mut packed[m / mr * mr * kt..];
        for (t, &v) in row.iter().enumerate() {
            panel[t * mr + m % mr] = v;
        }
    }
    let rows_per_task = PIXELS_PER_TASK.div_ceil(dst_w.div_ceil(nr) * nr).max(1);
    let groups = dst_h.div_ceil(rows_per_task);
    // Equal k blocks rather than full ones and a sliver (the sliver would pay a whole tile's loads and stores).
    let kc = kt.div_ceil(kt.div_ceil(Caches::get().kc(mr, std::mem::size_of::<T>())));
    let c = C { ptr: out.as_mut_ptr(), ld: dst_h * dst_w };
    let loc = Located::new(planes, taps, 0..dst_h);
    let job = GatheredB { a: &packed, mr, m_rows, kc, planes, taps, loc: &loc, per_img, dst_w, out: c };
    // Tasks: row groups × runs of images, about four per thread (work stealing evens out a core slowed
    // by something else); each task locates its rows' B rows once for all its images.
    let runs = (4 * rayon::current_num_threads()).div_ceil(groups).clamp(1, imgs);
    let per_run = imgs.div_ceil(runs);
    (0..imgs.div_ceil(per_run) * groups).into_par_iter().for_each(|task| {
        let (r, g) = (task / groups, task % groups);
        let (imgs, rows) = (r * per_run..((r + 1) * per_run).min(imgs), g * rows_per_task..((g + 1) * rows_per_task).min(dst_h));
        tile::run(isa, mr, GatheredTask { job: &job, imgs, rows });
    });
    pool::recycle(packed);
    Ok(out)
}

/// y = Σ_i conv(x_i, w_i) for pairs (x_i [n, c, h, w], w_i [o, c, kh, kw]): [n, o, ho, wo]. The
/// reduction runs over pair 0's (c, ki, kj) in ascending order, then pair 1's, and so on.
/// Operand lengths are checked by the caller (`CpuStorage::conv`).
pub(crate) fn conv2d_forward<T: Tiled>(op: &'static str, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    forward_with(op, best_isa(), s, pairs)
}

fn forward_with<T: Tiled>(op: &'static str, isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
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
    let nr = T::tile(isa, 0).1;
    let planes = Planes::new(op, &xs, s.n * s.c, s.h, &cols, s.wo.div_ceil(nr) * nr)?;
    gemm_gathered_b(op, isa, &a, s.o, &planes, &taps, s.c, s.n, (s.ho, s.wo))
}

/// dx = Σ_i conv_transpose(dy_i, w_i) for pairs (dy_i [n, o, ho, wo], w_i [o, c, kh, kw]): [n, c, h, w].
/// The reduction runs over pair 0's (o, ki, kj) in ascending order, then pair 1's, and so on.
pub(crate) fn conv2d_backward_input<T: Tiled>(op: &'static str, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    backward_input_with(op, best_isa(), s, pairs)
}

fn backward_input_with<T: Tiled>(op: &'static str, isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
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
    let nr = T::tile(isa, 0).1;
    let planes = Planes::new(op, &dys, s.n * s.o, s.ho, &cols, s.w.div_ceil(nr) * nr)?;
    gemm_gathered_b(op, isa, &a, s.c, &planes, &taps, s.o, s.n, (s.h, s.w))
}

/// Most partial sums of the weight gradient (contiguous groups of images, reduced in group order).
const MAX_SPLITS: usize = 16;
/// Rows of dWᵀ (taps (c, ki, kj)) per parallel task of the weight gradient: large, because each task
/// packs its images' output gradients once for all its rows.
const ROWS_PER_TASK: usize = 512;

/// dw = Σ_i correlate(x_i, dy_i) for pairs (x_i [n, c, h, w], dy_i [n, o, ho, wo]): [o, c, kh, kw].
///
/// The batch is cut into `min(n, 16)` contiguous groups of images; within a group the sum runs over
/// pairs, then images, then output pixels, ascending; the group partials are added in group order.
pub(crate) fn conv2d_backward_weight<T: Tiled>(op: &'static str, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    backward_weight_with(op, best_isa(), s, pairs)
}

/// The weight gradient as a product: dWᵀ[t, o] = Σ_p X̂[t, p]·dY[o, p] with t = (c, ki, kj) and p
/// running over (pair, image, output pixel) of one group of images, one output row at a time. The
/// broadcast operand is read in place: row t of a tile is the gathered input row of tap t (a run of
/// [`Planes`]), so only dY is packed, into NR-wide panels (a register transpose per output row), and
/// those panels serve every tile of taps.
struct WeightGrad<'a, T: Float> {
    s: &'a ConvShape,
    pairs: &'a [(&'a [T], &'a [T])],
    planes: &'a Planes<T>,
    /// Every tap (plane = channel within the image), located for every output row.
    loc: &'a Located,
    /// The tile height.
    mr: usize,
    /// The padded width of the partials' rows (whole NR panels).
    opad: usize,
}

/// One task of a [`WeightGrad`]: the taps `trows` over the images `imgs`, accumulated into
/// acc[t − trows.start][o].
struct WeightTask<'a, T: Float> {
    job: &'a WeightGrad<'a, T>,
    imgs: Range<usize>,
    trows: Range<usize>,
    acc: &'a mut [T],
}

impl<T: Float> TileJob<T> for WeightTask<'_, T> {
    type Out = Result<()>;
    #[inline(always)]
    fn run<R: Transpose<T>, const MR: usize, const NV: usize>(self) -> Result<()> {
        let WeightTask { job, imgs, trows, acc } = self;
        assert_eq!(MR, job.mr, "tile height");
        let (s, planes, nr) = (job.s, job.planes, NV * R::LANES);
        let (wo, pixels, panels) = (s.wo, s.ho * s.wo, s.o.div_ceil(nr));
        assert_eq!(job.opad, panels * nr, "partials padded for another tile");
        let mut b_buf = pool::for_overwrite::<T>("conv2d", panels * wo * nr + 64)?;
        let bp = aligned(&mut b_buf, panels * wo * nr);
        let mut offs = vec![0usize; trows.len()];
        let zero_row = &planes.data[planes.zero..][..wo];
        let c = C { ptr: acc.as_mut_ptr(), ld: job.opad };
        for (p, (_, dy)) in job.pairs.iter().enumerate() {
            for i in imgs.clone() {
                let img = (p * s.n + i) * s.c * planes.rows * planes.wp;
                for dr in 0..s.ho {
                    // B: this output row of dYᵀ, one wo × NR panel per NR output channels.
                    for (q, dst) in bp.chunks_exact_mut(wo * nr).enumerate() {
                        let cols = nr.min(s.o - q * nr);
                        if cols < nr {
                            dst.fill(T::ZERO);
                        }
                        let src = |j: usize| dy[(i * s.o + q * nr + j) * pixels + dr * wo..][..wo].as_ptr();
                        // SAFETY: each source row holds wo elements (sliced in `src`); dst holds wo rows of nr.
                        unsafe { transpose_rows::<T, R>(cols, src, wo, dst.as_mut_ptr(), nr) };
                    }
                    job.loc.fill(dr, trows.start, img, &mut offs);
                    for m0 in (0..offs.len()).step_by(MR) {
                        let h = MR.min(offs.len() - m0);
                        // A: the MR taps' gathered input rows (the zero row below the last tap).
                        let rows: [&[T]; MR] = std::array::from_fn(|r| if r < h { &planes.data[offs[m0 + r]..][..wo] } else { zero_row });
                        let a = RowPtrs::new(rows, wo);
                        for q in 0..panels {
                            let b = Packed::new(&bp[q * wo * nr..], wo, nr);
                            // SAFETY: rows m0.. + h and columns q·nr.. + nr lie inside this task's own
                            // accumulator (opad = panels·nr columns).
                            unsafe { tile_into::<T, R, _, _, MR, NV>(wo, a, b, c, m0, q * nr, h, nr, false) };
                        }
                    }
                }
            }
        }
        pool::recycle(b_buf);
        Ok(())
    }
}

/// dWᵀ[t, o] = Σ X̂[t, p]·dY[o, p], reduced per group of images, then over the groups in order.
fn backward_weight_with<T: Tiled>(op: &'static str, isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Result<Vec<T>> {
    let k = s.c * s.kh * s.kw;
    let mut dw = pool::zeroed(op, s.o * k)?;
    if dw.is_empty() || s.n == 0 || s.ho * s.wo == 0 {
        return Ok(dw);
    }
    // Tiles of at most 8 taps: their row pointers stay in registers (see `RowPtrs`).
    let (mr, nr) = T::tile(isa, 8);
    let cols: Vec<Axis> = (0..s.kw).map(|kj| s.fwd_axes(0, kj).1).collect();
    let xs: Vec<&[T]> = pairs.iter().map(|p| p.0).collect();
    let planes = Planes::new(op, &xs, s.n * s.c, s.h, &cols, s.wo)?;
    let splits = s.n.min(MAX_SPLITS);
    let rows_per_task = ROWS_PER_TASK.min(k).div_ceil(mr) * mr;
    let groups = k.div_ceil(rows_per_task);
    let opad = s.o.div_ceil(nr) * nr;
    // partial[split][t][o] (t padded to whole tasks, o padded to whole panels).
    let mut partial = pool::zeroed(op, splits * groups * rows_per_task * opad)?;
    let taps: Vec<Tap> = (0..k)
        .map(|t| {
            let (c, ki, kj) = (t / (s.kh * s.kw), t / s.kw % s.kh, t % s.kw);
            Tap { plane: c, rows: s.fwd_axes(ki, kj).0, kj }
        })
        .collect();
    let loc = Located::new(&planes, &taps, 0..s.ho);
    let job = WeightGrad { s, pairs, planes: &planes, loc: &loc, mr, opad };
    partial.par_chunks_mut(rows_per_task * opad).enumerate().try_for_each(|(task, acc)| {
        let (split, g) = (task / groups, task % groups);
        let imgs = split * s.n / splits..(split + 1) * s.n / splits;
        tile::run(isa, mr, WeightTask { job: &job, imgs, trows: g * rows_per_task..((g + 1) * rows_per_task).min(k), acc })
    })?;
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
    pool::recycle(partial);
    Ok(dw)
}

#[cfg(test)]
mod tests;
