//! The tensor: an immutable, contiguous, row-major buffer behind a cheap handle.
//!
//! A [`Tensor`] is a value: cloning it copies a reference count, never data, and no op mutates a tensor
//! in place. That is what lets the tape save inputs for the backward pass without defensive copies and
//! lets REPLAY hold checkpoints by handle. Differentiation happens one level up, on
//! [`crate::Var`], which wraps a tensor and a place on a tape.

use crate::backend::cuda::{self, Buf};
use crate::dtype::{bf16_from_f64, f16_from_f64, DType, Element};
use crate::error::{invalid, shape_err, Error, Result};
use crate::random;
use crate::{Device, Shape};
use half::{bf16, f16};
use std::fmt;
use std::sync::Arc;

/// The typed buffer behind a tensor.
pub(crate) enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    /// A buffer on a CUDA device (from its caching allocator) holding elements of the dtype.
    Cuda(Buf, DType),
}

impl Drop for Storage {
    /// Large f32/f64 buffers go to the CPU backend's buffer cache for reuse by later kernel outputs.
    fn drop(&mut self) {
        match self {
            Storage::F32(v) => crate::backend::cpu::pool::recycle(std::mem::take(v)),
            Storage::F64(v) => crate::backend::cpu::pool::recycle(std::mem::take(v)),
            Storage::BF16(_) | Storage::F16(_) | Storage::Cuda(..) => {}
        }
    }
}

/// An n-dimensional array of f32, f64, bf16 or f16 on a [`Device`].
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
    device: Device,
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: Shape) -> Tensor {
        Tensor { storage: Arc::new(storage), shape, device: Device::Cpu }
    }

    pub(crate) fn from_cuda(buf: Buf, dtype: DType, shape: Shape) -> Tensor {
        let device = Device::Cuda(buf.gpu.ordinal);
        Tensor { storage: Arc::new(Storage::Cuda(buf, dtype)), shape, device }
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Whether the tensor lives on a CUDA device.
    pub fn is_cuda(&self) -> bool {
        matches!(self.device, Device::Cuda(_))
    }

    /// A copy on `device` (the same handle if it is already there). Uploads and downloads are
    /// synchronous; a download waits for the kernels queued before it.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device {
            return Ok(self.clone());
        }
        match (self.device, device) {
            (Device::Cpu, Device::Cuda(n)) => cuda::ops::upload(self.as_bytes()?, self.dtype(), self.shape.clone(), n),
            (Device::Cuda(_), Device::Cpu) => Tensor::from_bytes(&cuda::ops::download(self)?, self.dtype(), self.shape.clone()),
            (Device::Cuda(_), Device::Cuda(_)) => self.to_device(Device::Cpu)?.to_device(device),
            (Device::Cpu, Device::Cpu) => Ok(self.clone()),
        }
    }

    /// A tensor filled with `value` on `device` (a fill kernel on a GPU, no upload).
    pub fn full_on(value: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        match device {
            Device::Cuda(n) => cuda::ops::full(value, shape.into(), dtype, n),
            Device::Cpu => Ok(Tensor::full(value, shape, dtype)),
        }
    }

    /// The tensor's values on the host: itself on the CPU, a downloaded copy from a GPU.
    fn host(&self) -> Result<Tensor> {
        self.to_device(Device::Cpu)
    }

    /// Builds a tensor that owns `data` (no copy); `data.len()` must equal the shape's element count.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return shape_err("from_vec", format!("{} values do not fill shape {shape}", data.len()));
        }
        Ok(Tensor::from_storage(wrap(data), shape))
    }

    /// Builds a tensor by copying a slice.
    pub fn from_slice<T: Element>(data: &[T], shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// Builds a tensor from raw little-endian bytes of `dtype` (checked with bytemuck).
    pub fn from_bytes(bytes: &[u8], dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        fn cast<T: Element>(b: &[u8]) -> Result<Vec<T>> {
            bytemuck::try_cast_slice::<u8, T>(b).map(|s| s.to_vec()).or_else(|_| {
                // Unaligned input: copy element by element.
                if !b.len().is_multiple_of(std::mem::size_of::<T>()) {
                    return invalid("from_bytes", format!("{} bytes are not a whole number of elements", b.len()));
                }
                Ok(b.chunks_exact(std::mem::size_of::<T>()).map(bytemuck::pod_read_unaligned).collect())
            })
        }
        let shape = shape.into();
        let want = shape.numel().checked_mul(dtype.size_in_bytes());
        if want != Some(bytes.len()) {
            let want = want.map_or_else(|| "more than usize::MAX".to_string(), |w| w.to_string());
            return shape_err("from_bytes", format!("{} bytes do not fill shape {shape} of {dtype} ({want} bytes)", bytes.len()));
        }
        let storage = match dtype {
            DType::F32 => Storage::F32(cast(bytes)?),
            DType::F64 => Storage::F64(cast(bytes)?),
            DType::BF16 => Storage::BF16(cast(bytes)?),
            DType::F16 => Storage::F16(cast(bytes)?),
        };
        Ok(Tensor::from_storage(storage, shape))
    }

    /// A tensor filled with `value` (rounded to `dtype`).
    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.numel();
        let storage = match dtype {
            DType::F32 => Storage::F32(vec![value as f32; n]),
            DType::F64 => Storage::F64(vec![value; n]),
            DType::BF16 => Storage::BF16(vec![bf16_from_f64(value); n]),
            DType::F16 => Storage::F16(vec![f16_from_f64(value); n]),
        };
        Tensor::from_storage(storage, shape)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Tensor::full(0.0, shape, dtype)
    }

    /// A tensor of ones.
    pub fn ones(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Tensor::full(1.0, shape, dtype)
    }

    /// A scalar (shape `[]`).
    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::full(value, (), dtype)
    }

    /// The 1-D tensor `[start, start + step, ...]` with `n` elements.
    pub fn arange(start: f64, step: f64, n: usize, dtype: DType) -> Tensor {
        let v: Vec<f64> = (0..n).map(|i| start + step * i as f64).collect();
        Tensor::from_storage(Storage::F64(v), Shape::new([n])).to_dtype(dtype)
    }

    /// Standard normal samples from the counter-based Philox generator: element `i` depends only on
    /// `(seed, i)`, so the numbers are the same on any thread count and any device.
    pub fn randn(shape: impl Into<Shape>, dtype: DType, seed: u64) -> Tensor {
        let shape = shape.into();
        let v = random::normal_vec(seed, shape.numel());
        Tensor::from_storage(Storage::F64(v), shape).to_dtype(dtype)
    }

    /// Uniform samples in `[lo, hi)` from the counter-based Philox generator (see [`Tensor::randn`]).
    /// Samples are drawn in f64 and rounded to `dtype`; one that rounds up to `hi` becomes the largest
    /// value of `dtype` below `hi`, so the interval stays half-open in every dtype.
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f64, hi: f64, dtype: DType, seed: u64) -> Tensor {
        fn below_hi<T: Element>(v: &mut [T], hi: f64) {
            let top = largest_below::<T>(hi);
            for x in v.iter_mut().filter(|x| x.to_f64() >= hi) {
                *x = top;
            }
        }
        let shape = shape.into();
        let v = random::uniform_vec(seed, shape.numel()).into_iter().map(|u| lo + (hi - lo) * u).collect();
        let mut t = Tensor::from_storage(Storage::F64(v), shape).to_dtype(dtype);
        // A fresh CPU tensor: its storage is not shared, so it can be adjusted in place.
        match Arc::get_mut(&mut t.storage) {
            Some(Storage::F32(v)) => below_hi(v, hi),
            Some(Storage::F64(v)) => below_hi(v, hi),
            Some(Storage::BF16(v)) => below_hi(v, hi),
            Some(Storage::F16(v)) => below_hi(v, hi),
            Some(Storage::Cuda(..)) | None => {} // not a fresh CPU tensor: cannot happen
        }
        t
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    /// Bytes of the buffer.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::Cuda(_, d) => *d,
        }
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Borrows the elements of a CPU tensor; the dtype must be `T`'s. A CUDA tensor is an
    /// [`Error::Device`]: copy it with [`Tensor::to_device`] or use [`Tensor::to_vec`].
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let dt = self.dtype();
        if self.is_cuda() {
            return Err(self.on_device_err("as_slice"));
        }
        slice::<T>(&self.storage).ok_or_else(|| Error::DType { op: "as_slice", msg: format!("tensor holds {dt}, asked for {}", T::DTYPE) })
    }

    fn on_device_err(&self, op: &'static str) -> Error {
        Error::Device {
            op,
            msg: format!(
                "the {} {} tensor lives on {}; copy it to the host with to_device(Device::Cpu)",
                self.shape,
                self.dtype(),
                self.device
            ),
        }
    }

    /// The raw bytes of a CPU tensor's buffer (bytemuck cast, no copy); [`Error::Device`] for a CUDA
    /// tensor (see [`Tensor::as_slice`]).
    pub fn as_bytes(&self) -> Result<&[u8]> {
        Ok(match &*self.storage {
            Storage::F32(v) => bytemuck::cast_slice(v),
            Storage::F64(v) => bytemuck::cast_slice(v),
            Storage::BF16(v) => bytemuck::cast_slice(v),
            Storage::F16(v) => bytemuck::cast_slice(v),
            Storage::Cuda(..) => return Err(self.on_device_err("as_bytes")),
        })
    }

    /// The raw bytes, downloaded from a GPU when the tensor lives there.
    pub(crate) fn host_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match &*self.storage {
            Storage::Cuda(..) => Ok(std::borrow::Cow::Owned(cuda::ops::download(self)?)),
            _ => Ok(std::borrow::Cow::Borrowed(self.as_bytes()?)),
        }
    }

    /// Copies the elements out (downloading from a GPU); the dtype must be `T`'s (use
    /// [`Tensor::to_vec_f64`] to convert).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.host()?.as_slice::<T>()?.to_vec())
    }

    /// Copies the elements out as f64 (exact for every dtype), downloading from a GPU.
    ///
    /// # Panics
    /// Only if a CUDA device fails (a kernel fault or a lost device); [`Tensor::try_to_vec_f64`]
    /// returns that as an [`Error`] instead.
    pub fn to_vec_f64(&self) -> Vec<f64> {
        self.try_to_vec_f64().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Tensor::to_vec_f64`], with a device failure as an [`Error`].
    pub fn try_to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(match &*self.storage {
            Storage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Storage::F64(v) => v.clone(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Storage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Storage::Cuda(..) => return self.host()?.try_to_vec_f64(),
        })
    }

    /// The single value of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return shape_err("to_scalar", format!("tensor of shape {} has {} elements, not 1", self.shape, self.numel()));
        }
        Ok(self.try_to_vec_f64()?[0])
    }

    /// Converts to another dtype (round to nearest even when narrowing); a no-op handle copy if equal.
    /// On a GPU the conversion runs there (see [`Tensor::try_to_dtype`]).
    ///
    /// # Panics
    /// Only if a CUDA device fails; [`Tensor::try_to_dtype`] returns that as an [`Error`].
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        self.try_to_dtype(dtype).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Tensor::to_dtype`], with a device failure as an [`Error`].
    pub fn try_to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if self.is_cuda() {
            return cuda::ops::cast(self, dtype);
        }
        let storage = match (&*self.storage, dtype) {
            (Storage::F64(v), DType::F32) => Storage::F32(v.iter().map(|&x| x as f32).collect()),
            (Storage::F32(v), DType::F64) => Storage::F64(v.iter().map(|&x| x as f64).collect()),
            (Storage::F32(v), DType::BF16) => Storage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            (Storage::F32(v), DType::F16) => Storage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            (Storage::BF16(v), DType::F32) => Storage::F32(v.iter().map(|x| x.to_f32()).collect()),
            (Storage::F16(v), DType::F32) => Storage::F32(v.iter().map(|x| x.to_f32()).collect()),
            _ => {
                let v = self.to_vec_f64();
                match dtype {
                    DType::F32 => Storage::F32(v.iter().map(|&x| x as f32).collect()),
                    DType::F64 => Storage::F64(v),
                    DType::BF16 => Storage::BF16(v.iter().map(|&x| bf16_from_f64(x)).collect()),
                    DType::F16 => Storage::F16(v.iter().map(|&x| f16_from_f64(x)).collect()),
                }
            }
        };
        Ok(Tensor { storage: Arc::new(storage), shape: self.shape.clone(), device: self.device })
    }

    /// Elements `start .. start + len` of the flattened tensor, as a new 1-D tensor on the same device.
    pub(crate) fn narrow_flat(&self, start: usize, len: usize) -> Result<Tensor> {
        let flat = crate::Var::constant(self.reshape([self.numel()])?);
        Ok(flat.narrow(0, start, len)?.value().clone())
    }

    /// The same buffer under a new shape with the same element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return shape_err("reshape", format!("cannot reshape {} ({} elements) to {shape}", self.shape, self.numel()));
        }
        Ok(Tensor { storage: self.storage.clone(), shape, device: self.device })
    }

    /// Whether two tensors are the same bits (same dtype, shape and bytes; on any devices).
    ///
    /// # Panics
    /// Only if a CUDA device fails while downloading.
    pub fn bit_eq(&self, other: &Tensor) -> bool {
        let bytes = |t: &Tensor| t.host().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (bytes(self), bytes(other));
        self.dtype() == other.dtype() && self.shape == other.shape && a.as_bytes().ok() == b.as_bytes().ok()
    }

    /// Whether every element is finite (no NaN or infinity).
    ///
    /// # Panics
    /// Only if a CUDA device fails; [`Tensor::try_all_finite`] returns that as an [`Error`].
    pub fn all_finite(&self) -> bool {
        self.try_all_finite().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Tensor::all_finite`], with a device failure as an [`Error`]. On a GPU a kernel counts the
    /// non-finite elements and only the count is downloaded.
    pub fn try_all_finite(&self) -> Result<bool> {
        Ok(match &*self.storage {
            Storage::F32(v) => v.iter().all(|x| x.is_finite()),
            Storage::F64(v) => v.iter().all(|x| x.is_finite()),
            Storage::BF16(v) => v.iter().all(|x| x.is_finite()),
            Storage::F16(v) => v.iter().all(|x| x.is_finite()),
            Storage::Cuda(_, d) if d.is_compute() => cuda::ops::count_nonfinite(self)? == 0,
            Storage::Cuda(..) => self.host()?.try_all_finite()?,
        })
    }
}

/// The largest value of `T` strictly below `hi` (one step down in the bit pattern from `hi` rounded).
fn largest_below<T: Element>(hi: f64) -> T {
    let h = T::from_f64(hi);
    if h.to_f64() < hi {
        return h;
    }
    // IEEE formats are sign-magnitude: toward −∞ is bits − 1 for positives, bits + 1 for negatives,
    // and from ±0 the smallest negative subnormal.
    macro_rules! down {
        ($u:ty) => {{
            let b: $u = bytemuck::cast(h);
            let sign: $u = 1 << (<$u>::BITS - 1);
            let nb = if b & !sign == 0 {
                sign | 1
            } else if b & sign == 0 {
                b - 1
            } else {
                b + 1
            };
            bytemuck::cast(nb)
        }};
    }
    match std::mem::size_of::<T>() {
        2 => down!(u16),
        4 => down!(u32),
        _ => down!(u64),
    }
}

pub(crate) fn slice<T: Element>(s: &Storage) -> Option<&[T]> {
    // Element is implemented only for the four storage types, so a matching dtype means T is that type.
    match (s, T::DTYPE) {
        (Storage::F32(v), DType::F32) => Some(bytemuck::cast_slice(v)),
        (Storage::F64(v), DType::F64) => Some(bytemuck::cast_slice(v)),
        (Storage::BF16(v), DType::BF16) => Some(bytemuck::cast_slice(v)),
        (Storage::F16(v), DType::F16) => Some(bytemuck::cast_slice(v)),
        _ => None,
    }
}

pub(crate) fn wrap<T: Element>(v: Vec<T>) -> Storage {
    // Element is sealed to the four storage types; bytemuck moves the Vec without copying when the
    // types match exactly (same size and alignment).
    match T::DTYPE {
        DType::F32 => Storage::F32(bytemuck::allocation::cast_vec(v)),
        DType::F64 => Storage::F64(bytemuck::allocation::cast_vec(v)),
        DType::BF16 => Storage::BF16(bytemuck::allocation::cast_vec(v)),
        DType::F16 => Storage::F16(bytemuck::allocation::cast_vec(v)),
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.try_to_vec_f64() {
            Ok(v) => v,
            Err(e) => return write!(f, "Tensor({}, {}, {}, <{e}>)", self.shape, self.dtype(), self.device),
        };
        let shown: Vec<f64> = v.iter().take(8).copied().collect();
        write!(f, "Tensor({}, {}, {}, {:?}{})", self.shape, self.dtype(), self.device, shown, if v.len() > 8 { " ..." } else { "" })
    }
}
