//! The tensor: an immutable, contiguous, row-major buffer behind a cheap handle.
//!
//! A [`Tensor`] is a value: cloning it copies a reference count, never data, and no op mutates a tensor
//! in place. That is what lets the tape save inputs for the backward pass without defensive copies and
//! lets REPLAY hold checkpoints by handle. Differentiation happens one level up, on
//! [`crate::Var`], which wraps a tensor and a place on a tape.

use crate::dtype::{bf16_from_f64, f16_from_f64, DType, Element};
use crate::error::{invalid, shape_err, Error, Result};
use crate::random;
use crate::{Device, Shape};
use half::{bf16, f16};
use std::fmt;
use std::sync::Arc;

/// The typed buffer behind a tensor.
#[derive(Clone)]
pub(crate) enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Drop for Storage {
    /// Large f32/f64 buffers go to the CPU backend's buffer cache for reuse by later kernel outputs.
    fn drop(&mut self) {
        match self {
            Storage::F32(v) => crate::backend::cpu::pool::recycle(std::mem::take(v)),
            Storage::F64(v) => crate::backend::cpu::pool::recycle(std::mem::take(v)),
            Storage::BF16(_) | Storage::F16(_) => {}
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
        let t = Tensor::from_storage(Storage::F64(v), shape).to_dtype(dtype);
        let mut storage = Arc::try_unwrap(t.storage).unwrap_or_else(|s| (*s).clone());
        match &mut storage {
            Storage::F32(v) => below_hi(v, hi),
            Storage::F64(v) => below_hi(v, hi),
            Storage::BF16(v) => below_hi(v, hi),
            Storage::F16(v) => below_hi(v, hi),
        }
        Tensor { storage: Arc::new(storage), shape: t.shape, device: t.device }
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
        }
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Borrows the elements; the dtype must be `T`'s.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let dt = self.dtype();
        slice::<T>(&self.storage).ok_or_else(|| Error::DType { op: "as_slice", msg: format!("tensor holds {dt}, asked for {}", T::DTYPE) })
    }

    /// The raw bytes of the buffer (bytemuck cast, no copy).
    pub fn as_bytes(&self) -> &[u8] {
        match &*self.storage {
            Storage::F32(v) => bytemuck::cast_slice(v),
            Storage::F64(v) => bytemuck::cast_slice(v),
            Storage::BF16(v) => bytemuck::cast_slice(v),
            Storage::F16(v) => bytemuck::cast_slice(v),
        }
    }

    /// Copies the elements out; the dtype must be `T`'s (use [`Tensor::to_vec_f64`] to convert).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.as_slice::<T>()?.to_vec())
    }

    /// Copies the elements out as f64 (exact for every dtype).
    pub fn to_vec_f64(&self) -> Vec<f64> {
        match &*self.storage {
            Storage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Storage::F64(v) => v.clone(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Storage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        }
    }

    /// The single value of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return shape_err("to_scalar", format!("tensor of shape {} has {} elements, not 1", self.shape, self.numel()));
        }
        Ok(self.to_vec_f64()[0])
    }

    /// Converts to another dtype (round to nearest even when narrowing); a no-op handle copy if equal.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
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
        Tensor { storage: Arc::new(storage), shape: self.shape.clone(), device: self.device }
    }

    /// The same buffer under a new shape with the same element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return shape_err("reshape", format!("cannot reshape {} ({} elements) to {shape}", self.shape, self.numel()));
        }
        Ok(Tensor { storage: self.storage.clone(), shape, device: self.device })
    }

    /// Whether two tensors are the same bits (same dtype, shape and bytes).
    pub fn bit_eq(&self, other: &Tensor) -> bool {
        self.dtype() == other.dtype() && self.shape == other.shape && self.as_bytes() == other.as_bytes()
    }

    /// Whether every element is finite (no NaN or infinity).
    pub fn all_finite(&self) -> bool {
        match &*self.storage {
            Storage::F32(v) => v.iter().all(|x| x.is_finite()),
            Storage::F64(v) => v.iter().all(|x| x.is_finite()),
            Storage::BF16(v) => v.iter().all(|x| x.is_finite()),
            Storage::F16(v) => v.iter().all(|x| x.is_finite()),
        }
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
        let v = self.to_vec_f64();
        let shown: Vec<f64> = v.iter().take(8).copied().collect();
        write!(f, "Tensor({}, {}, {}, {:?}{})", self.shape, self.dtype(), self.device, shown, if v.len() > 8 { " ..." } else { "" })
    }
}
