//! Host side of every CUDA kernel: checks, output allocation, launch configuration and argument lists.
//!
//! Each function mirrors a CPU kernel and takes and returns [`Tensor`]s on one CUDA device. Argument
//! lists follow the kernels' C signatures in `kernels/*.cu` exactly (pointers and sizes as 64-bit
//! integers, op codes as `int`, scalars as `double`, geometry as structs of 64-bit integers).

use super::{gpu, Buf, Gpu};
use crate::error::{shape_err, Error, Result};
use crate::tensor::Storage;
use crate::{DType, Device, Shape, Tensor};
use std::ffi::c_void;
use std::sync::Arc;

/// One kernel argument, by value.
pub(crate) enum Arg {
    /// A device pointer or a 64-bit size.
    U(u64),
    /// An `int` (op codes, flags).
    I(i32),
    /// A `double` scalar.
    F(f64),
    /// A struct of 64-bit integers (`Strides`, `Geom`).
    S(Vec<i64>),
}

/// Threads per block for element-wise kernels, and the fixed block size of the reductions.
const BLOCK: u32 = 256;
/// The most blocks a grid-stride launch uses (beyond this, threads loop).
const MAX_BLOCKS: u64 = 1 << 16;
/// Most dimensions a strided kernel handles (`MG_MAX_RANK` in kernels/common.cuh).
const MAX_RANK: usize = 8;

/// Launches `name` on `gpu` with a 1-D grid of `blocks` blocks (clamped to [1, MAX_BLOCKS]).
fn launch(gpu: &Gpu, name: &str, blocks: u64, mut args: Vec<Arg>) -> Result<()> {
    launch3(gpu, name, [blocks.clamp(1, MAX_BLOCKS) as u32, 1, 1], &mut args)
}

fn launch3(gpu: &Gpu, name: &str, grid: [u32; 3], args: &mut [Arg]) -> Result<()> {
    let mut params: Vec<*mut c_void> = args
        .iter_mut()
        .map(|a| match a {
            Arg::U(v) => v as *mut u64 as *mut c_void,
            Arg::I(v) => v as *mut i32 as *mut c_void,
            Arg::F(v) => v as *mut f64 as *mut c_void,
            Arg::S(v) => v.as_mut_ptr() as *mut c_void,
        })
        .collect();
    gpu.driver.launch(name, grid, [BLOCK, 1, 1], &mut params)
}

/// Blocks for one thread per element.
fn blocks_for(n: usize) -> u64 {
    (n as u64).div_ceil(BLOCK as u64)
}

/// `<base>_f32` or `<base>_f64`.
fn kname(op: &'static str, base: &str, dtype: DType) -> Result<String> {
    match dtype {
        DType::F32 => Ok(format!("{base}_f32")),
        DType::F64 => Ok(format!("{base}_f64")),
        d => Err(Error::DType { op, msg: format!("{d} is a storage-only dtype; convert to f32 or f64 with to_dtype first") }),
    }
}

/// The device buffer of a CUDA tensor (an error naming `op` for a CPU one).
pub(crate) fn buf<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a Buf> {
    match t.storage() {
        Storage::Cuda(b, _) => Ok(b),
        _ => Err(Error::Device { op, msg: format!("expected a CUDA tensor, got one on {}", t.device()) }),
    }
}

fn ptr(op: &'static str, t: &Tensor) -> Result<Arg> {
    Ok(Arg::U(buf(op, t)?.ptr))
}

/// A new uninitialized tensor on `g`.
fn empty(g: &Arc<Gpu>, shape: impl Into<Shape>, dtype: DType) -> Result<(Tensor, u64)> {
    let shape = shape.into();
    let b = g.alloc(shape.numel() * dtype.size_in_bytes())?;
    let p = b.ptr;
    Ok((Tensor::from_cuda(b, dtype, shape), p))
}

fn gpu_of(t: &Tensor) -> Result<Arc<Gpu>> {
    match t.device() {
        Device::Cuda(n) => gpu(n),
        d => Err(Error::Device { op: "cuda", msg: format!("expected a CUDA tensor, got one on {d}") }),
    }
}

/// Copies host bytes of `dtype` to a new tensor on `device`.
pub(crate) fn upload(bytes: &[u8], dtype: DType, shape: Shape, ordinal: usize) -> Result<Tensor> {
    let g = gpu(ordinal)?;
    let (t, p) = empty(&g, shape, dtype)?;
    if !bytes.is_empty() {
        g.driver.htod(p, bytes)?;
    }
    Ok(t)
}

/// The bytes of a CUDA tensor, copied to the host after all queued work.
pub(crate) fn download(t: &Tensor) -> Result<Vec<u8>> {
    let b = buf("to_device", t)?;
    let mut out = vec![0u8; t.size_in_bytes()];
    if !out.is_empty() {
        b.gpu.driver.dtoh(&mut out, b.ptr)?;
    }
    Ok(out)
}

/// A tensor of `value` on CUDA device `ordinal`.
pub(crate) fn full(value: f64, shape: Shape, dtype: DType, ordinal: usize) -> Result<Tensor> {
    let g = gpu(ordinal)?;
    if !dtype.is_compute() {
        return upload(Tensor::full(value, shape.clone(), dtype).as_bytes()?, dtype, shape, ordinal);
    }
    let n = shape.numel();
    let (t, p) = empty(&g, shape, dtype)?;
    if n > 0 {
        if value == 0.0 && value.is_sign_positive() {
            g.driver.memset_zero(p, n * dtype.size_in_bytes())?;
        } else {
            launch(&g, &kname("full", "fill", dtype)?, blocks_for(n), vec![Arg::U(p), Arg::U(n as u64), Arg::F(value)])?;
        }
    }
    Ok(t)
}

/// Converts between dtypes on the device: f32 ↔ f64 and f32 ↔ bf16 by kernels, anything else through
/// the host (bit-exact with the CPU conversion either way).
pub(crate) fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    let name = match (x.dtype(), to) {
        (DType::F32, DType::F64) => "cast_f32_f64",
        (DType::F64, DType::F32) => "cast_f64_f32",
        (DType::F32, DType::BF16) => "cast_f32_bf16",
        (DType::BF16, DType::F32) => "cast_bf16_f32",
        _ => {
            let host = x.to_device(Device::Cpu)?.to_dtype(to);
            return host.to_device(x.device());
        }
    };
    let g = gpu_of(x)?;
    let (t, p) = empty(&g, x.shape().clone(), to)?;
    if x.numel() > 0 {
        launch(&g, name, blocks_for(x.numel()), vec![Arg::U(p), ptr("to_dtype", x)?, Arg::U(x.numel() as u64)])?;
    }
    Ok(t)
}

/// The number of NaN or infinite elements.
pub(crate) fn count_nonfinite(x: &Tensor) -> Result<u64> {
    let g = gpu_of(x)?;
    let b = g.alloc(8)?;
    launch(
        &g,
        &kname("all_finite", "count_nonfinite", x.dtype())?,
        1,
        vec![Arg::U(b.ptr), ptr("all_finite", x)?, Arg::U(x.numel() as u64)],
    )?;
    let mut out = [0u8; 8];
    g.driver.dtoh(&mut out, b.ptr)?;
    Ok(u64::from_le_bytes(out))
}

/// Unary op `code` (its index in `UnaryOp`, kernels/elementwise.cu) element-wise, with the op's scalar
/// parameters `p`, `q`.
pub(crate) fn unary(op: &'static str, x: &Tensor, code: i32, p: f64, q: f64) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let n = x.numel();
    let (t, o) = empty(&g, x.shape().clone(), x.dtype())?;
    if n > 0 {
        let args = vec![Arg::U(o), ptr(op, x)?, Arg::U(n as u64), Arg::I(code), Arg::F(p), Arg::F(q)];
        launch(&g, &kname(op, "unary", x.dtype())?, blocks_for(n), args)?;
    }
    Ok(t)
}

/// The `Strides` struct of kernels/common.cuh: `dims`, and the strides of two operands.
fn strides(op: &'static str, dims: &[usize], sa: &[usize], sb: &[usize]) -> Result<Arg> {
    if dims.len() > MAX_RANK {
        return shape_err(op, format!("the CUDA backend supports at most {MAX_RANK} dimensions, got shape {dims:?}"));
    }
    let mut w = vec![0i64; 1 + 3 * MAX_RANK];
    w[0] = dims.len() as i64;
    for (d, ((&n, &a), &b)) in dims.iter().zip(sa).zip(sb).enumerate() {
        (w[1 + d], w[1 + MAX_RANK + d], w[1 + 2 * MAX_RANK + d]) = (n as i64, a as i64, b as i64);
    }
    Ok(Arg::S(w))
}

/// `a ∘ b` element-wise with broadcasting to `out`; `code` is the index of the op in `BinaryOp`.
pub(crate) fn binary(op: &'static str, a: &Tensor, b: &Tensor, out: &Shape, code: i32) -> Result<Tensor> {
    let g = gpu_of(a)?;
    let n = out.numel();
    let (t, o) = empty(&g, out.clone(), a.dtype())?;
    if n > 0 {
        let s = if a.dims() == out.dims() && b.dims() == out.dims() {
            strides(op, &[], &[], &[])?
        } else {
            let sa = crate::backend::cpu::broadcast_strides(a.dims(), out.dims());
            let sb = crate::backend::cpu::broadcast_strides(b.dims(), out.dims());
            strides(op, out.dims(), &sa, &sb)?
        };
        launch(
            &g,
            &kname(op, "binary", a.dtype())?,
            blocks_for(n),
            vec![Arg::U(o), ptr(op, a)?, ptr(op, b)?, Arg::U(n as u64), Arg::I(code), s],
        )?;
    }
    Ok(t)
}

/// For every index k of `dims`: dst[off_dst + k·dst_strides] = src[off_src + k·src_strides].
#[allow(clippy::too_many_arguments)]
fn copy_into(
    op: &'static str,
    dst: u64,
    off_dst: usize,
    src: &Tensor,
    off_src: usize,
    dims: &[usize],
    sd: &[usize],
    ss: &[usize],
) -> Result<()> {
    let n: usize = dims.iter().product();
    if n == 0 {
        return Ok(());
    }
    let g = gpu_of(src)?;
    let args =
        vec![Arg::U(dst), Arg::U(off_dst as u64), ptr(op, src)?, Arg::U(off_src as u64), Arg::U(n as u64), strides(op, dims, sd, ss)?];
    launch(&g, &kname(op, "copy", src.dtype())?, blocks_for(n), args)
}

/// Output axis i is input axis perm[i].
pub(crate) fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let od: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
    let is = x.shape().strides();
    let ps: Vec<usize> = perm.iter().map(|&p| is[p]).collect();
    let (t, o) = empty(&gpu_of(x)?, od.clone(), x.dtype())?;
    copy_into("permute", o, 0, x, 0, &od, &Shape::new(od.clone()).strides(), &ps)?;
    Ok(t)
}

/// Broadcasts `x` to `to` (NumPy rules).
pub(crate) fn broadcast_to(x: &Tensor, to: &Shape) -> Result<Tensor> {
    let (t, o) = empty(&gpu_of(x)?, to.clone(), x.dtype())?;
    copy_into("broadcast_to", o, 0, x, 0, to.dims(), &to.strides(), &crate::backend::cpu::broadcast_strides(x.dims(), to.dims()))?;
    Ok(t)
}

/// Copies the (outer, len, inner) block of `x` starting at `start` of its middle axis (size n) when
/// `to_narrow`, or writes `x` (outer, len, inner) into a zeroed (outer, n, inner) at `start` otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn narrow_or_pad(
    x: &Tensor,
    outer: usize,
    n: usize,
    inner: usize,
    start: usize,
    len: usize,
    to_narrow: bool,
    od: Vec<usize>,
) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let (t, o) = empty(&g, od, x.dtype())?;
    let dims = [outer, len, inner];
    let (small, big) = (Shape::new(dims).strides(), [n * inner, inner, 1]);
    if to_narrow {
        copy_into("narrow", o, 0, x, start * inner, &dims, &small, &big)?;
    } else {
        if t.numel() > 0 {
            g.driver.memset_zero(o, t.size_in_bytes())?;
        }
        copy_into("pad", o, start * inner, x, 0, &dims, &big, &small)?;
    }
    Ok(t)
}

/// Concatenates `parts` along the middle axis of (outer, ·, inner) views into `out`.
pub(crate) fn concat(parts: &[&Tensor], outer: usize, inner: usize, out: Shape) -> Result<Tensor> {
    let (t, o) = empty(&gpu_of(parts[0])?, out.clone(), parts[0].dtype())?;
    let len = |p: &Tensor| p.numel().checked_div(outer * inner).unwrap_or(0);
    let n: usize = parts.iter().map(|p| len(p)).sum();
    let mut off = 0;
    for p in parts {
        let l = len(p);
        let dims = [outer, l, inner];
        copy_into("concat", o, off * inner, p, 0, &dims, &[n * inner, inner, 1], &Shape::new(dims).strides())?;
        off += l;
    }
    Ok(t)
}

/// Σ over the middle axis of (outer, n, inner): a flat tensor of outer·inner elements.
pub(crate) fn sum_axis(x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let (t, o) = empty(&g, [outer * inner], x.dtype())?;
    if outer * inner > 0 {
        let args = vec![Arg::U(o), ptr("sum", x)?, Arg::U(outer as u64), Arg::U(n as u64), Arg::U(inner as u64)];
        launch(&g, &kname("sum", "sum_axis", x.dtype())?, (outer * inner) as u64, args)?;
    }
    Ok(t)
}

/// Max over the middle axis of (outer, n ≥ 1, inner): the values (outer·inner) and the one-hot mask of
/// the first maximum (x's shape).
pub(crate) fn max_axis(x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<(Tensor, Tensor)> {
    let g = gpu_of(x)?;
    let (vals, v) = empty(&g, [outer * inner], x.dtype())?;
    let (mask, m) = empty(&g, x.shape().clone(), x.dtype())?;
    if outer * inner > 0 {
        let args = vec![Arg::U(v), Arg::U(m), ptr("max", x)?, Arg::U(outer as u64), Arg::U(n as u64), Arg::U(inner as u64)];
        launch(&g, &kname("max", "max_axis", x.dtype())?, (outer * inner) as u64, args)?;
    }
    Ok((vals, mask))
}

/// softmax (mode 0), log_softmax (1) or logsumexp (2, flat outer·inner) over the middle axis.
pub(crate) fn softmax_axis(op: &'static str, x: &Tensor, outer: usize, n: usize, inner: usize, mode: u8) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let shape = if mode == 2 { Shape::new([outer * inner]) } else { x.shape().clone() };
    let (t, o) = empty(&g, shape, x.dtype())?;
    if outer * inner > 0 {
        let args = vec![Arg::U(o), ptr(op, x)?, Arg::U(outer as u64), Arg::U(n as u64), Arg::U(inner as u64), Arg::I(mode as i32)];
        launch(&g, &kname(op, "softmax_axis", x.dtype())?, (outer * inner) as u64, args)?;
    }
    Ok(t)
}

/// `batches` products op(a)·op(b) of m×k by k×n (see kernels/matmul.cu), output dims `od`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    a: &Tensor,
    b: &Tensor,
    batches: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    od: Vec<usize>,
) -> Result<Tensor> {
    let g = gpu_of(a)?;
    let (t, o) = empty(&g, od, a.dtype())?;
    if batches * m * n == 0 {
        return Ok(t);
    }
    if k == 0 {
        g.driver.memset_zero(o, t.size_in_bytes())?;
        return Ok(t);
    }
    if batches > 65535 {
        return shape_err("matmul", format!("the CUDA kernel handles at most 65535 batched products, got {batches}"));
    }
    let grid = [n.div_ceil(64) as u32, m.div_ceil(64) as u32, batches as u32];
    let mut args = vec![
        Arg::U(o),
        ptr("matmul", a)?,
        ptr("matmul", b)?,
        Arg::U(m as u64),
        Arg::U(k as u64),
        Arg::U(n as u64),
        Arg::I(ta as i32),
        Arg::I(tb as i32),
    ];
    launch3(&g, &kname("matmul", "matmul", a.dtype())?, grid, &mut args)?;
    Ok(t)
}

/// Uploads indices as u64.
fn upload_index(g: &Arc<Gpu>, idx: &[usize]) -> Result<Buf> {
    let b = g.alloc(idx.len().max(1) * 8)?;
    let v: Vec<u64> = idx.iter().map(|&i| i as u64).collect();
    if !v.is_empty() {
        g.driver.htod(b.ptr, bytemuck::cast_slice(&v))?;
    }
    Ok(b)
}

/// The index kernels: `index_select`, `gather` (forward) and `scatter_add` over (outer, ·, inner) views;
/// `x` is (outer, n_in, inner), the result (outer, n_out, inner) with dims `od`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn index_op(
    op: &'static str,
    kernel: &str,
    x: &Tensor,
    idx: &[usize],
    outer: usize,
    n: usize,
    m: usize,
    inner: usize,
    od: Shape,
) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let (t, o) = empty(&g, od, x.dtype())?;
    if t.numel() > 0 {
        let ib = upload_index(&g, idx)?;
        let args =
            vec![Arg::U(o), ptr(op, x)?, Arg::U(ib.ptr), Arg::U(outer as u64), Arg::U(n as u64), Arg::U(m as u64), Arg::U(inner as u64)];
        launch(&g, &kname(op, kernel, x.dtype())?, blocks_for(t.numel()), args)?;
    }
    Ok(t)
}

/// The adjoint of index_select: out (outer, n, inner) sums g (outer, m, inner) rows j with idx[j] = r,
/// in ascending j (CSR lists built here).
pub(crate) fn index_add(gr: &Tensor, idx: &[usize], outer: usize, n: usize, inner: usize, od: Shape) -> Result<Tensor> {
    let g = gpu_of(gr)?;
    let (t, o) = empty(&g, od, gr.dtype())?;
    if t.numel() > 0 {
        let mut start = vec![0usize; n + 1];
        idx.iter().for_each(|&r| start[r + 1] += 1);
        (0..n).for_each(|r| start[r + 1] += start[r]);
        let mut fill = start.clone();
        let mut list = vec![0usize; idx.len()];
        for (j, &r) in idx.iter().enumerate() {
            list[fill[r]] = j;
            fill[r] += 1;
        }
        let (sb, lb) = (upload_index(&g, &start)?, upload_index(&g, &list)?);
        let args = vec![
            Arg::U(o),
            ptr("index_add", gr)?,
            Arg::U(sb.ptr),
            Arg::U(lb.ptr),
            Arg::U(outer as u64),
            Arg::U(n as u64),
            Arg::U(idx.len() as u64),
            Arg::U(inner as u64),
        ];
        launch(&g, &kname("index_add", "index_add", gr.dtype())?, blocks_for(t.numel()), args)?;
    }
    Ok(t)
}

/// The window kernels (`im2col`, `col2im`, `avg_pool`, `avg_pool_adjoint`): `geom` is the `Geom` struct
/// of kernels/index.cu, `inv` the averaging factor (unused by im2col/col2im), the output has `od`.
pub(crate) fn window_op(op: &'static str, kernel: &str, x: &Tensor, geom: [usize; 14], inv: Option<f64>, od: Shape) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let (t, o) = empty(&g, od, x.dtype())?;
    if t.numel() > 0 {
        let mut args = vec![Arg::U(o), ptr(op, x)?, Arg::S(geom.iter().map(|&v| v as i64).collect())];
        args.extend(inv.map(Arg::F));
        launch(&g, &kname(op, kernel, x.dtype())?, blocks_for(t.numel()), args)?;
    }
    Ok(t)
}

/// A raw buffer of `bytes` bytes on CUDA device `ordinal` (the REPLAY arena's backing).
pub(crate) fn alloc_raw(ordinal: usize, bytes: usize) -> Result<Buf> {
    gpu(ordinal)?.alloc(bytes)
}

/// Copies the CUDA tensor `t` into `dst` at byte offset `off`.
pub(crate) fn copy_to_buf(dst: &Buf, off: usize, t: &Tensor) -> Result<()> {
    let src = buf("Arena::store", t)?;
    if t.size_in_bytes() > 0 {
        dst.gpu.driver.dtod(dst.ptr + off as u64, src.ptr, t.size_in_bytes())?;
    }
    Ok(())
}

/// A new tensor copied from `src` at byte offset `off`.
pub(crate) fn tensor_from_buf(src: &Buf, off: usize, dtype: DType, shape: Shape) -> Result<Tensor> {
    let (t, p) = empty(&src.gpu, shape, dtype)?;
    if t.size_in_bytes() > 0 {
        src.gpu.driver.dtod(p, src.ptr + off as u64, t.size_in_bytes())?;
    }
    Ok(t)
}

/// Which convolution a [`conv`] call computes (the `mode` of `conv_gemm` in kernels/gemm.cu).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvMode {
    /// y = Σ conv(x_p, w_p); pairs are (x, w).
    Forward = 0,
    /// x = Σ conv_transpose(y_p, w_p); pairs are (y, w).
    InputGrad = 1,
    /// w = Σ correlate(x_p, y_p); pairs are (x, y).
    WeightGrad = 2,
}

/// Most operand pairs one `conv_gemm` launch sums (`MG_MAX_PAIRS`).
const MAX_PAIRS: usize = 4;

/// The implicit-GEMM convolutions of the fused conv nodes: the sum over `pairs` of one convolution of
/// geometry `s`, with output shape `od`. More than four pairs run as several launches whose results
/// are added in order.
pub(crate) fn conv(mode: ConvMode, s: &crate::backend::cpu::conv::ConvShape, pairs: &[(&Tensor, &Tensor)], od: Shape) -> Result<Tensor> {
    const OP: &str = "conv2d";
    if pairs.len() > MAX_PAIRS {
        let mut acc = conv(mode, s, &pairs[..MAX_PAIRS], od.clone())?;
        for chunk in pairs[MAX_PAIRS..].chunks(MAX_PAIRS) {
            acc = binary(OP, &acc, &conv(mode, s, chunk, od.clone())?, &od, 0)?;
        }
        return Ok(acc);
    }
    let first = pairs[0].0;
    let g = gpu_of(first)?;
    let (t, out) = empty(&g, od, first.dtype())?;
    if t.numel() == 0 {
        return Ok(t);
    }
    let geom = [s.n, s.c, s.h, s.w, s.kh, s.kw, s.ho, s.wo, s.stride.0, s.stride.1, s.padding.0, s.padding.1, s.dilation.0, s.dilation.1];
    let mut words: Vec<i64> = geom.iter().map(|&v| v as i64).collect();
    words.extend([s.o as i64, pairs.len() as i64]);
    let mut ptrs = [[0i64; MAX_PAIRS]; 2];
    for (p, (a, b)) in pairs.iter().enumerate() {
        ptrs[0][p] = buf(OP, a)?.ptr as i64;
        ptrs[1][p] = buf(OP, b)?.ptr as i64;
    }
    words.extend(ptrs.concat());
    let name = kname(OP, "conv_gemm", first.dtype())?;
    let tiles = |rows: usize, cols: usize| [cols.div_ceil(64) as u32, rows.div_ceil(64) as u32];
    let (p, nhw, ckk) = (pairs.len(), s.n * s.ho * s.wo, s.c * s.kh * s.kw);
    match mode {
        ConvMode::Forward | ConvMode::InputGrad => {
            let [x, y] = if mode == ConvMode::Forward { tiles(s.o, nhw) } else { tiles(s.c, s.n * s.h * s.w) };
            launch3(&g, &name, [x, y, 1], &mut [Arg::U(out), Arg::S(words), Arg::I(mode as i32), Arg::U(0)])
        }
        ConvMode::WeightGrad => {
            // Split-K over the long (n, oh, ow) range: the chunk count depends on the shape only, so the
            // partial sums and their ascending-order reduction are the same on every run.
            let k = p * nhw;
            let splits = k.div_ceil(8192).clamp(1, 64);
            let chunk = k.div_ceil(splits).div_ceil(16) * 16;
            let splits = k.div_ceil(chunk);
            let part = g.alloc(splits * s.o * ckk * first.dtype().size_in_bytes())?;
            let [x, y] = tiles(s.o, ckk);
            launch3(&g, &name, [x, y, splits as u32], &mut [Arg::U(part.ptr), Arg::S(words), Arg::I(2), Arg::U(chunk as u64)])?;
            let args = vec![Arg::U(out), Arg::U(part.ptr), Arg::U(1), Arg::U(splits as u64), Arg::U((s.o * ckk) as u64)];
            launch(&g, &kname(OP, "sum_axis", first.dtype())?, (s.o * ckk) as u64, args)
        }
    }?;
    Ok(t)
}

/// The fused attention kernels (kernels/attention.cu) handle widths up to this.
pub(crate) const ATTENTION_MAX_WIDTH: usize = 128;

/// The `Attn` struct of kernels/attention.cu.
struct AttnArgs<'a> {
    g: crate::backend::cpu::attention::Geometry,
    need: crate::backend::cpu::attention::Need,
    inputs: [Option<&'a Tensor>; 8], // q, k, v, lse, d_o, a, b, e
    stats: [u64; 3],                 // D, D̄, ρ
    outs: [u64; 4],                  // q, k, v, o
}

impl AttnArgs<'_> {
    fn words(&self) -> Result<Arg> {
        let g = &self.g;
        let mut w = vec![g.heads, g.nq, g.nk, g.d, g.dv].into_iter().map(|v| v as i64).collect::<Vec<_>>();
        w.extend([g.scale.to_bits() as i64, g.causal as i64, self.need.q as i64, self.need.kv as i64, self.need.d_o as i64]);
        for t in self.inputs {
            w.push(match t {
                Some(t) => buf("attention", t)?.ptr as i64,
                None => 0,
            });
        }
        w.extend(self.stats.iter().chain(&self.outs).map(|&p| p as i64));
        Ok(Arg::S(w))
    }

    fn launch(&self, gpu: &Gpu, kernel: &str, dtype: DType, rows: usize) -> Result<()> {
        let grid = [rows.div_ceil(16) as u32, self.g.heads as u32, 1];
        launch3(gpu, &kname("attention", kernel, dtype)?, grid, &mut [self.words()?])
    }
}

/// D_i = dO_i · O_i for every query row (the backward's row statistic).
fn row_dots(g: &Arc<Gpu>, d_o: &Tensor, o: &Tensor, rows: usize, width: usize) -> Result<Buf> {
    let b = g.alloc(rows * d_o.dtype().size_in_bytes())?;
    let args = vec![Arg::U(b.ptr), ptr("attention", d_o)?, ptr("attention", o)?, Arg::U(rows as u64), Arg::U(width as u64)];
    launch(g, &kname("attention", "attn_rowdot", d_o.dtype())?, blocks_for(rows), args)?;
    Ok(b)
}

/// Fused attention forward: (O [heads·nq·dv], ℓ [heads·nq]) as flat tensors.
pub(crate) fn attention_forward(
    g: crate::backend::cpu::attention::Geometry,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let gpu = gpu_of(q)?;
    let (o, po) = empty(&gpu, [g.heads * g.nq * g.dv], q.dtype())?;
    let (lse, _) = empty(&gpu, [g.heads * g.nq], q.dtype())?; // written through the ℓ slot
    let need = crate::backend::cpu::attention::Need { q: false, kv: false, d_o: false };
    let a =
        AttnArgs { g, need, inputs: [Some(q), Some(k), Some(v), Some(&lse), None, None, None, None], stats: [0; 3], outs: [0, 0, 0, po] };
    a.launch(&gpu, "attn_forward", q.dtype(), g.nq)?;
    Ok((o, lse))
}

/// Fused attention backward: the packed [dQ | dK | dV] (unneeded parts zero).
pub(crate) fn attention_backward(
    g: crate::backend::cpu::attention::Geometry,
    [q, k, v]: [&Tensor; 3],
    [o, lse]: [&Tensor; 2],
    d_o: &Tensor,
    need: crate::backend::cpu::attention::Need,
) -> Result<Tensor> {
    let gpu = gpu_of(q)?;
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let sz = q.dtype().size_in_bytes() as u64;
    let (t, base) = empty(&gpu, [nq * g.d + nk * (g.d + g.dv)], q.dtype())?;
    gpu.driver.memset_zero(base, t.size_in_bytes())?;
    let dd = row_dots(&gpu, d_o, o, nq, g.dv)?;
    let outs = [base, base + (nq * g.d) as u64 * sz, base + ((nq + nk) * g.d) as u64 * sz, 0];
    let a = AttnArgs { g, need, inputs: [Some(q), Some(k), Some(v), Some(lse), Some(d_o), None, None, None], stats: [dd.ptr, 0, 0], outs };
    if need.q {
        a.launch(&gpu, "attn_backward_rows", q.dtype(), g.nq)?;
    }
    if need.kv {
        a.launch(&gpu, "attn_backward_cols", q.dtype(), g.nk)?;
    }
    Ok(t)
}

/// Fused attention backward-over-backward: the packed [Q̄ | K̄ | V̄ | dŌ] (unneeded parts zero), given
/// the cotangents a, b, e of dQ, dK, dV.
pub(crate) fn attention_backward_backward(
    g: crate::backend::cpu::attention::Geometry,
    [q, k, v]: [&Tensor; 3],
    [o, lse]: [&Tensor; 2],
    d_o: &Tensor,
    [a, b, e]: [&Tensor; 3],
    need: crate::backend::cpu::attention::Need,
) -> Result<Tensor> {
    let gpu = gpu_of(q)?;
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let sz = q.dtype().size_in_bytes() as u64;
    let (t, base) = empty(&gpu, [nq * (g.d + g.dv) + nk * (g.d + g.dv)], q.dtype())?;
    gpu.driver.memset_zero(base, t.size_in_bytes())?;
    if !(need.q || need.kv || need.d_o) {
        return Ok(t);
    }
    let dd = row_dots(&gpu, d_o, o, nq, g.dv)?;
    let (dbar, rho) = (gpu.alloc(nq * sz as usize)?, gpu.alloc(nq * sz as usize)?);
    let off_k = (nq * g.d) as u64 * sz;
    let off_v = off_k + (nk * g.d) as u64 * sz;
    let off_o = off_v + (nk * g.dv) as u64 * sz;
    let outs = [base, base + off_k, base + off_v, base + off_o];
    let inputs = [Some(q), Some(k), Some(v), Some(lse), Some(d_o), Some(a), Some(b), Some(e)];
    let args = AttnArgs { g, need, inputs, stats: [dd.ptr, dbar.ptr, rho.ptr], outs };
    args.launch(&gpu, "attn_bb_rows", q.dtype(), g.nq)?;
    if need.kv {
        args.launch(&gpu, "attn_bb_cols", q.dtype(), g.nk)?;
    }
    Ok(t)
}
