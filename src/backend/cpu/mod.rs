//! The CPU backend: rayon-parallel, bitwise-deterministic kernels on contiguous row-major buffers.
//!
//! Parallelism is always over *outputs* in fixed-size chunks, and each output element is computed by
//! one thread in a fixed order, so results are bitwise identical for any `RAYON_NUM_THREADS`. The SIMD
//! kernels (matmul, convolution, attention, element-wise maps) have copies compiled for AVX-512 and
//! AVX2+FMA, picked at run time by [`best_isa`]; each gives the same bits as the portable code.
//!
//! [`CpuStorage`] implements [`Backend`]: each method checks the buffers' lengths against the shapes
//! it is given (an error, never a panic), picks the element type and calls the kernel. Kernel code
//! indexes slices whose lengths those checks establish.
//!
//! That is why this module, alone in the library, allows `clippy::indexing_slicing`: the kernels'
//! loops index several buffers with offsets computed from the checked geometry, and rewriting each
//! index as `get()` would hide the math without making it safer (Rust keeps the bounds checks, so a
//! bug panics at the index instead of reading past a buffer; the fuzz suite in `tests/errors.rs` and
//! the property tests look for such panics).
#![allow(clippy::indexing_slicing)]

mod attention;
mod conv;
mod copy;
mod elementwise;
pub(crate) mod float;
pub(crate) mod math;
mod matmul;
pub(crate) mod pool;
mod reduce;
pub(crate) mod simd;
mod tile;
mod transpose;
mod update;

use crate::backend::spec::{
    AttnShape, AxisView, Backend, BinaryOp, ConvMode, ConvShape, MatmulShape, Need, SoftmaxMode, UnaryOp, Update, WindowOp,
};
use crate::dtype::{bf16_from_f64, f16_from_f64, DType, Element};
use crate::error::{shape_err, Error, Result};
use crate::Device;
use float::with_float;
use half::{bf16, f16};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Elements per parallel task for element-wise work: large enough to amortize scheduling.
pub(crate) const CHUNK: usize = 1 << 14;

/// Runs `f(i, piece)` on the `chunk`-sized pieces of `out` (`chunk` > 0): on the rayon pool, or on the
/// calling thread when the whole job (`work`: about the number of elements it touches) is at most
/// [`CHUNK`], where waking the pool and waiting for it costs more than the work. Each piece is computed
/// the same way either way, so the results are the same bits.
pub(crate) fn for_chunks<T: Send>(out: &mut [T], chunk: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if work <= CHUNK {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// The instruction sets the SIMD kernels are compiled for, worst to best. Each level's
/// `#[target_feature]` copies enable exactly the features [`detect`] checks for it (a test reads the
/// sources to keep it so): `Avx2` = avx2 + fma; `Avx512` = avx512f + avx512vl + avx2 + fma.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Plain Rust, any CPU.
    Portable = 0,
    /// AVX2 with FMA.
    Avx2 = 1,
    /// AVX-512F and AVX-512VL (with AVX2 and FMA).
    Avx512 = 2,
}

impl Isa {
    /// The level's name, as `METAGRAD_MAX_ISA` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// The best level this CPU supports.
fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma");
        if avx2 && has!("avx512f") && has!("avx512vl") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The best level this CPU supports (detected once). Code compiled for a level runs only at or below
/// this one; the cap (`METAGRAD_MAX_ISA`) only steers which level callers ask for.
pub(crate) fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

/// A cap on the level used, from `METAGRAD_MAX_ISA` (`portable`, `avx2`, `avx512`; unset: no cap).
/// 255 means "not read yet".
static CAP: AtomicU8 = AtomicU8::new(255);

fn cap() -> u8 {
    let c = CAP.load(Ordering::Relaxed);
    if c != 255 {
        return c;
    }
    let c = match std::env::var("METAGRAD_MAX_ISA").as_deref() {
        Ok("portable") => 0,
        Ok("avx2") => 1,
        _ => 2,
    };
    CAP.store(c, Ordering::Relaxed);
    c
}

/// The instruction set the kernels use: the best this CPU runs, capped by `METAGRAD_MAX_ISA`. Every
/// kernel gives the same bits on every level; this only picks the fastest copy.
pub(crate) fn best_isa() -> Isa {
    match cap().min(detected() as u8) {
        0 => Isa::Portable,
        1 => Isa::Avx2,
        _ => Isa::Avx512,
    }
}

/// Caps the level for the rest of the process (tests compare the levels' bits).
#[cfg(test)]
pub(crate) fn set_isa_cap(isa: Isa) {
    CAP.store(isa as u8, Ordering::Relaxed);
}

/// See [`crate::use_calling_thread`].
pub(crate) fn use_calling_thread() -> crate::Result<()> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&v| v > 0).unwrap_or(n);
    let builder = rayon::ThreadPoolBuilder::new().num_threads(n);
    let builder = if n > 1 { builder.use_current_thread() } else { builder };
    builder.build_global().map_err(|e| crate::Error::Invalid {
        op: "use_calling_thread",
        msg: format!("rayon's global thread pool could not be set up ({e}); call this first thing in main"),
    })
}

/// Returns the CPU backend's cached memory to the allocator: the buffer cache of dead tensors and
/// every thread's attention scratch (on the calling thread and the rayon pool's).
pub(crate) fn release_memory() {
    pool::clear();
    attention::release_scratch();
    rayon::broadcast(|_| attention::release_scratch());
}

/// The typed buffer of a CPU tensor.
pub(crate) enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Drop for CpuStorage {
    /// Large f32/f64 buffers go to the buffer cache for reuse by later kernel outputs.
    fn drop(&mut self) {
        match self {
            CpuStorage::F32(v) => pool::recycle(std::mem::take(v)),
            CpuStorage::F64(v) => pool::recycle(std::mem::take(v)),
            CpuStorage::BF16(_) | CpuStorage::F16(_) => {}
        }
    }
}

impl CpuStorage {
    /// Takes ownership of `v` (no copy).
    pub(crate) fn wrap<T: Element>(v: Vec<T>) -> CpuStorage {
        // Element is sealed to the four storage types; bytemuck moves the Vec without copying when the
        // types match exactly (same size and alignment).
        match T::DTYPE {
            DType::F32 => CpuStorage::F32(bytemuck::allocation::cast_vec(v)),
            DType::F64 => CpuStorage::F64(bytemuck::allocation::cast_vec(v)),
            DType::BF16 => CpuStorage::BF16(bytemuck::allocation::cast_vec(v)),
            DType::F16 => CpuStorage::F16(bytemuck::allocation::cast_vec(v)),
        }
    }

    /// The elements as `T`, if that is their type.
    pub(crate) fn slice<T: Element>(&self) -> Option<&[T]> {
        match (self, T::DTYPE) {
            (CpuStorage::F32(v), DType::F32) => Some(bytemuck::cast_slice(v)),
            (CpuStorage::F64(v), DType::F64) => Some(bytemuck::cast_slice(v)),
            (CpuStorage::BF16(v), DType::BF16) => Some(bytemuck::cast_slice(v)),
            (CpuStorage::F16(v), DType::F16) => Some(bytemuck::cast_slice(v)),
            _ => None,
        }
    }

    /// The elements as `T`, or an [`Error::DType`] naming `op`.
    fn get<T: Element>(&self, op: &'static str) -> Result<&[T]> {
        self.slice::<T>().ok_or_else(|| Error::DType { op, msg: format!("a {} buffer where {} was expected", self.dtype(), T::DTYPE) })
    }

    /// The elements as their little-endian bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::F64(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
            CpuStorage::F16(v) => bytemuck::cast_slice(v),
        }
    }

    /// A buffer of `n` copies of `value` rounded to `dtype`.
    pub(crate) fn full(op: &'static str, value: f64, n: usize, dtype: DType) -> Result<CpuStorage> {
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(pool::filled(op, n, value as f32)?),
            DType::F64 => CpuStorage::F64(pool::filled(op, n, value)?),
            DType::BF16 => CpuStorage::BF16(pool::filled(op, n, bf16_from_f64(value))?),
            DType::F16 => CpuStorage::F16(pool::filled(op, n, f16_from_f64(value))?),
        })
    }

    /// Elements as f64 (exact for every dtype).
    pub(crate) fn to_f64(&self, op: &'static str) -> Result<Vec<f64>> {
        match self {
            CpuStorage::F32(v) => pool::map(op, v, |x| x as f64),
            CpuStorage::F64(v) => pool::map(op, v, |x| x),
            CpuStorage::BF16(v) => pool::map(op, v, |x| x.to_f64()),
            CpuStorage::F16(v) => pool::map(op, v, |x| x.to_f64()),
        }
    }
}

/// An [`Error::Shape`] unless `len == want` (a buffer that does not fit the shapes it came with).
fn fits(op: &'static str, what: &str, len: usize, want: Option<usize>) -> Result<()> {
    if want != Some(len) {
        return shape_err(op, format!("{what} holds {len} elements but its shape needs {want:?}"));
    }
    Ok(())
}

/// Indices must lie below `n`.
fn indices_below(op: &'static str, idx: &[usize], n: usize) -> Result<()> {
    match idx.iter().find(|&&i| i >= n) {
        Some(&bad) => shape_err(op, format!("index {bad} is out of range for an axis of size {n}")),
        None => Ok(()),
    }
}

/// The element count of `dims` (None on overflow).
fn count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b))
}

/// The largest offset a strided view reads, plus one (None on overflow; 0 for an empty view).
fn strided_extent(dims: &[usize], strides: &[usize], offset: usize) -> Option<usize> {
    if dims.contains(&0) {
        return Some(0);
    }
    dims.iter().zip(strides).try_fold(offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?))?.checked_add(1)
}

impl Backend for CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
        }
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
        }
    }

    fn unary(&self, op: &'static str, f: UnaryOp) -> Result<Self> {
        with_float!(op, self.dtype(), T => Ok(Self::wrap(elementwise::unary::<T>(op, self.get(op)?, f)?)))
    }

    fn binary(&self, op: &'static str, ad: &[usize], rhs: &Self, bd: &[usize], out: &[usize], f: BinaryOp) -> Result<Self> {
        fits(op, "the left operand", self.len(), count(ad))?;
        fits(op, "the right operand", rhs.len(), count(bd))?;
        let ok = |d: &[usize]| d.len() <= out.len() && d.iter().rev().zip(out.iter().rev()).all(|(&a, &o)| a == o || a == 1);
        if !ok(ad) || !ok(bd) || count(out).is_none() {
            return shape_err(op, format!("{ad:?} and {bd:?} do not broadcast to {out:?}"));
        }
        with_float!(op, self.dtype(), T => Ok(Self::wrap(elementwise::binary::<T>(op, self.get(op)?, ad, rhs.get(op)?, bd, out, f)?)))
    }

    fn sum_axis(&self, op: &'static str, v: AxisView) -> Result<Self> {
        fits(op, "the input", self.len(), v.len())?;
        with_float!(op, self.dtype(), T => Ok(Self::wrap(reduce::sum_axis::<T>(op, self.get(op)?, v)?)))
    }

    fn max_axis(&self, op: &'static str, v: AxisView) -> Result<(Self, Self)> {
        fits(op, "the input", self.len(), v.len())?;
        with_float!(op, self.dtype(), T => {
            let (vals, hot) = reduce::max_axis::<T>(op, self.get(op)?, v)?;
            Ok((Self::wrap(vals), Self::wrap(hot)))
        })
    }

    fn softmax_axis(&self, op: &'static str, v: AxisView, mode: SoftmaxMode) -> Result<Self> {
        fits(op, "the input", self.len(), v.len())?;
        with_float!(op, self.dtype(), T => Ok(Self::wrap(reduce::softmax_axis::<T>(op, self.get(op)?, v, mode)?)))
    }

    fn matmul(&self, op: &'static str, rhs: &Self, s: MatmulShape) -> Result<Self> {
        let MatmulShape { batches, m, k, n, ta, tb } = s;
        fits(op, "the left operand", self.len(), count(&[batches, m, k]))?;
        fits(op, "the right operand", rhs.len(), count(&[batches, k, n]))?;
        let out_len = count(&[batches, m, n]).ok_or_else(|| Error::oom(op, "the product", None, "cpu"))?;
        with_float!(op, self.dtype(), T => {
            let (x, w) = (self.get::<T>(op)?, rhs.get::<T>(op)?);
            let mut out = pool::for_overwrite::<T>(op, out_len)?;
            if m * n > 0 {
                let one = |(bi, c): (usize, &mut [T])| {
                    matmul::matmul_t_into(op, c, &x[bi * m * k..(bi + 1) * m * k], &w[bi * k * n..(bi + 1) * k * n], m, k, n, ta, tb)
                };
                let products = out.chunks_mut(m * n).enumerate();
                // Products too small to split (each runs on one thread) run side by side instead:
                // attention's per-head products in a small transformer. Same bits either way.
                let macs = m.saturating_mul(k).saturating_mul(n);
                if batches > 1 && macs <= matmul::SEQUENTIAL_MACS && macs.saturating_mul(batches) > matmul::SEQUENTIAL_MACS {
                    products.collect::<Vec<_>>().into_par_iter().try_for_each(one)?;
                } else {
                    products.into_iter().try_for_each(one)?;
                }
            }
            Ok(Self::wrap(out))
        })
    }

    fn copy_strided(&self, op: &'static str, dims: &[usize], strides: &[usize], offset: usize) -> Result<Self> {
        if dims.len() != strides.len() || strided_extent(dims, strides, offset).is_none_or(|e| e > self.len()) {
            return shape_err(op, format!("a view {dims:?} with strides {strides:?} from {offset} reads past {} elements", self.len()));
        }
        with_float!(op, self.dtype(), T => Ok(Self::wrap(copy::copy_strided::<T>(op, self.get(op)?, dims, strides, offset)?)))
    }

    fn place_strided(&self, op: &'static str, len: usize, dims: &[usize], strides: &[usize], offset: usize) -> Result<Self> {
        fits(op, "the input", self.len(), count(dims))?;
        if dims.len() != strides.len() || strided_extent(dims, strides, offset).is_none_or(|e| e > len) {
            return shape_err(op, format!("a view {dims:?} with strides {strides:?} from {offset} writes past {len} elements"));
        }
        with_float!(op, self.dtype(), T => Ok(Self::wrap(copy::place_strided::<T>(op, self.get(op)?, len, dims, strides, offset)?)))
    }

    fn concat(op: &'static str, parts: &[&Self], outer: usize, inner: usize) -> Result<Self> {
        let Some(first) = parts.first() else { return shape_err(op, "nothing to concatenate") };
        if parts.iter().any(|p| outer.checked_mul(inner).is_none_or(|r| r == 0 && p.len() > 0 || r > 0 && p.len() % r != 0)) {
            return shape_err(op, format!("parts do not split into {outer} rows of a multiple of {inner} elements"));
        }
        with_float!(op, first.dtype(), T => {
            let slices = parts.iter().map(|p| p.get::<T>(op)).collect::<Result<Vec<_>>>()?;
            Ok(Self::wrap(copy::concat::<T>(op, &slices, outer)?))
        })
    }

    fn index_select(&self, op: &'static str, idx: &[usize], v: AxisView) -> Result<Self> {
        fits(op, "the input", self.len(), v.len())?;
        indices_below(op, idx, v.n)?;
        with_float!(op, self.dtype(), T => Ok(Self::wrap(copy::index_select::<T>(op, self.get(op)?, idx, v)?)))
    }

    fn index_add(&self, op: &'static str, idx: &[usize], v: AxisView) -> Result<Self> {
        fits(op, "the input", self.len(), count(&[v.outer, idx.len(), v.inner]))?;
        indices_below(op, idx, v.n)?;
        with_float!(op, self.dtype(), T => Ok(Self::wrap(copy::index_add::<T>(op, self.get(op)?, idx, v)?)))
    }

    fn gather(&self, op: &'static str, idx: &[usize], v: AxisView, m: usize) -> Result<Self> {
        fits(op, "the input", self.len(), v.len())?;
        fits(op, "the index", idx.len(), count(&[v.outer, m, v.inner]))?;
        indices_below(op, idx, v.n)?;
        with_float!(op, self.dtype(), T => Ok(Self::wrap(copy::gather::<T>(op, self.get(op)?, idx, v, m)?)))
    }

    fn scatter_add(&self, op: &'static str, idx: &[usize], v: AxisView, m: usize) -> Result<Self> {
        fits(op, "the input", self.len(), count(&[v.outer, m, v.inner]))?;
        fits(op, "the index", idx.len(), count(&[v.outer, m, v.inner]))?;
        indices_below(op, idx, v.n)?;
        with_float!(op, self.dtype(), T => Ok(Self::wrap(copy::scatter_add::<T>(op, self.get(op)?, idx, v, m)?)))
    }

    fn window(&self, op: &'static str, w: WindowOp, s: &ConvShape) -> Result<Self> {
        let (input, _) = copy::window_lens(w, s).ok_or_else(|| Error::oom(op, "a window map", None, "cpu"))?;
        fits(op, "the input", self.len(), Some(input))?;
        with_float!(op, self.dtype(), T => Ok(Self::wrap(copy::window::<T>(op, self.get(op)?, w, s)?)))
    }

    fn conv(op: &'static str, mode: ConvMode, s: &ConvShape, pairs: &[(&Self, &Self)]) -> Result<Self> {
        let (x, w, y) = s.lens().ok_or_else(|| Error::oom(op, "a convolution", None, "cpu"))?;
        let (la, lb) = match mode {
            ConvMode::Forward => (x, w),
            ConvMode::InputGrad => (y, w),
            ConvMode::WeightGrad => (x, y),
        };
        let Some((first, _)) = pairs.first() else { return shape_err(op, "a convolution of no operand pairs") };
        for (a, b) in pairs {
            fits(op, "a convolution operand", a.len(), Some(la))?;
            fits(op, "a convolution operand", b.len(), Some(lb))?;
        }
        with_float!(op, first.dtype(), T => {
            let p = pairs.iter().map(|(a, b)| Ok((a.get::<T>(op)?, b.get::<T>(op)?))).collect::<Result<Vec<_>>>()?;
            Ok(Self::wrap(match mode {
                ConvMode::Forward => conv::conv2d_forward(op, s, &p)?,
                ConvMode::InputGrad => conv::conv2d_backward_input(op, s, &p)?,
                ConvMode::WeightGrad => conv::conv2d_backward_weight(op, s, &p)?,
            }))
        })
    }

    fn supports_attention(_: &AttnShape) -> bool {
        true
    }

    fn attention_forward(op: &'static str, g: &AttnShape, q: &Self, k: &Self, v: &Self) -> Result<(Self, Self)> {
        let [lq, lk, lv, _] = g.lens().ok_or_else(|| Error::oom(op, "attention", None, "cpu"))?;
        fits(op, "Q", q.len(), Some(lq))?;
        fits(op, "K", k.len(), Some(lk))?;
        fits(op, "V", v.len(), Some(lv))?;
        with_float!(op, q.dtype(), T => {
            let (o, lse) = attention::forward::<T>(op, *g, q.get(op)?, k.get(op)?, v.get(op)?)?;
            Ok((Self::wrap(o), Self::wrap(lse)))
        })
    }

    fn attention_backward(op: &'static str, g: &AttnShape, qkv: [&Self; 3], saved: [&Self; 2], d_o: &Self, need: Need) -> Result<Self> {
        let [lq, lk, lv, lo] = g.lens().ok_or_else(|| Error::oom(op, "attention", None, "cpu"))?;
        for (t, l, what) in [(qkv[0], lq, "Q"), (qkv[1], lk, "K"), (qkv[2], lv, "V"), (saved[0], lo, "O"), (d_o, lo, "dO")] {
            fits(op, what, t.len(), Some(l))?;
        }
        fits(op, "the logsumexp", saved[1].len(), Some(g.heads * g.nq))?;
        with_float!(op, qkv[0].dtype(), T => {
            let [q, k, v] = [qkv[0].get::<T>(op)?, qkv[1].get::<T>(op)?, qkv[2].get::<T>(op)?];
            Ok(Self::wrap(attention::backward::<T>(op, *g, [q, k, v], [saved[0].get(op)?, saved[1].get(op)?], d_o.get(op)?, need)?))
        })
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
        let [lq, lk, lv, lo] = g.lens().ok_or_else(|| Error::oom(op, "attention", None, "cpu"))?;
        for (t, l, what) in [(qkv[0], lq, "Q"), (qkv[1], lk, "K"), (qkv[2], lv, "V"), (saved[0], lo, "O"), (d_o, lo, "dO")] {
            fits(op, what, t.len(), Some(l))?;
        }
        fits(op, "the logsumexp", saved[1].len(), Some(g.heads * g.nq))?;
        fits(op, "the packed cotangent", cot.len(), Some(lq + lk + lv))?;
        with_float!(op, qkv[0].dtype(), T => {
            let [q, k, v] = [qkv[0].get::<T>(op)?, qkv[1].get::<T>(op)?, qkv[2].get::<T>(op)?];
            let c = cot.get::<T>(op)?;
            let (a, rest) = c.split_at(lq);
            let (b, e) = rest.split_at(lk);
            let saved = [saved[0].get(op)?, saved[1].get(op)?];
            Ok(Self::wrap(attention::backward_backward::<T>(op, *g, [q, k, v], saved, d_o.get(op)?, [a, b, e], need)?))
        })
    }

    fn update(op: &'static str, u: Update, tensors: &[&Self], hypers: &[&Self]) -> Result<Vec<Self>> {
        let Some(first) = tensors.first() else { return Ok(Vec::new()) };
        if tensors.iter().any(|t| t.len() != first.len()) || hypers.iter().any(|h| h.len() != 1) {
            return shape_err(op, "an update of tensors of different sizes, or of non-scalar hyperparameters");
        }
        with_float!(op, first.dtype(), T => {
            let ts = tensors.iter().map(|t| t.get::<T>(op)).collect::<Result<Vec<_>>>()?;
            let hs = hypers.iter().map(|h| Ok(h.get::<T>(op)?[0])).collect::<Result<Vec<T>>>()?;
            Ok(update::update::<T>(op, u, &ts, &hs)?.into_iter().map(Self::wrap).collect())
        })
    }

    fn cast(&self, op: &'static str, to: DType) -> Result<Self> {
        use pool::map as conv;
        use CpuStorage::*;
        Ok(match (self, to) {
            (F64(v), DType::F32) => F32(conv(op, v, |x| x as f32)?),
            (F32(v), DType::F64) => F64(conv(op, v, |x| x as f64)?),
            (F32(v), DType::BF16) => BF16(conv(op, v, bf16::from_f32)?),
            (F32(v), DType::F16) => F16(conv(op, v, f16::from_f32)?),
            (BF16(v), DType::F32) => F32(conv(op, v, |x| x.to_f32())?),
            (F16(v), DType::F32) => F32(conv(op, v, |x| x.to_f32())?),
            _ => {
                // Through f64, exact for every widening; narrowing rounds once (see dtype).
                let v = self.to_f64(op)?;
                match to {
                    DType::F32 => F32(conv(op, &v, |x| x as f32)?),
                    DType::F64 => F64(v),
                    DType::BF16 => BF16(conv(op, &v, bf16_from_f64)?),
                    DType::F16 => F16(conv(op, &v, f16_from_f64)?),
                }
            }
        })
    }

    fn all_finite(&self, _: &'static str) -> Result<bool> {
        // Per chunk without an early exit, so that the test vectorizes (a plain `all` stops at each
        // element); the scan still stops at the first chunk that fails.
        fn all<T: Copy>(v: &[T], finite: impl Fn(T) -> bool) -> bool {
            v.chunks(256).all(|c| c.iter().fold(true, |ok, &x| ok & finite(x)))
        }
        Ok(match self {
            CpuStorage::F32(v) => all(v, |x: f32| x.to_bits() & 0x7f80_0000 != 0x7f80_0000),
            CpuStorage::F64(v) => all(v, |x: f64| x.to_bits() & 0x7ff0_0000_0000_0000 != 0x7ff0_0000_0000_0000),
            CpuStorage::BF16(v) => all(v, |x: half::bf16| x.to_bits() & 0x7f80 != 0x7f80),
            CpuStorage::F16(v) => all(v, |x: half::f16| x.to_bits() & 0x7c00 != 0x7c00),
        })
    }
}
