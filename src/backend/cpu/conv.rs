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
//! The gathered operand is packed panel by panel into a small contiguous buffer (rows of the image copied
//! as runs, zeros for padding), then a register tile of MR×NR outputs accumulates with fused multiply-adds
//! (AVX-512 or AVX2+FMA when the CPU has them, chosen at run time; portable code otherwise).
//!
//! Determinism: every output element is one chain of correctly rounded FMAs over its reduction index in
//! ascending order, starting from zero, whatever the tile size, instruction set or thread count, so all
//! paths give the same bits. The weight gradient's reduction over the batch is split into a number of
//! partial sums fixed by the batch size alone (images split into contiguous groups), and the partials
//! are added in group order. Parallel tasks write disjoint outputs.
//!
//! With stride 1 the forward reduction order (c, ki, kj) equals that of im2col + matmul, so the forward
//! pass is bitwise equal to the composite path; the gradients round differently (same math).

use crate::dtype::Float;
use rayon::prelude::*;

/// The shape of one convolution y = conv(x, w): x is [n, c, h, w], w is [o, c, kh, kw] and y is
/// [n, o, ho, wo], with `ho = (h + 2·padding.0 − dilation.0·(kh − 1) − 1) / stride.0 + 1` (same for wo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
    /// Step between windows (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding on each side (rows, columns).
    pub padding: (usize, usize),
    /// Spacing between taps (rows, columns).
    pub dilation: (usize, usize),
}

impl ConvShape {
    fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    fn w_len(&self) -> usize {
        self.o * self.c * self.kh * self.kw
    }
    fn y_len(&self) -> usize {
        self.n * self.o * self.ho * self.wo
    }
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
        if v < 0 || v as usize % self.div != 0 {
            return None;
        }
        let s = v as usize / self.div;
        (s < self.len).then_some(s)
    }
}

/// Fills `out` with the gathered values of destination pixels p0, p0 + 1, ... (row-major over a grid
/// `dst_w` wide) read from `plane` (a `rows.len × cols.len` image): runs along a row are plain copies
/// when the column map is the identity up to an offset.
#[inline(always)]
fn gather_run<T: Float>(plane: &[T], rows: Axis, cols: Axis, dst_w: usize, p0: usize, out: &mut [T]) {
    let mut i = 0;
    while i < out.len() {
        let (dr, dc) = ((p0 + i) / dst_w, (p0 + i) % dst_w);
        let len = (dst_w - dc).min(out.len() - i);
        let seg = &mut out[i..i + len];
        i += len;
        let Some(sr) = rows.src(dr) else {
            seg.fill(T::ZERO);
            continue;
        };
        let row = &plane[sr * cols.len..(sr + 1) * cols.len];
        if cols.mul == 1 && cols.div == 1 {
            // Source column of seg[j] is dc + j + off: copy the part inside the row, zero the rest.
            let first = dc as isize + cols.off;
            let lo = (-first).clamp(0, len as isize) as usize;
            let hi = (cols.len as isize - first).clamp(lo as isize, len as isize) as usize;
            seg[..lo].fill(T::ZERO);
            if hi > lo {
                let s = (first + lo as isize) as usize;
                seg[lo..hi].copy_from_slice(&row[s..s + hi - lo]);
            }
            seg[hi..].fill(T::ZERO);
        } else {
            for (j, v) in seg.iter_mut().enumerate() {
                *v = cols.src(dc + j).map_or(T::ZERO, |s| row[s]);
            }
        }
    }
}

/// The register tile: acc[r][j] += Σ_{t < kc} a[r·lda + t]·b[t·NR + j], t ascending, one FMA per step.
#[inline(always)]
fn micro<T: Float, const MR: usize, const NR: usize>(a: &[T], lda: usize, b: &[T], kc: usize, mut acc: [[T; NR]; MR]) -> [[T; NR]; MR] {
    let rows: [&[T]; MR] = std::array::from_fn(|r| &a[r * lda..r * lda + kc]);
    let b = &b[..kc * NR];
    for t in 0..kc {
        let bv: &[T; NR] = b[t * NR..t * NR + NR].try_into().unwrap();
        for r in 0..MR {
            let av = rows[r][t];
            for j in 0..NR {
                acc[r][j] = av.mul_add(bv[j], acc[r][j]);
            }
        }
    }
    acc
}

/// Instruction sets with their own compiled copy of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
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

/// Output pixels per parallel task of the gathered-B product (rounded to whole panels).
const PIXELS_PER_TASK: usize = 256;

/// out[i, m, p] = Σ_{t < kt} a[m, t]·B_i[t, p] for images i < imgs, m < rows, p < pixels, where `a` is
/// rows × kt (row-major) and `fill(i, t, p0, dst)` gathers B_i[t, p0 ..].
#[allow(clippy::too_many_arguments)]
fn gemm_gathered_b<T: Float, const MR: usize, const NR: usize>(
    isa: Isa,
    imgs: usize,
    rows: usize,
    kt: usize,
    pixels: usize,
    a: &[T],
    fill: &(impl Fn(usize, usize, usize, &mut [T]) + Sync),
) -> Vec<T> {
    let mut out = vec![T::ZERO; imgs * rows * pixels];
    if out.is_empty() || kt == 0 {
        return out;
    }
    let mut padded = a.to_vec();
    padded.resize(rows.div_ceil(MR) * MR * kt, T::ZERO);
    let a = &padded[..];
    let panels = pixels.div_ceil(NR);
    let per_task = (PIXELS_PER_TASK / NR).max(1);
    let groups = panels.div_ceil(per_task);
    let dst = Out(out.as_mut_ptr(), out.len());
    (0..imgs * groups).into_par_iter().for_each(|task| {
        let (i, g) = (task / groups, task % groups);
        let range = g * per_task..((g + 1) * per_task).min(panels);
        // SAFETY: the features were detected; each task writes only image i's pixels of its panels.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => gathered_b_avx512::<T, _, MR, NR>(i, range, rows, kt, pixels, a, fill, dst),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => gathered_b_avx2::<T, _, MR, NR>(i, range, rows, kt, pixels, a, fill, dst),
                _ => gathered_b_task::<T, _, MR, NR>(i, range, rows, kt, pixels, a, fill, dst),
            }
        }
    });
    out
}

/// One task of [`gemm_gathered_b`]: image `i`, pixel panels `range`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gathered_b_task<T: Float, F: Fn(usize, usize, usize, &mut [T]), const MR: usize, const NR: usize>(
    i: usize,
    range: std::ops::Range<usize>,
    rows: usize,
    kt: usize,
    pixels: usize,
    a: &[T],
    fill: &F,
    out: Out<T>,
) {
    let mut bp = vec![T::ZERO; kt * NR];
    for panel in range {
        let p0 = panel * NR;
        let w = NR.min(pixels - p0);
        for t in 0..kt {
            fill(i, t, p0, &mut bp[t * NR..t * NR + w]);
        }
        for m0 in (0..rows).step_by(MR) {
            let acc = micro::<T, MR, NR>(&a[m0 * kt..], kt, &bp, kt, [[T::ZERO; NR]; MR]);
            for r in 0..MR.min(rows - m0) {
                out.write((i * rows + m0 + r) * pixels + p0, &acc[r][..w]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gathered_b_avx512<T: Float, F: Fn(usize, usize, usize, &mut [T]), const MR: usize, const NR: usize>(
    i: usize,
    range: std::ops::Range<usize>,
    rows: usize,
    kt: usize,
    pixels: usize,
    a: &[T],
    fill: &F,
    out: Out<T>,
) {
    gathered_b_task::<T, F, MR, NR>(i, range, rows, kt, pixels, a, fill, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gathered_b_avx2<T: Float, F: Fn(usize, usize, usize, &mut [T]), const MR: usize, const NR: usize>(
    i: usize,
    range: std::ops::Range<usize>,
    rows: usize,
    kt: usize,
    pixels: usize,
    a: &[T],
    fill: &F,
    out: Out<T>,
) {
    gathered_b_task::<T, F, MR, NR>(i, range, rows, kt, pixels, a, fill, out)
}

/// Runs `$f::<T, MR, NR>` with the register tile chosen for `$isa` and T's width.
macro_rules! dispatch {
    ($isa:expr, $T:ty, $f:ident ( $($arg:expr),* )) => {{
        let wide = std::mem::size_of::<$T>() == 4;
        match ($isa, wide) {
            (Isa::Avx512, true) => $f::<$T, 8, 32>($isa, $($arg),*),
            (Isa::Avx512, false) => $f::<$T, 8, 16>($isa, $($arg),*),
            (_, true) => $f::<$T, 4, 16>($isa, $($arg),*),
            (_, false) => $f::<$T, 4, 8>($isa, $($arg),*),
        }
    }};
}

/// y = Σ_i conv(x_i, w_i) for pairs (x_i [n, c, h, w], w_i [o, c, kh, kw]): [n, o, ho, wo]. The
/// reduction runs over pair 0's (c, ki, kj) in ascending order, then pair 1's, and so on.
pub fn conv2d_forward<T: Float>(s: &ConvShape, pairs: &[(&[T], &[T])]) -> Vec<T> {
    forward_with(detect(), s, pairs)
}

fn forward_with<T: Float>(isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Vec<T> {
    for (x, w) in pairs {
        assert!(x.len() == s.x_len() && w.len() == s.w_len(), "conv2d_forward: operand sizes do not match {s:?}");
    }
    let k = s.c * s.kh * s.kw;
    let kt = k * pairs.len();
    // A = [w_0 | w_1 | ...]: row o holds every pair's weights for output channel o.
    let mut a = Vec::with_capacity(s.o * kt);
    for o in 0..s.o {
        for (_, w) in pairs {
            a.extend_from_slice(&w[o * k..(o + 1) * k]);
        }
    }
    let plane = s.h * s.w;
    let fill = |i: usize, t: usize, p0: usize, dst: &mut [T]| {
        let (pair, t) = (t / k, t % k);
        let (c, ki, kj) = (t / (s.kh * s.kw), t / s.kw % s.kh, t % s.kw);
        let (rows, cols) = s.fwd_axes(ki, kj);
        let x = &pairs[pair].0[(i * s.c + c) * plane..(i * s.c + c + 1) * plane];
        gather_run(x, rows, cols, s.wo, p0, dst);
    };
    dispatch!(isa, T, gemm_gathered_b(s.n, s.o, kt, s.ho * s.wo, &a, &fill))
}

/// dx = Σ_i conv_transpose(dy_i, w_i) for pairs (dy_i [n, o, ho, wo], w_i [o, c, kh, kw]): [n, c, h, w].
/// The reduction runs over pair 0's (o, ki, kj) in ascending order, then pair 1's, and so on.
pub fn conv2d_backward_input<T: Float>(s: &ConvShape, pairs: &[(&[T], &[T])]) -> Vec<T> {
    backward_input_with(detect(), s, pairs)
}

fn backward_input_with<T: Float>(isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Vec<T> {
    for (dy, w) in pairs {
        assert!(dy.len() == s.y_len() && w.len() == s.w_len(), "conv2d_backward_input: operand sizes do not match {s:?}");
    }
    let taps = s.kh * s.kw;
    let k = s.o * taps;
    let kt = k * pairs.len();
    // A[c, (pair, o, ki, kj)] = w_pair[o, c, ki, kj].
    let mut a = vec![T::ZERO; s.c * kt];
    for c in 0..s.c {
        for (p, (_, w)) in pairs.iter().enumerate() {
            for o in 0..s.o {
                let src = &w[(o * s.c + c) * taps..(o * s.c + c + 1) * taps];
                a[c * kt + p * k + o * taps..][..taps].copy_from_slice(src);
            }
        }
    }
    let plane = s.ho * s.wo;
    let fill = |i: usize, t: usize, q0: usize, dst: &mut [T]| {
        let (pair, t) = (t / k, t % k);
        let (o, ki, kj) = (t / taps, t / s.kw % s.kh, t % s.kw);
        let (rows, cols) = s.bwd_axes(ki, kj);
        let dy = &pairs[pair].0[(i * s.o + o) * plane..(i * s.o + o + 1) * plane];
        gather_run(dy, rows, cols, s.w, q0, dst);
    };
    dispatch!(isa, T, gemm_gathered_b(s.n, s.c, kt, s.h * s.w, &a, &fill))
}

/// Most partial sums of the weight gradient (contiguous groups of images, reduced in group order).
const MAX_SPLITS: usize = 16;
/// Reduction steps (pixels) per packed chunk of the weight gradient.
const KC: usize = 256;
/// Rows of dWᵀ (taps (c, ki, kj)) per parallel task of the weight gradient.
const ROWS_PER_TASK: usize = 64;

/// dw = Σ_i correlate(x_i, dy_i) for pairs (x_i [n, c, h, w], dy_i [n, o, ho, wo]): [o, c, kh, kw].
///
/// The batch is cut into `min(n, 16)` contiguous groups of images; within a group the sum runs over
/// pairs, then images, then output pixels, ascending; the group partials are added in group order.
pub fn conv2d_backward_weight<T: Float>(s: &ConvShape, pairs: &[(&[T], &[T])]) -> Vec<T> {
    backward_weight_with(detect(), s, pairs)
}

fn backward_weight_with<T: Float>(isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Vec<T> {
    for (x, dy) in pairs {
        assert!(x.len() == s.x_len() && dy.len() == s.y_len(), "conv2d_backward_weight: operand sizes do not match {s:?}");
    }
    dispatch!(isa, T, weight_grad(s, pairs))
}

fn weight_grad<T: Float, const MR: usize, const NR: usize>(isa: Isa, s: &ConvShape, pairs: &[(&[T], &[T])]) -> Vec<T> {
    let k = s.c * s.kh * s.kw;
    let mut dw = vec![T::ZERO; s.o * k];
    if dw.is_empty() || s.n == 0 || s.ho * s.wo == 0 {
        return dw;
    }
    let splits = s.n.min(MAX_SPLITS);
    let rows_per_task = ROWS_PER_TASK.div_ceil(MR) * MR;
    let groups = k.div_ceil(rows_per_task);
    let op = s.o.div_ceil(NR) * NR;
    // partial[split][t][o] (t padded to whole tasks, o padded to whole panels).
    let mut partial = vec![T::ZERO; splits * groups * rows_per_task * op];
    partial.par_chunks_mut(rows_per_task * op).enumerate().for_each(|(task, acc)| {
        let (split, g) = (task / groups, task % groups);
        let imgs = split * s.n / splits..(split + 1) * s.n / splits;
        let trows = g * rows_per_task..((g + 1) * rows_per_task).min(k);
        // SAFETY: the features were detected.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => weight_avx512::<T, MR, NR>(s, pairs, imgs, trows, acc),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => weight_avx2::<T, MR, NR>(s, pairs, imgs, trows, acc),
                _ => weight_task::<T, MR, NR>(s, pairs, imgs, trows, acc),
            }
        }
    });
    // dw[o, t] = Σ_split partial[split][t][o], splits in order.
    dw.par_chunks_mut(k).enumerate().for_each(|(o, row)| {
        for (t, v) in row.iter_mut().enumerate() {
            let (g, r) = (t / rows_per_task, t % rows_per_task);
            let mut sum = partial[(g * rows_per_task + r) * op + o];
            for split in 1..splits {
                sum += partial[((split * groups + g) * rows_per_task + r) * op + o];
            }
            *v = sum;
        }
    });
    dw
}

/// One task of the weight gradient: taps `trows` over images `imgs`, accumulated into
/// acc[t − trows.start][o] (o padded to whole panels of NR).
#[inline(always)]
unsafe fn weight_task<T: Float, const MR: usize, const NR: usize>(
    s: &ConvShape,
    pairs: &[(&[T], &[T])],
    imgs: std::ops::Range<usize>,
    trows: std::ops::Range<usize>,
    acc: &mut [T],
) {
    let (pixels, taps) = (s.ho * s.wo, s.kh * s.kw);
    let panels = s.o.div_ceil(NR);
    let op = panels * NR;
    let mut bp = vec![T::ZERO; panels * KC * NR]; // dYᵀ chunk: [panel][pixel][NR]
    let mut ap = vec![T::ZERO; MR * KC]; // gathered X̂ rows: [MR][pixel]
    for (x, dy) in pairs {
        for i in imgs.clone() {
            for p0 in (0..pixels).step_by(KC) {
                let kc = KC.min(pixels - p0);
                for o in 0..s.o {
                    let src = &dy[(i * s.o + o) * pixels + p0..][..kc];
                    let (panel, j) = (o / NR, o % NR);
                    for (t, &v) in src.iter().enumerate() {
                        bp[(panel * KC + t) * NR + j] = v;
                    }
                }
                for m0 in trows.clone().step_by(MR) {
                    for r in 0..MR {
                        let dst = &mut ap[r * KC..r * KC + kc];
                        let t = m0 + r;
                        if t >= trows.end {
                            dst.fill(T::ZERO);
                            continue;
                        }
                        let (c, ki, kj) = (t / taps, t / s.kw % s.kh, t % s.kw);
                        let (rows, cols) = s.fwd_axes(ki, kj);
                        gather_run(&x[(i * s.c + c) * s.h * s.w..][..s.h * s.w], rows, cols, s.wo, p0, dst);
                    }
                    let base = (m0 - trows.start) * op;
                    for panel in 0..panels {
                        let mut tile = [[T::ZERO; NR]; MR];
                        for r in 0..MR {
                            tile[r].copy_from_slice(&acc[base + r * op + panel * NR..][..NR]);
                        }
                        let tile = micro::<T, MR, NR>(&ap, KC, &bp[panel * KC * NR..], kc, tile);
                        for r in 0..MR {
                            acc[base + r * op + panel * NR..][..NR].copy_from_slice(&tile[r]);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn weight_avx512<T: Float, const MR: usize, const NR: usize>(
    s: &ConvShape,
    pairs: &[(&[T], &[T])],
    imgs: std::ops::Range<usize>,
    trows: std::ops::Range<usize>,
    acc: &mut [T],
) {
    weight_task::<T, MR, NR>(s, pairs, imgs, trows, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_avx2<T: Float, const MR: usize, const NR: usize>(
    s: &ConvShape,
    pairs: &[(&[T], &[T])],
    imgs: std::ops::Range<usize>,
    trows: std::ops::Range<usize>,
    acc: &mut [T],
) {
    weight_task::<T, MR, NR>(s, pairs, imgs, trows, acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn shape(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        o: usize,
        k: (usize, usize),
        st: (usize, usize),
        p: (usize, usize),
        d: (usize, usize),
    ) -> ConvShape {
        let out = |x: usize, k: usize, s: usize, p: usize, d: usize| (x + 2 * p - d * (k - 1) - 1) / s + 1;
        ConvShape {
            n,
            c,
            h,
            w,
            o,
            kh: k.0,
            kw: k.1,
            ho: out(h, k.0, st.0, p.0, d.0),
            wo: out(w, k.1, st.1, p.1, d.1),
            stride: st,
            padding: p,
            dilation: d,
        }
    }

    fn data(len: usize, seed: usize) -> Vec<f64> {
        (0..len).map(|i| (((i * 7919 + seed * 104729) % 1013) as f64 / 1013.0 - 0.5) * 2.0).collect()
    }

    /// The three maps by their definition, one loop over (n, o, c, oh, ow, ki, kj).
    fn naive(s: &ConvShape, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut y, mut dx, mut dw) = (vec![0.0; s.y_len()], vec![0.0; s.x_len()], vec![0.0; s.w_len()]);
        for n in 0..s.n {
            for o in 0..s.o {
                for c in 0..s.c {
                    for oh in 0..s.ho {
                        for ow in 0..s.wo {
                            for ki in 0..s.kh {
                                for kj in 0..s.kw {
                                    let r = (oh * s.stride.0 + ki * s.dilation.0) as isize - s.padding.0 as isize;
                                    let q = (ow * s.stride.1 + kj * s.dilation.1) as isize - s.padding.1 as isize;
                                    if r < 0 || q < 0 || r >= s.h as isize || q >= s.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * s.c + c) * s.h + r as usize) * s.w + q as usize;
                                    let wi = ((o * s.c + c) * s.kh + ki) * s.kw + kj;
                                    let yi = ((n * s.o + o) * s.ho + oh) * s.wo + ow;
                                    y[yi] += w[wi] * x[xi];
                                    dx[xi] += w[wi] * dy[yi];
                                    dw[wi] += x[xi] * dy[yi];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    #[test]
    fn kernels_match_the_definition_and_agree_bitwise_across_instruction_sets() {
        let cases = [
            shape(2, 3, 7, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
            shape(3, 2, 9, 8, 4, (3, 2), (2, 3), (2, 1), (1, 2)),
            shape(1, 4, 5, 5, 3, (1, 1), (2, 2), (0, 0), (1, 1)),
            shape(2, 1, 6, 40, 33, (2, 3), (1, 1), (0, 3), (2, 1)),
        ];
        let isas = match detect() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Portable],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        };
        for (ci, s) in cases.iter().enumerate() {
            let (x, w, dy) = (data(s.x_len(), ci), data(s.w_len(), ci + 10), data(s.y_len(), ci + 20));
            let (y0, dx0, dw0) = naive(s, &x, &w, &dy);
            let close = |a: &[f64], b: &[f64], what: &str| {
                for (i, (p, q)) in a.iter().zip(b).enumerate() {
                    assert!((p - q).abs() < 1e-12, "case {ci} {what}[{i}]: {p} vs {q}");
                }
            };
            let mut first: Option<(Vec<f64>, Vec<f64>, Vec<f64>)> = None;
            for &isa in &isas {
                let y = forward_with(isa, s, &[(&x, &w)]);
                let dx = backward_input_with(isa, s, &[(&dy, &w)]);
                let dw = backward_weight_with(isa, s, &[(&x, &dy)]);
                close(&y, &y0, "y");
                close(&dx, &dx0, "dx");
                close(&dw, &dw0, "dw");
                match &first {
                    None => first = Some((y, dx, dw)),
                    Some(f) => assert!(f.0 == y && f.1 == dx && f.2 == dw, "case {ci}: {isa:?} differs bitwise"),
                }
            }
            // Two pairs sum like one convolution over concatenated operands.
            let (x2, w2, dy2) = (data(s.x_len(), ci + 30), data(s.w_len(), ci + 40), data(s.y_len(), ci + 50));
            let (y1, dx1, dw1) = naive(s, &x2, &w2, &dy2);
            let add = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p + q).collect::<Vec<_>>();
            close(&conv2d_forward(s, &[(&x, &w), (&x2, &w2)]), &add(&y0, &y1), "y pairs");
            close(&conv2d_backward_input(s, &[(&dy, &w), (&dy2, &w2)]), &add(&dx0, &dx1), "dx pairs");
            close(&conv2d_backward_weight(s, &[(&x, &dy), (&x2, &dy2)]), &add(&dw0, &dw1), "dw pairs");
        }
    }
}
