//! The tensor: an immutable, contiguous, row-major buffer behind a cheap handle.
//!
//! A [`Tensor`] is a value: cloning it copies a reference count, never data, and no op mutates a tensor
//! in place. That is what lets the tape save inputs for the backward pass without defensive copies and
//! lets REPLAY hold checkpoints by handle. Differentiation happens one level up, on [`crate::Var`],
//! which wraps a tensor and a place on a tape. Arithmetic on tensors themselves (`a.add(&b)`, `&a * 2.0`,
//! `a.matmul(&b)`, ...) runs the same kernels with no tape at all; those methods live beside their
//! differentiable twins in `ops/`.
//!
//! Every constructor that allocates has a fallible `try_` form returning [`Error::OutOfMemory`] for a
//! size that does not fit in memory; the short forms (`zeros`, `randn`, ...) are conveniences for small
//! tensors and panic only where the `try_` form would return that error.

use crate::backend::cpu::CpuStorage;
use crate::backend::{cpu_from_bytes, Storage};
use crate::dtype::{DType, Element};
use crate::error::{shape_err, Error, Result};
use crate::random;
use crate::{Device, Shape};
use std::fmt;
use std::sync::Arc;

/// An n-dimensional array of f32, f64, bf16 or f16 on a [`Device`].
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
}

/// Panics with `e` (the documented failure of the infallible convenience forms).
#[allow(clippy::panic)]
fn or_panic<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The element count of `shape`, or an [`Error::OutOfMemory`] naming `op` when it overflows.
fn numel_of(op: &'static str, shape: &Shape) -> Result<usize> {
    shape.checked_numel().ok_or_else(|| Error::OutOfMemory { op, msg: format!("shape {shape} has more elements than usize can count") })
}

impl Tensor {
    /// A tensor over `storage`, which holds exactly `shape.numel()` elements.
    pub(crate) fn from_storage(storage: Storage, shape: Shape) -> Tensor {
        Tensor { storage: Arc::new(storage), shape }
    }

    /// A tensor over `storage` under `shape`, checked to fit (the backends return flat buffers).
    pub(crate) fn new(op: &'static str, storage: Storage, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.checked_numel() != Some(storage.len()) {
            return shape_err(op, format!("a result of {} elements cannot have shape {shape}", storage.len()));
        }
        Ok(Tensor::from_storage(storage, shape))
    }

    /// The buffer.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Whether no other tensor shares this one's buffer (so a kernel may write into it).
    pub(crate) fn is_unique(&mut self) -> bool {
        Arc::get_mut(&mut self.storage).is_some()
    }

    /// Whether the tensor lives on a CUDA device.
    pub fn is_cuda(&self) -> bool {
        matches!(self.device(), Device::Cuda(_))
    }

    /// A copy on `device` (the same handle if it is already there). Uploads and downloads are
    /// synchronous; a download waits for the kernels queued before it.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        Ok(Tensor::from_storage(self.storage.to_device("to_device", device)?, self.shape.clone()))
    }

    /// A tensor filled with `value` on `device` (a fill kernel on a GPU, no upload).
    pub fn full_on(value: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let n = numel_of("full", &shape)?;
        Ok(Tensor::from_storage(Storage::full("full", value, n, dtype, device)?, shape))
    }

    /// Builds a tensor that owns `data` (no copy); `data.len()` must equal the shape's element count.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if Some(data.len()) != shape.checked_numel() {
            return shape_err("from_vec", format!("{} values do not fill shape {shape}", data.len()));
        }
        Ok(Tensor::from_storage(Storage::Cpu(CpuStorage::wrap(data)), shape))
    }

    /// Builds a tensor by copying a slice.
    pub fn from_slice<T: Element>(data: &[T], shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::from_vec(crate::backend::cpu::pool::map("from_slice", data, |x| x)?, shape)
    }

    /// Builds a tensor from raw little-endian bytes of `dtype` (checked with bytemuck).
    pub fn from_bytes(bytes: &[u8], dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let want = shape.checked_numel().and_then(|n| n.checked_mul(dtype.size_in_bytes()));
        if want != Some(bytes.len()) {
            let want = want.map_or_else(|| "more than usize::MAX".to_string(), |w| w.to_string());
            return shape_err("from_bytes", format!("{} bytes do not fill shape {shape} of {dtype} ({want} bytes)", bytes.len()));
        }
        Ok(Tensor::from_storage(Storage::Cpu(cpu_from_bytes("from_bytes", bytes, dtype)?), shape))
    }

    /// A tensor filled with `value` (rounded to `dtype`), or [`Error::OutOfMemory`].
    pub fn try_full(value: f64, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        Tensor::full_on(value, shape, dtype, Device::Cpu)
    }

    /// [`Tensor::try_full`] for tensors known to fit in memory.
    ///
    /// # Panics
    /// If the allocation fails (where `try_full` returns [`Error::OutOfMemory`]).
    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        or_panic(Tensor::try_full(value, shape, dtype))
    }

    /// A tensor of zeros, or [`Error::OutOfMemory`].
    pub fn try_zeros(shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        Tensor::try_full(0.0, shape, dtype)
    }

    /// A tensor of zeros (see [`Tensor::full`] for when it panics).
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Tensor::full(0.0, shape, dtype)
    }

    /// A tensor of ones (see [`Tensor::full`] for when it panics).
    pub fn ones(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Tensor::full(1.0, shape, dtype)
    }

    /// A scalar (shape `[]`).
    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::full(value, (), dtype)
    }

    /// The 1-D tensor `[start, start + step, ...]` with `n` elements, each computed in f64 and rounded
    /// once, or [`Error::OutOfMemory`].
    pub fn try_arange(start: f64, step: f64, n: usize, dtype: DType) -> Result<Tensor> {
        let mut v = crate::backend::cpu::pool::filled("arange", n, 0.0f64)?;
        for (i, x) in v.iter_mut().enumerate() {
            *x = start + step * i as f64;
        }
        Tensor::from_vec(v, [n])?.try_to_dtype(dtype)
    }

    /// [`Tensor::try_arange`] (see [`Tensor::full`] for when it panics).
    pub fn arange(start: f64, step: f64, n: usize, dtype: DType) -> Tensor {
        or_panic(Tensor::try_arange(start, step, n, dtype))
    }

    /// Standard normal samples from the counter-based Philox generator: element `i` depends only on
    /// `(seed, i)`, so the numbers are the same on any thread count and any device. Fails with
    /// [`Error::OutOfMemory`] for a shape that does not fit.
    pub fn try_randn(shape: impl Into<Shape>, dtype: DType, seed: u64) -> Result<Tensor> {
        let shape = shape.into();
        let n = numel_of("randn", &shape)?;
        let v = random::try_normal_vec(seed, n).map_err(|_| Error::oom("randn", "samples", Some(n as u128 * 8), "cpu"))?;
        Tensor::from_vec(v, shape)?.try_to_dtype(dtype)
    }

    /// [`Tensor::try_randn`] (see [`Tensor::full`] for when it panics).
    pub fn randn(shape: impl Into<Shape>, dtype: DType, seed: u64) -> Tensor {
        or_panic(Tensor::try_randn(shape, dtype, seed))
    }

    /// Uniform samples in `[lo, hi)` from the counter-based Philox generator (see [`Tensor::randn`]).
    /// Samples are drawn in f64 and rounded to `dtype`; one that rounds up to `hi` becomes the largest
    /// value of `dtype` below `hi`, so the interval stays half-open in every dtype. An empty or reversed
    /// interval, or a non-finite bound, is an [`Error::Invalid`].
    pub fn try_rand_uniform(shape: impl Into<Shape>, lo: f64, hi: f64, dtype: DType, seed: u64) -> Result<Tensor> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::Invalid { op: "rand_uniform", msg: format!("[{lo}, {hi}) is not a non-empty finite interval") });
        }
        let shape = shape.into();
        let n = numel_of("rand_uniform", &shape)?;
        let u = random::try_uniform_vec(seed, n).map_err(|_| Error::oom("rand_uniform", "samples", Some(n as u128 * 8), "cpu"))?;
        let v: Vec<f64> = u.into_iter().map(|u| lo + (hi - lo) * u).collect();
        let t = Tensor::from_vec(v, shape.clone())?.try_to_dtype(dtype)?;
        // Values that rounded up to hi step one representable value down.
        fn below<T: Element>(t: &Tensor, hi: f64) -> Result<Vec<T>> {
            let top = largest_below::<T>(hi);
            Ok(t.as_slice::<T>()?.iter().map(|&x| if x.to_f64() >= hi { top } else { x }).collect())
        }
        match dtype {
            DType::F32 => Tensor::from_vec(below::<f32>(&t, hi)?, shape),
            DType::F64 => Tensor::from_vec(below::<f64>(&t, hi)?, shape),
            DType::BF16 => Tensor::from_vec(below::<half::bf16>(&t, hi)?, shape),
            DType::F16 => Tensor::from_vec(below::<half::f16>(&t, hi)?, shape),
        }
    }

    /// [`Tensor::try_rand_uniform`] for valid arguments.
    ///
    /// # Panics
    /// Where `try_rand_uniform` returns an error (a bad interval, or no memory).
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f64, hi: f64, dtype: DType, seed: u64) -> Tensor {
        or_panic(Tensor::try_rand_uniform(shape, lo, hi, dtype, seed))
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
        self.storage.len()
    }
    /// Bytes of the buffer.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.storage.device()
    }

    fn on_device_err(&self, op: &'static str) -> Error {
        Error::device(
            op,
            format!(
                "the {} {} tensor lives on {}; copy it to the host with to_device(Device::Cpu)",
                self.shape,
                self.dtype(),
                self.device()
            ),
        )
    }

    /// Borrows the elements of a CPU tensor; the dtype must be `T`'s. A CUDA tensor is an
    /// [`Error::Device`]: copy it with [`Tensor::to_device`] or use [`Tensor::to_vec`].
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let cpu = self.storage.cpu().ok_or_else(|| self.on_device_err("as_slice"))?;
        cpu.slice::<T>()
            .ok_or_else(|| Error::DType { op: "as_slice", msg: format!("tensor holds {}, asked for {}", self.dtype(), T::DTYPE) })
    }

    /// The raw bytes of a CPU tensor's buffer (no copy); [`Error::Device`] for a CUDA tensor (see
    /// [`Tensor::as_slice`]).
    pub fn as_bytes(&self) -> Result<&[u8]> {
        Ok(self.storage.cpu().ok_or_else(|| self.on_device_err("as_bytes"))?.bytes())
    }

    /// The raw bytes, downloaded from a GPU when the tensor lives there.
    pub fn to_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        self.storage.host_bytes("to_bytes")
    }

    /// Copies the elements out (downloading from a GPU); the dtype must be `T`'s (use
    /// [`Tensor::to_vec_f64`] to convert).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let host = self.to_device(Device::Cpu)?;
        crate::backend::cpu::pool::map("to_vec", host.as_slice::<T>()?, |x| x)
    }

    /// Copies the elements out as f64 (exact for every dtype), downloading from a GPU.
    ///
    /// # Panics
    /// Only if a CUDA device fails (a kernel fault or a lost device) or the copy does not fit in memory;
    /// [`Tensor::try_to_vec_f64`] returns that as an [`Error`] instead.
    pub fn to_vec_f64(&self) -> Vec<f64> {
        or_panic(self.try_to_vec_f64())
    }

    /// [`Tensor::to_vec_f64`], with a failure as an [`Error`].
    pub fn try_to_vec_f64(&self) -> Result<Vec<f64>> {
        self.storage.to_f64("to_vec_f64")
    }

    /// The single value of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return shape_err("to_scalar", format!("tensor of shape {} has {} elements, not 1", self.shape, self.numel()));
        }
        Ok(self.try_to_vec_f64()?.first().copied().unwrap_or(f64::NAN))
    }

    /// Converts to another dtype (round to nearest even when narrowing); a no-op handle copy if equal.
    /// On a GPU the conversion runs there where a kernel exists (see [`Tensor::try_to_dtype`]).
    ///
    /// # Panics
    /// Only if a CUDA device fails or the copy does not fit in memory; [`Tensor::try_to_dtype`] returns
    /// that as an [`Error`].
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        or_panic(self.try_to_dtype(dtype))
    }

    /// [`Tensor::to_dtype`], with a failure as an [`Error`].
    pub fn try_to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        Ok(Tensor::from_storage(self.storage.cast("to_dtype", dtype)?, self.shape.clone()))
    }

    /// The same buffer under a new shape with the same element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.checked_numel() != Some(self.numel()) {
            return shape_err("reshape", format!("cannot reshape {} ({} elements) to {shape}", self.shape, self.numel()));
        }
        Ok(Tensor { storage: self.storage.clone(), shape })
    }

    /// Whether two tensors are the same bits (same dtype, shape and bytes; on any devices).
    ///
    /// # Panics
    /// Only if a CUDA device fails while downloading ([`Tensor::try_bit_eq`] returns that instead).
    pub fn bit_eq(&self, other: &Tensor) -> bool {
        or_panic(self.try_bit_eq(other))
    }

    /// [`Tensor::bit_eq`], with a device failure as an [`Error`].
    pub fn try_bit_eq(&self, other: &Tensor) -> Result<bool> {
        Ok(self.dtype() == other.dtype() && self.shape == other.shape && self.to_bytes()? == other.to_bytes()?)
    }

    /// Whether every element is finite (no NaN or infinity).
    ///
    /// # Panics
    /// Only if a CUDA device fails; [`Tensor::try_all_finite`] returns that as an [`Error`].
    pub fn all_finite(&self) -> bool {
        or_panic(self.try_all_finite())
    }

    /// [`Tensor::all_finite`], with a device failure as an [`Error`]. On a GPU a kernel counts the
    /// non-finite elements and only the count is downloaded.
    pub fn try_all_finite(&self) -> Result<bool> {
        self.storage.all_finite("all_finite")
    }

    /// Whether every element of every tensor of `ts` is finite. On a GPU the kernels add their counts
    /// into one counter per device and only that number is downloaded: one host synchronization per
    /// device for the lot, instead of one per tensor (REPLAY scans a whole training state this way).
    pub fn try_all_finite_many<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> Result<bool> {
        Storage::all_finite_many("all_finite", &ts.into_iter().map(Tensor::storage).collect::<Vec<_>>())
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

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.try_to_vec_f64() {
            Ok(v) => v,
            Err(e) => return write!(f, "Tensor({}, {}, {}, <{e}>)", self.shape, self.dtype(), self.device()),
        };
        let shown: Vec<f64> = v.iter().take(8).copied().collect();
        write!(f, "Tensor({}, {}, {}, {:?}{})", self.shape, self.dtype(), self.device(), shown, if v.len() > 8 { " ..." } else { "" })
    }
}
