//! [`CudaStorage`], a buffer on one CUDA device, and its [`Backend`] implementation: the host side of
//! every kernel in `kernels/*.cu` (checks, output allocation, launch configuration, argument lists).

use super::launch::{blocks_for, contiguous, kname, launch, launch3, strides, Arg, BLOCK};
use super::memory::{Buf, Gpu};
use crate::backend::spec::{
    coalesce, AttnShape, AxisView, Backend, BinaryOp, ConvMode, ConvShape, MatmulShape, Need, SoftmaxMode, UnaryOp, Update, WindowOp,
};
use crate::error::{shape_err, Error, Result};
use crate::{DType, Device};
use std::sync::Arc;

/// A buffer of `len` elements of `dtype` on a CUDA device, from its caching allocator.
pub(crate) struct CudaStorage {
    pub(crate) buf: Buf,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
}

impl CudaStorage {
    /// The device this buffer lives on.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.buf.gpu
    }

    /// The device pointer, as a kernel argument.
    pub(super) fn arg(&self) -> Arg {
        Arg::U(self.buf.ptr)
    }

    /// The device pointer `elems` elements in, as a kernel argument.
    pub(super) fn arg_at(&self, elems: usize) -> Arg {
        Arg::U(self.buf.ptr + (elems * self.dtype.size_in_bytes()) as u64)
    }

    /// A new uninitialized buffer of `len` elements of `dtype` on `gpu`.
    pub(crate) fn empty(op: &'static str, gpu: &Arc<Gpu>, len: usize, dtype: DType) -> Result<CudaStorage> {
        let bytes = len.checked_mul(dtype.size_in_bytes()).ok_or_else(|| Error::oom(op, "a device buffer", None, gpu.device()))?;
        Ok(CudaStorage { buf: gpu.alloc(op, bytes)?, dtype, len })
    }

    /// A buffer like `self` (device, dtype) of `len` elements, uninitialized.
    pub(super) fn like(&self, op: &'static str, len: usize) -> Result<CudaStorage> {
        CudaStorage::empty(op, self.gpu(), len, self.dtype)
    }

    /// A zeroed buffer like `self` of `len` elements.
    pub(super) fn zeros_like(&self, op: &'static str, len: usize) -> Result<CudaStorage> {
        let t = self.like(op, len)?;
        if len > 0 {
            self.gpu().driver.memset_zero(t.buf.ptr, t.bytes())?;
        }
        Ok(t)
    }

    fn bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }

    /// Copies host bytes (of `len` elements of `dtype`) to a new buffer on `gpu`.
    pub(crate) fn upload(op: &'static str, gpu: &Arc<Gpu>, bytes: &[u8], dtype: DType) -> Result<CudaStorage> {
        let len = bytes.len() / dtype.size_in_bytes();
        let t = CudaStorage::empty(op, gpu, len, dtype)?;
        if !bytes.is_empty() {
            gpu.htod(t.buf.ptr, bytes)?;
        }
        Ok(t)
    }

    /// The bytes, copied to the host after all queued work.
    pub(crate) fn download(&self, op: &'static str) -> Result<Vec<u8>> {
        let mut out = crate::backend::cpu::pool::filled(op, self.bytes(), 0u8)?;
        if !out.is_empty() {
            self.gpu().dtoh(&mut out, self.buf.ptr)?;
        }
        Ok(out)
    }

    /// `len` copies of `value` in `dtype` (a compute dtype; the caller uploads storage-only ones).
    pub(crate) fn full(op: &'static str, gpu: &Arc<Gpu>, value: f64, len: usize, dtype: DType) -> Result<CudaStorage> {
        let t = CudaStorage::empty(op, gpu, len, dtype)?;
        if len > 0 {
            if value == 0.0 && value.is_sign_positive() {
                gpu.driver.memset_zero(t.buf.ptr, t.bytes())?;
            } else {
                launch(gpu, &kname(op, "fill", dtype)?, blocks_for(len), vec![t.arg(), Arg::U(len as u64), Arg::F(value)])?;
            }
        }
        Ok(t)
    }

    /// Copies `bytes` bytes at byte offset `off` of `src` into byte offset `at` of `self`.
    pub(crate) fn copy_bytes_from(&self, at: usize, src: &CudaStorage, off: usize, bytes: usize) -> Result<()> {
        if bytes > 0 {
            self.gpu().driver.dtod(self.buf.ptr + at as u64, src.buf.ptr + off as u64, bytes)?;
        }
        Ok(())
    }

    /// Checks that the buffer holds `want` elements.
    pub(super) fn fits(&self, op: &'static str, what: &str, want: Option<usize>) -> Result<()> {
        if want != Some(self.len) {
            return shape_err(op, format!("{what} holds {} elements but its shape needs {want:?}", self.len));
        }
        Ok(())
    }

    /// Uploads indices as u64.
    fn upload_index(&self, op: &'static str, idx: &[usize]) -> Result<Buf> {
        let v: Vec<u64> = idx.iter().map(|&i| i as u64).collect();
        let b = self.gpu().alloc(op, v.len().max(1) * 8)?;
        if !v.is_empty() {
            self.gpu().htod(b.ptr, bytemuck::cast_slice(&v))?;
        }
        Ok(b)
    }
}

/// The op's code in `UnaryOp` (kernels/elementwise.cu) and its scalar parameters.
fn unary_code(f: UnaryOp) -> (i32, f64, f64) {
    match f {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Tanh => (3, 0.0, 0.0),
        UnaryOp::Sigmoid => (4, 0.0, 0.0),
        UnaryOp::Relu => (5, 0.0, 0.0),
        UnaryOp::Sqrt => (6, 0.0, 0.0),
        UnaryOp::Rsqrt => (7, 0.0, 0.0),
        UnaryOp::Abs => (8, 0.0, 0.0),
        UnaryOp::Square => (9, 0.0, 0.0),
        UnaryOp::Erf => (10, 0.0, 0.0),
        UnaryOp::Powf(p) => (11, p, 0.0),
        UnaryOp::Clamp(lo, hi) => (12, lo, hi),
        UnaryOp::Affine(a, b) => (13, a, b),
        UnaryOp::Step => (14, 0.0, 0.0),
        UnaryOp::Sign => (15, 0.0, 0.0),
        UnaryOp::InRange(lo, hi) => (16, lo, hi),
        UnaryOp::Sin => (17, 0.0, 0.0),
        UnaryOp::Cos => (18, 0.0, 0.0),
        UnaryOp::NonZero => (19, 0.0, 0.0),
        UnaryOp::Gelu => (20, 0.0, 0.0),
        UnaryOp::GeluGrad => (21, 0.0, 0.0),
    }
}

fn count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b))
}

/// Most operand pairs one `conv_gemm` launch sums (`MG_MAX_PAIRS`).
const MAX_PAIRS: usize = 4;

impl Backend for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> Device {
        self.gpu().device()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn unary(&self, op: &'static str, f: UnaryOp) -> Result<Self> {
        let (code, p, q) = unary_code(f);
        let t = self.like(op, self.len)?;
        if self.len > 0 {
            let args = vec![t.arg(), self.arg(), Arg::U(self.len as u64), Arg::I(code), Arg::F(p), Arg::F(q)];
            launch(self.gpu(), &kname(op, "unary", self.dtype)?, blocks_for(self.len), args)?;
        }
        Ok(t)
    }

    fn binary(&self, op: &'static str, ad: &[usize], rhs: &Self, bd: &[usize], out: &[usize], f: BinaryOp) -> Result<Self> {
        self.fits(op, "the left operand", count(ad))?;
        rhs.fits(op, "the right operand", count(bd))?;
        let n = count(out).ok_or_else(|| Error::oom(op, "the result", None, self.device()))?;
        let t = self.like(op, n)?;
        if n > 0 {
            let s = if ad == out && bd == out {
                strides(op, &[], &[], &[])?
            } else {
                let sa = crate::backend::spec::broadcast_strides(ad, out);
                let sb = crate::backend::spec::broadcast_strides(bd, out);
                strides(op, out, &sa, &sb)?
            };
            let code = f as i32;
            launch(
                self.gpu(),
                &kname(op, "binary", self.dtype)?,
                blocks_for(n),
                vec![t.arg(), self.arg(), rhs.arg(), Arg::U(n as u64), Arg::I(code), s],
            )?;
        }
        Ok(t)
    }

    fn sum_axis(&self, op: &'static str, v: AxisView) -> Result<Self> {
        self.fits(op, "the input", v.len())?;
        let t = self.like(op, v.outer * v.inner)?;
        if t.len > 0 {
            let args = vec![t.arg(), self.arg(), Arg::U(v.outer as u64), Arg::U(v.n as u64), Arg::U(v.inner as u64)];
            launch(self.gpu(), &kname(op, "sum_axis", self.dtype)?, t.len as u64, args)?;
        }
        Ok(t)
    }

    fn max_axis(&self, op: &'static str, v: AxisView) -> Result<(Self, Self)> {
        self.fits(op, "the input", v.len())?;
        let (vals, mask) = (self.like(op, v.outer * v.inner)?, self.like(op, self.len)?);
        if vals.len > 0 {
            let args = vec![vals.arg(), mask.arg(), self.arg(), Arg::U(v.outer as u64), Arg::U(v.n as u64), Arg::U(v.inner as u64)];
            launch(self.gpu(), &kname(op, "max_axis", self.dtype)?, vals.len as u64, args)?;
        }
        Ok((vals, mask))
    }

    fn softmax_axis(&self, op: &'static str, v: AxisView, mode: SoftmaxMode) -> Result<Self> {
        self.fits(op, "the input", v.len())?;
        let t = self.like(op, if mode == SoftmaxMode::LogSumExp { v.outer * v.inner } else { self.len })?;
        if v.outer * v.inner > 0 {
            let args = vec![t.arg(), self.arg(), Arg::U(v.outer as u64), Arg::U(v.n as u64), Arg::U(v.inner as u64), Arg::I(mode as i32)];
            launch(self.gpu(), &kname(op, "softmax_axis", self.dtype)?, (v.outer * v.inner) as u64, args)?;
        }
        Ok(t)
    }

    fn matmul(&self, op: &'static str, rhs: &Self, s: MatmulShape) -> Result<Self> {
        let MatmulShape { batches, m, k, n, ta, tb } = s;
        self.fits(op, "the left operand", count(&[batches, m, k]))?;
        rhs.fits(op, "the right operand", count(&[batches, k, n]))?;
        let t = self.like(op, count(&[batches, m, n]).ok_or_else(|| Error::oom(op, "the product", None, self.device()))?)?;
        if t.len == 0 {
            return Ok(t);
        }
        if k == 0 {
            self.gpu().driver.memset_zero(t.buf.ptr, t.bytes())?;
            return Ok(t);
        }
        if batches > 65535 || n.div_ceil(64) > u32::MAX as usize || m.div_ceil(64) > 65535 {
            return shape_err(op, format!("the CUDA matmul handles at most 65535 batches and row tiles, got {batches} of {m}x{n}"));
        }
        let grid = [n.div_ceil(64) as u32, m.div_ceil(64) as u32, batches as u32];
        let mut args = vec![
            t.arg(),
            self.arg(),
            rhs.arg(),
            Arg::U(m as u64),
            Arg::U(k as u64),
            Arg::U(n as u64),
            Arg::I(ta as i32),
            Arg::I(tb as i32),
        ];
        launch3(self.gpu(), &kname(op, "matmul", self.dtype)?, grid, [BLOCK, 1, 1], &mut args)?;
        Ok(t)
    }

    fn copy_strided(&self, op: &'static str, dims: &[usize], src_strides: &[usize], offset: usize) -> Result<Self> {
        let n = count(dims).ok_or_else(|| Error::oom(op, "a copy", None, self.device()))?;
        let t = self.like(op, n)?;
        if n > 0 {
            let (d, s) = coalesce(dims, src_strides);
            let args = vec![t.arg(), Arg::U(0), self.arg(), Arg::U(offset as u64), Arg::U(n as u64), strides(op, &d, &contiguous(&d), &s)?];
            launch(self.gpu(), &kname(op, "copy", self.dtype)?, blocks_for(n), args)?;
        }
        Ok(t)
    }

    fn place_strided(&self, op: &'static str, len: usize, dims: &[usize], dst_strides: &[usize], offset: usize) -> Result<Self> {
        self.fits(op, "the input", count(dims))?;
        let t = self.zeros_like(op, len)?;
        if self.len > 0 {
            let (d, s) = coalesce(dims, dst_strides);
            let args =
                vec![t.arg(), Arg::U(offset as u64), self.arg(), Arg::U(0), Arg::U(self.len as u64), strides(op, &d, &s, &contiguous(&d))?];
            launch(self.gpu(), &kname(op, "copy", self.dtype)?, blocks_for(self.len), args)?;
        }
        Ok(t)
    }

    fn concat(op: &'static str, parts: &[&Self], outer: usize, inner: usize) -> Result<Self> {
        let Some(first) = parts.first() else { return shape_err(op, "nothing to concatenate") };
        let total: usize = parts.iter().map(|p| p.len).sum();
        let t = first.like(op, total)?;
        let len = |p: &CudaStorage| p.len.checked_div(outer * inner).unwrap_or(0);
        let n: usize = parts.iter().map(|p| len(p)).sum();
        let mut off = 0;
        for p in parts {
            let l = len(p);
            let dims = [outer, l, inner];
            if outer * l * inner > 0 {
                let s = strides(op, &dims, &[n * inner, inner, 1], &contiguous(&dims))?;
                let args = vec![t.arg(), Arg::U((off * inner) as u64), p.arg(), Arg::U(0), Arg::U((outer * l * inner) as u64), s];
                launch(first.gpu(), &kname(op, "copy", first.dtype)?, blocks_for(outer * l * inner), args)?;
            }
            off += l;
        }
        Ok(t)
    }

    fn index_select(&self, op: &'static str, idx: &[usize], v: AxisView) -> Result<Self> {
        self.fits(op, "the input", v.len())?;
        self.index_kernel(op, "index_select", idx, v, idx.len(), v.outer * idx.len() * v.inner)
    }

    fn index_add(&self, op: &'static str, idx: &[usize], v: AxisView) -> Result<Self> {
        self.fits(op, "the input", count(&[v.outer, idx.len(), v.inner]))?;
        let t = self.like(op, v.outer * v.n * v.inner)?;
        if t.len > 0 {
            // CSR lists of the positions j of each row r (ascending), so each output sums in order.
            let mut start = vec![0usize; v.n + 1];
            for &r in idx {
                match start.get_mut(r + 1) {
                    Some(c) if r < v.n => *c += 1,
                    _ => return shape_err(op, format!("index {r} is out of range for an axis of size {}", v.n)),
                }
            }
            let mut run = 0;
            for c in start.iter_mut() {
                run += *c;
                *c = run;
            }
            // A stable counting sort: `list` holds each row's positions j in ascending order.
            let mut order: Vec<usize> = (0..idx.len()).collect();
            order.sort_by_key(|&j| idx.get(j).copied());
            let list = order;
            let (sb, lb) = (self.upload_index(op, &start)?, self.upload_index(op, &list)?);
            let args = vec![
                t.arg(),
                self.arg(),
                Arg::U(sb.ptr),
                Arg::U(lb.ptr),
                Arg::U(v.outer as u64),
                Arg::U(v.n as u64),
                Arg::U(idx.len() as u64),
                Arg::U(v.inner as u64),
            ];
            launch(self.gpu(), &kname(op, "index_add", self.dtype)?, blocks_for(t.len), args)?;
        }
        Ok(t)
    }

    fn gather(&self, op: &'static str, idx: &[usize], v: AxisView, m: usize) -> Result<Self> {
        self.fits(op, "the input", v.len())?;
        self.index_kernel(op, "gather", idx, v, m, v.outer * m * v.inner)
    }

    fn scatter_add(&self, op: &'static str, idx: &[usize], v: AxisView, m: usize) -> Result<Self> {
        self.fits(op, "the input", count(&[v.outer, m, v.inner]))?;
        self.index_kernel(op, "scatter_add", idx, v, m, v.outer * v.n * v.inner)
    }

    fn window(&self, op: &'static str, w: WindowOp, s: &ConvShape) -> Result<Self> {
        let m = |d: &[usize]| count(d).ok_or_else(|| Error::oom(op, "a window map", None, self.device()));
        let (image, cols, pooled) = (m(&[s.n, s.c, s.h, s.w])?, m(&[s.c, s.kh, s.kw, s.n, s.ho, s.wo])?, m(&[s.n, s.c, s.ho, s.wo])?);
        let (kernel, input, output, inv) = match w {
            WindowOp::Im2col => ("im2col", image, cols, None),
            WindowOp::Col2im => ("col2im", cols, image, None),
            WindowOp::AvgPool => ("avg_pool", image, pooled, Some(1.0 / (s.kh * s.kw) as f64)),
            WindowOp::AvgPoolAdjoint => ("avg_pool_adjoint", pooled, image, Some(1.0 / (s.kh * s.kw) as f64)),
        };
        self.fits(op, "the input", Some(input))?;
        let t = self.like(op, output)?;
        if output > 0 {
            let mut args = vec![t.arg(), self.arg(), Arg::S(geom(s).iter().map(|&v| v as i64).collect())];
            args.extend(inv.map(Arg::F));
            launch(self.gpu(), &kname(op, kernel, self.dtype)?, blocks_for(output), args)?;
        }
        Ok(t)
    }

    fn conv(op: &'static str, mode: ConvMode, s: &ConvShape, pairs: &[(&Self, &Self)]) -> Result<Self> {
        let Some(&(first, _)) = pairs.first() else { return shape_err(op, "a convolution of no operand pairs") };
        let (lx, lw, ly) = s.lens().ok_or_else(|| Error::oom(op, "a convolution", None, first.device()))?;
        let (la, lb, lout) = match mode {
            ConvMode::Forward => (lx, lw, ly),
            ConvMode::InputGrad => (ly, lw, lx),
            ConvMode::WeightGrad => (lx, ly, lw),
        };
        for (a, b) in pairs {
            a.fits(op, "a convolution operand", Some(la))?;
            b.fits(op, "a convolution operand", Some(lb))?;
        }
        if pairs.len() > MAX_PAIRS {
            // Several launches whose results are added in order.
            let (head, rest) = pairs.split_at(MAX_PAIRS);
            let mut acc = Self::conv(op, mode, s, head)?;
            for chunk in rest.chunks(MAX_PAIRS) {
                let d = [lout];
                acc = acc.binary(op, &d, &Self::conv(op, mode, s, chunk)?, &d, &d, BinaryOp::Add)?;
            }
            return Ok(acc);
        }
        let g = first.gpu();
        let (p, nhw, ckk) = (pairs.len(), s.n * s.ho * s.wo, s.c * s.kh * s.kw);
        // A weight gradient over an empty batch (or empty output image) sums nothing: zeros.
        if mode == ConvMode::WeightGrad && p * nhw == 0 {
            return first.zeros_like(op, lout);
        }
        let t = first.like(op, lout)?;
        if t.len == 0 {
            return Ok(t);
        }
        let mut words: Vec<i64> = geom(s).iter().map(|&v| v as i64).collect();
        words.extend([s.o as i64, pairs.len() as i64]);
        // MAX_PAIRS pointers of each side, unused ones 0.
        let side = |f: fn(&(&CudaStorage, &CudaStorage)) -> i64| pairs.iter().map(f).chain(std::iter::repeat(0)).take(MAX_PAIRS);
        words.extend(side(|(a, _)| a.buf.ptr as i64).chain(side(|(_, b)| b.buf.ptr as i64)).collect::<Vec<_>>());
        let name = kname(op, "conv_gemm", first.dtype)?;
        let tiles = |rows: usize, cols: usize| [cols.div_ceil(64) as u32, rows.div_ceil(64) as u32];
        match mode {
            ConvMode::Forward | ConvMode::InputGrad => {
                let [x, y] = if mode == ConvMode::Forward { tiles(s.o, nhw) } else { tiles(s.c, s.n * s.h * s.w) };
                launch3(g, &name, [x, y, 1], [BLOCK, 1, 1], &mut [t.arg(), Arg::S(words), Arg::I(mode as i32), Arg::U(0)])?;
            }
            ConvMode::WeightGrad => {
                // Split-K over the long (n, oh, ow) range: the chunk count depends on the shape only, so
                // the partial sums and their ascending-order reduction are the same on every run.
                let k = p * nhw;
                let splits = k.div_ceil(8192).clamp(1, 64);
                let chunk = k.div_ceil(splits).div_ceil(16) * 16;
                let splits = k.div_ceil(chunk);
                let part = first.like(op, splits * s.o * ckk)?;
                let [x, y] = tiles(s.o, ckk);
                launch3(g, &name, [x, y, splits as u32], [BLOCK, 1, 1], &mut [part.arg(), Arg::S(words), Arg::I(2), Arg::U(chunk as u64)])?;
                let args = vec![t.arg(), part.arg(), Arg::U(1), Arg::U(splits as u64), Arg::U((s.o * ckk) as u64)];
                launch(g, &kname(op, "sum_axis", first.dtype)?, (s.o * ckk) as u64, args)?;
            }
        }
        Ok(t)
    }

    fn supports_attention(g: &AttnShape) -> bool {
        super::attention::supports(g)
    }

    fn attention_forward(op: &'static str, g: &AttnShape, q: &Self, k: &Self, v: &Self) -> Result<(Self, Self)> {
        super::attention::forward(op, g, q, k, v)
    }

    fn attention_backward(op: &'static str, g: &AttnShape, qkv: [&Self; 3], saved: [&Self; 2], d_o: &Self, need: Need) -> Result<Self> {
        super::attention::backward(op, g, qkv, saved, d_o, need)
    }

    fn attention_backward_backward(
        op: &'static str,
        g: &AttnShape,
        qkv: [&Self; 3],
        saved: [&Self; 2],
        d_o: &Self,
        cot: &Self,
        need: Need,
    ) -> Result<Self> {
        super::attention::backward_backward(op, g, qkv, saved, d_o, cot, need)
    }

    fn update(op: &'static str, u: Update, tensors: &[&Self], hypers: &[&Self]) -> Result<Vec<Self>> {
        super::update::update(op, u, tensors, hypers)
    }

    fn cast(&self, op: &'static str, to: DType) -> Result<Self> {
        let name = match (self.dtype, to) {
            (DType::F32, DType::F64) => "cast_f32_f64",
            (DType::F64, DType::F32) => "cast_f64_f32",
            (DType::F32, DType::BF16) => "cast_f32_bf16",
            (DType::BF16, DType::F32) => "cast_bf16_f32",
            (from, to) => {
                return Err(Error::DType {
                    op,
                    msg: format!("no device kernel casts {from} to {to}; the storage layer goes through the host"),
                })
            }
        };
        let t = CudaStorage::empty(op, self.gpu(), self.len, to)?;
        if self.len > 0 {
            launch(self.gpu(), name, blocks_for(self.len), vec![t.arg(), self.arg(), Arg::U(self.len as u64)])?;
        }
        Ok(t)
    }

    fn all_finite(&self, op: &'static str) -> Result<bool> {
        all_finite_many(op, &[self])
    }
}

impl CudaStorage {
    /// index_select, gather or scatter_add: one thread per output element of `out_len`.
    fn index_kernel(&self, op: &'static str, kernel: &str, idx: &[usize], v: AxisView, m: usize, out_len: usize) -> Result<Self> {
        if let Some(&bad) = idx.iter().find(|&&i| i >= v.n) {
            return shape_err(op, format!("index {bad} is out of range for an axis of size {}", v.n));
        }
        let t = self.like(op, out_len)?;
        if out_len > 0 {
            let ib = self.upload_index(op, idx)?;
            let args = vec![
                t.arg(),
                self.arg(),
                Arg::U(ib.ptr),
                Arg::U(v.outer as u64),
                Arg::U(v.n as u64),
                Arg::U(m as u64),
                Arg::U(v.inner as u64),
            ];
            launch(self.gpu(), &kname(op, kernel, self.dtype)?, blocks_for(out_len), args)?;
        }
        Ok(t)
    }
}

/// The `Geom` struct of kernels/index.cu.
fn geom(s: &ConvShape) -> [usize; 14] {
    [s.n, s.c, s.h, s.w, s.kh, s.kw, s.ho, s.wo, s.stride.0, s.stride.1, s.padding.0, s.padding.1, s.dilation.0, s.dilation.1]
}

/// Whether no element of any of `xs` is NaN or infinite. Per device, one kernel per tensor adds its
/// count of non-finite elements into one device counter (stream order serializes them), and only that
/// counter is downloaded: one host synchronization per device, however many tensors.
pub(crate) fn all_finite_many(op: &'static str, xs: &[&CudaStorage]) -> Result<bool> {
    let mut groups: Vec<(&Arc<Gpu>, Vec<&CudaStorage>)> = Vec::new();
    for &x in xs {
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, x.gpu())) {
            Some((_, group)) => group.push(x),
            None => groups.push((x.gpu(), vec![x])),
        }
    }
    for (gpu, group) in groups {
        let count = CudaStorage::empty(op, gpu, 1, DType::F64)?; // 8 bytes for a u64
        for (i, x) in group.iter().enumerate() {
            // The first kernel writes the counter, the others add to it.
            let args = vec![count.arg(), x.arg(), Arg::U(x.len as u64), Arg::U(u64::from(i > 0))];
            launch(gpu, &kname(op, "count_nonfinite", x.dtype)?, 1, args)?;
        }
        let mut out = [0u8; 8];
        gpu.dtoh(&mut out, count.buf.ptr)?;
        if u64::from_le_bytes(out) != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}
