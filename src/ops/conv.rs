//! 2-D convolution (NCHW, im2col + matmul) and average pooling.
//!
//! `im2col` is a linear map (a gather with zero padding); its adjoint `col2im` scatter-adds each input
//! pixel's contributions in a fixed order, parallel over (image, channel) planes only, so it is
//! deterministic. Through the linear-map mechanism of `linear.rs`, conv2d's backward (matmuls and
//! col2im) and its backward-over-backward (matmuls and im2col) are exact with no extra code.
//! Average pooling is a linear map too. (The fused convolution kernels are tracked separately.)

use super::linear::{linear, LinearMap};
use crate::dtype::with_float;
use crate::error::{invalid, shape_err, Result};
use crate::{Tensor, Var};
use rayon::prelude::*;
use std::rc::Rc;

/// Geometry of a 2-D window sweep (convolution or pooling) over [N, C, H, W].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOpts {
    /// Step between windows (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding added on each side (rows, columns).
    pub padding: (usize, usize),
    /// Spacing between window taps (rows, columns).
    pub dilation: (usize, usize),
}

impl Default for Conv2dOpts {
    fn default() -> Self {
        Conv2dOpts { stride: (1, 1), padding: (0, 0), dilation: (1, 1) }
    }
}

impl Conv2dOpts {
    /// Stride s and padding p in both directions, dilation 1.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dOpts { stride: (stride, stride), padding: (padding, padding), dilation: (1, 1) }
    }
}

/// The window sweep of one conv/pool: input [n, c, h, w], kernel kh×kw, output ho×wo.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    o: Conv2dOpts,
}

impl Geometry {
    fn new(op: &'static str, x: &[usize], kh: usize, kw: usize, o: Conv2dOpts) -> Result<Geometry> {
        if x.len() != 4 {
            return shape_err(op, format!("input {x:?} must be [N, C, H, W]"));
        }
        if o.stride.0 == 0 || o.stride.1 == 0 || o.dilation.0 == 0 || o.dilation.1 == 0 || kh == 0 || kw == 0 {
            return invalid(op, format!("kernel {kh}x{kw}, stride {:?} and dilation {:?} must be positive", o.stride, o.dilation));
        }
        // Checked arithmetic: absurd padding or dilation is an error, not a wrapped size.
        let span = |k: usize, d: usize| d.checked_mul(k - 1).and_then(|s| s.checked_add(1));
        let padded = |n: usize, p: usize| p.checked_mul(2).and_then(|p| p.checked_add(n));
        let sizes = (padded(x[2], o.padding.0), padded(x[3], o.padding.1), span(kh, o.dilation.0), span(kw, o.dilation.1));
        let (Some(hp), Some(wp), Some(sh), Some(sw)) = sizes else {
            return shape_err(
                op,
                format!("input {x:?} with padding {:?} and a {kh}x{kw} kernel with dilation {:?} overflows usize", o.padding, o.dilation),
            );
        };
        if hp < sh || wp < sw {
            return shape_err(
                op,
                format!("padded input {hp}x{wp} is smaller than the dilated {kh}x{kw} kernel (dilation {:?})", o.dilation),
            );
        }
        let (ho, wo) = ((hp - sh) / o.stride.0 + 1, (wp - sw) / o.stride.1 + 1);
        // Every buffer size the kernels compute is a sub-product of these (zeros aside).
        if [x[0], x[1], kh, kw, ho, wo].iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(1))).is_none() {
            return shape_err(op, format!("input {x:?} with a {kh}x{kw} kernel gives a {ho}x{wo} output: too many elements"));
        }
        Ok(Geometry { n: x[0], c: x[1], h: x[2], w: x[3], kh, kw, ho, wo, o })
    }
    /// The input pixel (row, column) read by tap (ki, kj) of output (oh, ow), if inside the image.
    #[inline(always)]
    fn src(&self, ki: usize, kj: usize, oh: usize, ow: usize) -> Option<(usize, usize)> {
        let r = (oh * self.o.stride.0 + ki * self.o.dilation.0).checked_sub(self.o.padding.0)?;
        let c = (ow * self.o.stride.1 + kj * self.o.dilation.1).checked_sub(self.o.padding.1)?;
        (r < self.h && c < self.w).then_some((r, c))
    }
}

/// x [N, C, H, W] → columns [C·kh·kw, N·Ho·Wo]: row (c, ki, kj), column (n, oh, ow).
struct Im2col(Geometry);

impl LinearMap for Im2col {
    fn names(&self) -> (&'static str, &'static str) {
        ("im2col", "col2im")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.0;
        let (l, cols) = (g.ho * g.wo, g.n * g.ho * g.wo);
        with_float!("im2col", x.dtype(), T => {
            let src = x.as_slice::<T>()?;
            let mut out = vec![0.0 as T; g.c * g.kh * g.kw * cols];
            if cols > 0 {
                out.par_chunks_mut(cols).enumerate().for_each(|(row, dst)| {
                    let (c, ki, kj) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
                    for q in 0..cols {
                        let (n, oh, ow) = (q / l, q % l / g.wo, q % g.wo);
                        if let Some((r, cc)) = g.src(ki, kj, oh, ow) {
                            dst[q] = src[((n * g.c + c) * g.h + r) * g.w + cc];
                        }
                    }
                });
            }
            Tensor::from_vec(out, [g.c * g.kh * g.kw, cols])
        })
    }
    fn apply_adjoint(&self, cols_t: &Tensor) -> Result<Tensor> {
        let g = self.0;
        let (l, cols) = (g.ho * g.wo, g.n * g.ho * g.wo);
        with_float!("col2im", cols_t.dtype(), T => {
            let src = cols_t.as_slice::<T>()?;
            let mut out = vec![0.0 as T; g.n * g.c * g.h * g.w];
            if g.h * g.w > 0 {
                out.par_chunks_mut(g.h * g.w).enumerate().for_each(|(plane, dst)| {
                    let (n, c) = (plane / g.c, plane % g.c);
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            let row = &src[((c * g.kh + ki) * g.kw + kj) * cols + n * l..][..l];
                            for oh in 0..g.ho {
                                for ow in 0..g.wo {
                                    if let Some((r, cc)) = g.src(ki, kj, oh, ow) {
                                        dst[r * g.w + cc] += row[oh * g.wo + ow];
                                    }
                                }
                            }
                        }
                    }
                });
            }
            Tensor::from_vec(out, [g.n, g.c, g.h, g.w])
        })
    }
}

/// Average over kh×kw windows (padding counts as zeros in the average: divisor kh·kw).
struct AvgPool(Geometry);

impl LinearMap for AvgPool {
    fn names(&self) -> (&'static str, &'static str) {
        ("avg_pool2d", "avg_pool2d_adjoint")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.0;
        let inv = 1.0 / (g.kh * g.kw) as f64;
        with_float!("avg_pool2d", x.dtype(), T => {
            let src = x.as_slice::<T>()?;
            let mut out = vec![0.0 as T; g.n * g.c * g.ho * g.wo];
            if g.ho * g.wo > 0 {
                out.par_chunks_mut(g.ho * g.wo).enumerate().for_each(|(plane, dst)| {
                    let s = &src[plane * g.h * g.w..(plane + 1) * g.h * g.w];
                    for oh in 0..g.ho {
                        for ow in 0..g.wo {
                            let mut acc = 0.0 as T;
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    if let Some((r, c)) = g.src(ki, kj, oh, ow) {
                                        acc += s[r * g.w + c];
                                    }
                                }
                            }
                            dst[oh * g.wo + ow] = acc * inv as T;
                        }
                    }
                });
            }
            Tensor::from_vec(out, [g.n, g.c, g.ho, g.wo])
        })
    }
    fn apply_adjoint(&self, gt: &Tensor) -> Result<Tensor> {
        let g = self.0;
        let inv = 1.0 / (g.kh * g.kw) as f64;
        with_float!("avg_pool2d_adjoint", gt.dtype(), T => {
            let src = gt.as_slice::<T>()?;
            let mut out = vec![0.0 as T; g.n * g.c * g.h * g.w];
            if g.h * g.w > 0 {
                out.par_chunks_mut(g.h * g.w).enumerate().for_each(|(plane, dst)| {
                    let s = &src[plane * g.ho * g.wo..(plane + 1) * g.ho * g.wo];
                    for oh in 0..g.ho {
                        for ow in 0..g.wo {
                            let v = s[oh * g.wo + ow] * inv as T;
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    if let Some((r, c)) = g.src(ki, kj, oh, ow) {
                                        dst[r * g.w + c] += v;
                                    }
                                }
                            }
                        }
                    }
                });
            }
            Tensor::from_vec(out, [g.n, g.c, g.h, g.w])
        })
    }
}

impl Var {
    /// 2-D convolution (cross-correlation, as in PyTorch) of x [N, C, H, W] with weights [O, C, kh, kw]
    /// and an optional bias `[O]`; groups = 1. Output [N, O, Ho, Wo].
    pub fn conv2d(&self, weight: &Var, bias: Option<&Var>, opts: Conv2dOpts) -> Result<Var> {
        super::same_dtype("conv2d", self, weight)?;
        if let Some(b) = bias {
            super::same_dtype("conv2d", self, b)?;
        }
        let wd = weight.dims();
        if wd.len() != 4 || self.shape().rank() != 4 || wd[1] != self.dims()[1] {
            return shape_err(
                "conv2d",
                format!("input {} and weight {} must be [N, C, H, W] and [O, C, kh, kw]", self.shape(), weight.shape()),
            );
        }
        let g = Geometry::new("conv2d", self.dims(), wd[2], wd[3], opts)?;
        let cols = linear(self, Rc::new(Im2col(g)), false)?;
        let y = weight.reshape([wd[0], g.c * g.kh * g.kw])?.matmul(&cols)?; // [O, N·Ho·Wo]
        let y = y.reshape([wd[0], g.n, g.ho, g.wo])?.permute(&[1, 0, 2, 3])?;
        match bias {
            None => Ok(y),
            Some(b) => {
                if b.dims() != [wd[0]] {
                    return shape_err("conv2d", format!("bias {} must have shape [{}]", b.shape(), wd[0]));
                }
                y.add(&b.reshape([1, wd[0], 1, 1])?)
            }
        }
    }

    /// Average pooling over kernel×kernel windows of x [N, C, H, W]. Padding counts as zeros in the
    /// average (the divisor is always kernel²).
    pub fn avg_pool2d(&self, kernel: (usize, usize), opts: Conv2dOpts) -> Result<Var> {
        let g = Geometry::new("avg_pool2d", self.dims(), kernel.0, kernel.1, opts)?;
        linear(self, Rc::new(AvgPool(g)), false)
    }
}
