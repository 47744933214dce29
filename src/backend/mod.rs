//! The device seam: [`Storage`], one enum over the backends' buffers, and the dispatch of every kernel
//! to the backend its operands live on.
//!
//! - `spec`: the [`spec::Backend`] trait each backend implements, and the backend-neutral
//!   descriptions of the kernels (op codes, convolution and attention shapes);
//! - `cpu`: deterministic rayon kernels on host memory;
//! - `cuda` (cargo feature `cuda`): NVRTC-compiled kernels on CUDA devices, through cudarc.
//!
//! Every method of [`Storage`] first checks that all its operands live on one device (the only place
//! that does: a mismatch is an [`Error::Device`] naming both devices), then calls that backend. Ops
//! above this layer never ask where a tensor lives. Kernels never see a `Tensor` or a `Var`: they take
//! buffers and shapes and return buffers.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod spec;

use crate::error::{Error, Result};
use crate::{DType, Device};
use cpu::CpuStorage;
#[cfg(feature = "cuda")]
use cuda::CudaStorage;
use spec::{AttnShape, AxisView, Backend, BinaryOp, ConvMode, ConvShape, MatmulShape, Need, SoftmaxMode, UnaryOp, Update, WindowOp};
use std::borrow::Cow;

/// A tensor's buffer, on the device it lives on.
pub(crate) enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
    /// Memory of a CUDA device.
    #[cfg(feature = "cuda")]
    Cuda(CudaStorage),
}

/// The operands of one call, all on one device.
enum Same<'a> {
    Cpu(Vec<&'a CpuStorage>),
    #[cfg(feature = "cuda")]
    Cuda(Vec<&'a CudaStorage>),
}

/// The error of every CUDA operation in a build without the `cuda` cargo feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn not_built(op: &'static str, ordinal: usize) -> Error {
    Error::device(op, format!("cannot use cuda:{ordinal}: metagrad was built without its `cuda` cargo feature"))
}

/// The error for operands on different devices.
fn mismatch(op: &'static str, a: Device, b: Device) -> Error {
    Error::device(op, format!("operands live on {a} and {b}; move one with to_device"))
}

/// All of `xs` on one device, or an error naming the first two devices that differ.
fn same<'a>(op: &'static str, xs: &[&'a Storage]) -> Result<Same<'a>> {
    let first = xs.first().map_or(Device::Cpu, |s| s.device());
    if let Some(other) = xs.iter().map(|s| s.device()).find(|&d| d != first) {
        return Err(mismatch(op, first, other));
    }
    Ok(match xs.first() {
        #[cfg(feature = "cuda")]
        Some(Storage::Cuda(_)) => Same::Cuda(xs.iter().filter_map(|s| s.cuda()).collect()),
        _ => Same::Cpu(xs.iter().filter_map(|s| s.cpu()).collect()),
    })
}

/// The operands of one call with a fixed count, all on one device (destructured at the call site).
enum SameN<'a, const N: usize> {
    Cpu([&'a CpuStorage; N]),
    #[cfg(feature = "cuda")]
    Cuda([&'a CudaStorage; N]),
}

/// [`same`] for a fixed number of operands.
fn same_n<'a, const N: usize>(op: &'static str, xs: [&'a Storage; N]) -> Result<SameN<'a, N>> {
    let lost = || Error::Invalid { op, msg: "internal: an operand's storage did not match its device".into() };
    Ok(match same(op, &xs)? {
        Same::Cpu(v) => SameN::Cpu(v.try_into().map_err(|_| lost())?),
        #[cfg(feature = "cuda")]
        Same::Cuda(v) => SameN::Cuda(v.try_into().map_err(|_| lost())?),
    })
}

/// `$body` with `$s` bound to the backend storage of `$x`, its result wrapped back into a [`Storage`].
macro_rules! each {
    ($x:expr, $s:ident => $body:expr) => {
        match $x {
            Storage::Cpu($s) => Ok(Storage::Cpu($body?)),
            #[cfg(feature = "cuda")]
            Storage::Cuda($s) => Ok(Storage::Cuda($body?)),
        }
    };
}

/// `$body` with `$v` bound to the backend storages of `$xs` (one device), for backend type `$B`.
macro_rules! each_of {
    ($op:expr, $xs:expr, $v:ident, $B:ident => $body:expr) => {
        match same($op, $xs)? {
            Same::Cpu($v) => {
                type $B = CpuStorage;
                Ok(Storage::Cpu($body?))
            }
            #[cfg(feature = "cuda")]
            Same::Cuda($v) => {
                type $B = CudaStorage;
                Ok(Storage::Cuda($body?))
            }
        }
    };
}

/// `$body` with the backend storages of the array `$xs` (one device) bound by the array pattern `$p`,
/// for backend type `$B`.
macro_rules! each_n {
    ($op:expr, $xs:expr, $p:pat, $B:ident => $body:expr) => {
        match same_n($op, $xs)? {
            SameN::Cpu($p) => {
                type $B = CpuStorage;
                Ok(Storage::Cpu($body?))
            }
            #[cfg(feature = "cuda")]
            SameN::Cuda($p) => {
                type $B = CudaStorage;
                Ok(Storage::Cuda($body?))
            }
        }
    };
}

impl Storage {
    /// The element type.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype(),
        }
    }

    /// The device the buffer lives on.
    pub(crate) fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.device(),
        }
    }

    /// The number of elements.
    pub(crate) fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len(),
        }
    }

    /// The host buffer, if the storage is on the CPU.
    pub(crate) fn cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }

    /// The device buffer, if the storage is on a CUDA device.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Option<&CudaStorage> {
        match self {
            Storage::Cuda(s) => Some(s),
            Storage::Cpu(_) => None,
        }
    }

    /// `n` copies of `value` rounded to `dtype`, on `device` (a fill kernel on a GPU, no upload).
    pub(crate) fn full(op: &'static str, value: f64, n: usize, dtype: DType, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::full(op, value, n, dtype)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) if dtype.is_compute() => Ok(Storage::Cuda(CudaStorage::full(op, &cuda::gpu(o)?, value, n, dtype)?)),
            Device::Cuda(_) => Storage::Cpu(CpuStorage::full(op, value, n, dtype)?).to_device(op, device),
        }
    }

    /// A copy on `device` (uploads and downloads are synchronous; a download waits for queued work).
    pub(crate) fn to_device(&self, op: &'static str, device: Device) -> Result<Storage> {
        match (self, device) {
            (Storage::Cpu(s), Device::Cpu) => Ok(Storage::Cpu(s.cast(op, s.dtype())?)),
            #[cfg(feature = "cuda")]
            (Storage::Cpu(s), Device::Cuda(o)) => {
                // A one-element f32/f64 value (a scalar hyperparameter, moved every step) is written by
                // the fill kernel, which takes it as an argument: a launch instead of a synchronous
                // upload. Exact (f32 → f64 → f32 is the identity), NaNs aside, which are uploaded.
                if s.len() == 1 && matches!(s.dtype(), DType::F32 | DType::F64) {
                    if let [v] = s.to_f64(op)?[..] {
                        if !v.is_nan() {
                            return Storage::full(op, v, 1, s.dtype(), device);
                        }
                    }
                }
                Ok(Storage::Cuda(CudaStorage::upload(op, &cuda::gpu(o)?, s.bytes(), s.dtype())?))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(s), _) => Storage::Cpu(cpu_from_bytes(op, &s.download(op)?, s.dtype())?).to_device(op, device),
            #[cfg(not(feature = "cuda"))]
            (Storage::Cpu(_), Device::Cuda(o)) => Err(not_built("to_device", o)),
        }
    }

    /// The raw little-endian bytes (borrowed on the CPU, downloaded from a GPU).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub(crate) fn host_bytes(&self, op: &'static str) -> Result<Cow<'_, [u8]>> {
        match self {
            Storage::Cpu(s) => Ok(Cow::Borrowed(s.bytes())),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Ok(Cow::Owned(s.download(op)?)),
        }
    }

    /// Elements as f64 (exact for every dtype), downloaded from a GPU.
    pub(crate) fn to_f64(&self, op: &'static str) -> Result<Vec<f64>> {
        match self {
            Storage::Cpu(s) => s.to_f64(op),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => cpu_from_bytes(op, &s.download(op)?, s.dtype())?.to_f64(op),
        }
    }

    pub(crate) fn unary(&self, op: &'static str, f: UnaryOp) -> Result<Storage> {
        each!(self, s => s.unary(op, f))
    }

    pub(crate) fn binary(
        &self,
        op: &'static str,
        ad: &[usize],
        rhs: &Storage,
        bd: &[usize],
        out: &[usize],
        f: BinaryOp,
    ) -> Result<Storage> {
        each_n!(op, [self, rhs], [a, b], B => B::binary(a, op, ad, b, bd, out, f))
    }

    pub(crate) fn sum_axis(&self, op: &'static str, v: AxisView) -> Result<Storage> {
        each!(self, s => s.sum_axis(op, v))
    }

    pub(crate) fn max_axis(&self, op: &'static str, v: AxisView) -> Result<(Storage, Storage)> {
        match self {
            Storage::Cpu(s) => s.max_axis(op, v).map(|(a, b)| (Storage::Cpu(a), Storage::Cpu(b))),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.max_axis(op, v).map(|(a, b)| (Storage::Cuda(a), Storage::Cuda(b))),
        }
    }

    pub(crate) fn softmax_axis(&self, op: &'static str, v: AxisView, mode: SoftmaxMode) -> Result<Storage> {
        each!(self, s => s.softmax_axis(op, v, mode))
    }

    pub(crate) fn matmul(&self, op: &'static str, rhs: &Storage, s: MatmulShape) -> Result<Storage> {
        each_n!(op, [self, rhs], [a, b], B => B::matmul(a, op, b, s))
    }

    pub(crate) fn copy_strided(&self, op: &'static str, dims: &[usize], strides: &[usize], offset: usize) -> Result<Storage> {
        each!(self, s => s.copy_strided(op, dims, strides, offset))
    }

    pub(crate) fn place_strided(&self, op: &'static str, len: usize, dims: &[usize], strides: &[usize], offset: usize) -> Result<Storage> {
        each!(self, s => s.place_strided(op, len, dims, strides, offset))
    }

    pub(crate) fn concat(op: &'static str, parts: &[&Storage], outer: usize, inner: usize) -> Result<Storage> {
        each_of!(op, parts, v, B => B::concat(op, &v, outer, inner))
    }

    pub(crate) fn index_select(&self, op: &'static str, idx: &[usize], v: AxisView) -> Result<Storage> {
        each!(self, s => s.index_select(op, idx, v))
    }

    pub(crate) fn index_add(&self, op: &'static str, idx: &[usize], v: AxisView) -> Result<Storage> {
        each!(self, s => s.index_add(op, idx, v))
    }

    pub(crate) fn gather(&self, op: &'static str, idx: &[usize], v: AxisView, m: usize) -> Result<Storage> {
        each!(self, s => s.gather(op, idx, v, m))
    }

    pub(crate) fn scatter_add(&self, op: &'static str, idx: &[usize], v: AxisView, m: usize) -> Result<Storage> {
        each!(self, s => s.scatter_add(op, idx, v, m))
    }

    pub(crate) fn window(&self, op: &'static str, w: WindowOp, s: &ConvShape) -> Result<Storage> {
        each!(self, x => x.window(op, w, s))
    }

    pub(crate) fn conv(op: &'static str, mode: ConvMode, s: &ConvShape, pairs: &[(&Storage, &Storage)]) -> Result<Storage> {
        let flat: Vec<&Storage> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        each_of!(op, &flat, v, B => {
            let p: Vec<(&B, &B)> = v.as_chunks::<2>().0.iter().map(|&[a, b]| (a, b)).collect();
            B::conv(op, mode, s, &p)
        })
    }

    /// Whether the fused attention kernels of `device` handle `g`.
    pub(crate) fn supports_attention(device: Device, g: &AttnShape) -> bool {
        match device {
            Device::Cpu => CpuStorage::supports_attention(g),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => CudaStorage::supports_attention(g),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => false,
        }
    }

    pub(crate) fn attention_forward(op: &'static str, g: &AttnShape, q: &Storage, k: &Storage, v: &Storage) -> Result<(Storage, Storage)> {
        match same_n(op, [q, k, v])? {
            SameN::Cpu([q, k, v]) => CpuStorage::attention_forward(op, g, q, k, v).map(|(a, b)| (Storage::Cpu(a), Storage::Cpu(b))),
            #[cfg(feature = "cuda")]
            SameN::Cuda([q, k, v]) => CudaStorage::attention_forward(op, g, q, k, v).map(|(a, b)| (Storage::Cuda(a), Storage::Cuda(b))),
        }
    }

    pub(crate) fn attention_backward(
        op: &'static str,
        g: &AttnShape,
        qkv: [&Storage; 3],
        saved: [&Storage; 2],
        d_o: &Storage,
        need: Need,
    ) -> Result<Storage> {
        let ([q, k, v], [m, l]) = (qkv, saved);
        each_n!(op, [q, k, v, m, l, d_o], [q, k, v, m, l, d], B => B::attention_backward(op, g, [q, k, v], [m, l], d, need))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_backward_backward(
        op: &'static str,
        g: &AttnShape,
        qkv: [&Storage; 3],
        saved: [&Storage; 2],
        d_o: &Storage,
        cot: &Storage,
        need: Need,
    ) -> Result<Storage> {
        let ([q, k, v], [m, l]) = (qkv, saved);
        each_n!(op, [q, k, v, m, l, d_o, cot], [q, k, v, m, l, d, c], B => {
            B::attention_backward_backward(op, g, [q, k, v], [m, l], d, c, need)
        })
    }

    pub(crate) fn update(op: &'static str, u: Update, tensors: &[&Storage], hypers: &[&Storage]) -> Result<Vec<Storage>> {
        let all: Vec<&Storage> = tensors.iter().chain(hypers).copied().collect();
        let nt = tensors.len();
        match same(op, &all)? {
            Same::Cpu(x) => {
                let (t, h) = x.split_at(nt.min(x.len()));
                Ok(CpuStorage::update(op, u, t, h)?.into_iter().map(Storage::Cpu).collect())
            }
            #[cfg(feature = "cuda")]
            Same::Cuda(x) => {
                let (t, h) = x.split_at(nt.min(x.len()));
                Ok(CudaStorage::update(op, u, t, h)?.into_iter().map(Storage::Cuda).collect())
            }
        }
    }

    /// The elements converted to `to` (on a GPU by a kernel where one exists, else through the host).
    pub(crate) fn cast(&self, op: &'static str, to: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.cast(op, to)?)),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) if cuda::casts_on_device(s.dtype(), to) => Ok(Storage::Cuda(s.cast(op, to)?)),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Storage::Cpu(cpu_from_bytes(op, &s.download(op)?, s.dtype())?.cast(op, to)?).to_device(op, s.device()),
        }
    }

    /// Whether no element is NaN or infinite (on a GPU a kernel counts them; one number comes back).
    pub(crate) fn all_finite(&self, op: &'static str) -> Result<bool> {
        match self {
            Storage::Cpu(s) => s.all_finite(op),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.all_finite(op),
        }
    }

    /// Whether no element of any of `xs` is NaN or infinite: on a GPU with one download per device
    /// (see [`cuda::all_finite_many`]).
    pub(crate) fn all_finite_many(op: &'static str, xs: &[&Storage]) -> Result<bool> {
        #[cfg(feature = "cuda")]
        let mut on_gpus = Vec::new();
        for x in xs {
            match x {
                Storage::Cpu(s) => {
                    if !s.all_finite(op)? {
                        return Ok(false);
                    }
                }
                #[cfg(feature = "cuda")]
                Storage::Cuda(s) => on_gpus.push(s),
            }
        }
        #[cfg(feature = "cuda")]
        if !cuda::all_finite_many(op, &on_gpus)? {
            return Ok(false);
        }
        Ok(true)
    }
}

/// A CPU buffer from little-endian bytes of `dtype` (checked with bytemuck; unaligned input is copied
/// element by element).
pub(crate) fn cpu_from_bytes(op: &'static str, bytes: &[u8], dtype: DType) -> Result<CpuStorage> {
    fn cast<T: crate::dtype::Element>(op: &'static str, b: &[u8]) -> Result<Vec<T>> {
        let size = std::mem::size_of::<T>();
        if !b.len().is_multiple_of(size) {
            return Err(Error::Invalid { op, msg: format!("{} bytes are not a whole number of elements", b.len()) });
        }
        match bytemuck::try_cast_slice::<u8, T>(b) {
            Ok(s) => cpu::pool::map(op, s, |x| x),
            Err(_) => {
                let mut v = cpu::pool::filled(op, b.len() / size, T::from_f64(0.0))?;
                for (x, c) in v.iter_mut().zip(b.chunks_exact(size)) {
                    *x = bytemuck::pod_read_unaligned(c);
                }
                Ok(v)
            }
        }
    }
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(cast(op, bytes)?),
        DType::F64 => CpuStorage::F64(cast(op, bytes)?),
        DType::BF16 => CpuStorage::BF16(cast(op, bytes)?),
        DType::F16 => CpuStorage::F16(cast(op, bytes)?),
    })
}

/// One raw allocation on a device that holds many tensors' bytes at fixed offsets (the REPLAY
/// checkpoint arena's backing): host memory for CPU tensors, device memory for CUDA ones.
pub(crate) enum Block {
    /// u64 words keep every tensor 8-byte aligned.
    Host(Vec<u64>),
    /// One buffer from the device's caching allocator.
    #[cfg(feature = "cuda")]
    Cuda(CudaStorage),
}

impl Drop for Block {
    fn drop(&mut self) {
        #[allow(irrefutable_let_patterns)] // without the `cuda` feature, Host is the only variant
        if let Block::Host(words) = self {
            cpu::pool::keep_block(std::mem::take(words));
        }
    }
}

impl Block {
    /// `bytes` bytes (a multiple of 8) on `device`, or [`Error::OutOfMemory`]. Their contents are
    /// unspecified (the arena reads only what it wrote); on the CPU this may be the block of the last
    /// arena dropped (see [`cpu::pool::take_block`]).
    pub(crate) fn new(op: &'static str, device: Device, bytes: usize) -> Result<Block> {
        match device {
            Device::Cpu => Ok(Block::Host(cpu::pool::take_block(op, bytes / 8)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => Ok(Block::Cuda(CudaStorage::empty(op, &cuda::gpu(o)?, bytes / 8, DType::F64)?)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(o) => Err(not_built(op, o)),
        }
    }

    /// The device the block lives on.
    pub(crate) fn device(&self) -> Device {
        match self {
            Block::Host(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Block::Cuda(c) => c.device(),
        }
    }

    /// Copies `s` (on the block's device) into the block at byte offset `at`.
    pub(crate) fn write(&mut self, op: &'static str, at: usize, s: &Storage) -> Result<()> {
        let n = s.len() * s.dtype().size_in_bytes();
        let out_of_range = || Error::Invalid { op, msg: format!("{n} bytes at offset {at} do not fit the block") };
        match (self, s) {
            (Block::Host(words), Storage::Cpu(c)) => {
                let dst = bytemuck::cast_slice_mut::<u64, u8>(words).get_mut(at..at + n).ok_or_else(out_of_range)?;
                dst.copy_from_slice(c.bytes());
                Ok(())
            }
            #[cfg(feature = "cuda")]
            (Block::Cuda(b), Storage::Cuda(c)) if b.device() == c.device() => {
                if at + n > b.len * 8 {
                    return Err(out_of_range());
                }
                b.copy_bytes_from(at, c, 0, n)
            }
            #[allow(unreachable_patterns)] // with the `cuda` feature only
            (b, s) => Err(mismatch(op, b.device(), s.device())),
        }
    }

    /// A new buffer of `len` elements of `dtype` copied from byte offset `at`.
    pub(crate) fn read(&self, op: &'static str, at: usize, dtype: DType, len: usize) -> Result<Storage> {
        let n = len * dtype.size_in_bytes();
        let out_of_range = || Error::Invalid { op, msg: format!("{n} bytes at offset {at} lie outside the block") };
        match self {
            Block::Host(words) => {
                let src = bytemuck::cast_slice::<u64, u8>(words).get(at..at + n).ok_or_else(out_of_range)?;
                Ok(Storage::Cpu(cpu_from_bytes(op, src, dtype)?))
            }
            #[cfg(feature = "cuda")]
            Block::Cuda(b) => {
                if at + n > b.len * 8 {
                    return Err(out_of_range());
                }
                let t = CudaStorage::empty(op, b.gpu(), len, dtype)?;
                t.copy_bytes_from(0, b, at, n)?;
                Ok(Storage::Cuda(t))
            }
        }
    }
}
