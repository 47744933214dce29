//! A small cache of freed f32/f64 tensor buffers, reused by later kernel outputs of the same length.
//!
//! A backward-over-backward allocates and frees dozens of same-sized buffers per step. Large ones come
//! from fresh pages (mmap, or a heap top that malloc trimmed on the previous free), so every output
//! first pays a page fault per 4 KiB: on the MLP benchmark that was about a fifth of the time. Buffers
//! of tensors that die go here instead (bounded by [`CAP_BYTES`]); [`zeroed`] hands one back zero
//! filled, so a kernel sees exactly what `vec![0; n]` would give: values never depend on the cache.

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use std::sync::Mutex;

/// Buffers smaller than this go straight back to malloc (cheap to get again).
const MIN_BYTES: usize = 64 << 10;
/// The most bytes the cache holds; beyond it the oldest buffers are freed.
const CAP_BYTES: usize = 256 << 20;

struct Pool {
    f32: Vec<Vec<f32>>,
    f64: Vec<Vec<f64>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { f32: Vec::new(), f64: Vec::new(), bytes: 0 });

fn take<U: Copy>(list: &mut Vec<Vec<U>>, bytes: &mut usize, n: usize) -> Option<Vec<U>> {
    let i = list.iter().rposition(|v| v.len() == n)?;
    *bytes -= n * std::mem::size_of::<U>();
    Some(list.remove(i))
}

fn put<U: Copy>(list: &mut Vec<Vec<U>>, bytes: &mut usize, v: Vec<U>) {
    *bytes += v.len() * std::mem::size_of::<U>();
    list.push(v);
}

fn cached<T: Element>(n: usize) -> Option<Vec<T>> {
    if n.saturating_mul(std::mem::size_of::<T>()) < MIN_BYTES {
        return None;
    }
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let p = &mut *guard;
    match T::DTYPE {
        DType::F32 => take(&mut p.f32, &mut p.bytes, n).map(bytemuck::allocation::cast_vec::<f32, T>),
        DType::F64 => take(&mut p.f64, &mut p.bytes, n).map(bytemuck::allocation::cast_vec::<f64, T>),
        _ => None,
    }
}

/// A new buffer of `n` copies of `v`, or [`Error::OutOfMemory`] naming `op` when the allocation fails
/// or its size overflows (never an abort). A zero `v` (all bytes zero) comes from the allocator's zeroed
/// memory (`calloc`: large blocks are fresh pages, zero already), so nothing is written up front; a
/// checkpoint arena of hundreds of megabytes costs no pass over memory before it is used.
pub(crate) fn filled<T: bytemuck::Pod>(op: &'static str, n: usize, v: T) -> Result<Vec<T>> {
    let oom = || Error::oom(op, "a result buffer", (n as u128).checked_mul(std::mem::size_of::<T>() as u128), "cpu");
    if n.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(oom());
    }
    if n > 0 && std::mem::size_of::<T>() > 0 && bytemuck::bytes_of(&v).iter().all(|&b| b == 0) {
        let layout = std::alloc::Layout::array::<T>(n).map_err(|_| oom())?;
        // SAFETY: the layout's size is nonzero (n > 0, T not zero-sized); all-zero bytes are a valid T
        // (Pod); the pointer comes from the global allocator with T's array layout of capacity n, as
        // Vec::from_raw_parts requires, and all n elements are initialized (zeroed).
        unsafe {
            let p = std::alloc::alloc_zeroed(layout).cast::<T>();
            if p.is_null() {
                return Err(oom());
            }
            return Ok(Vec::from_raw_parts(p, n, n));
        }
    }
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| oom())?;
    out.resize(n, v);
    Ok(out)
}

/// `f` of every element of `v`, into a buffer from the cache when one fits (see [`for_overwrite`]).
pub(crate) fn map<A: Copy, B: Element>(op: &'static str, v: &[A], f: impl Fn(A) -> B) -> Result<Vec<B>> {
    let mut out = for_overwrite(op, v.len())?;
    for (o, &x) in out.iter_mut().zip(v) {
        *o = f(x);
    }
    Ok(out)
}

/// A buffer of `n` zeros: a cached one of that length if there is one, else a new allocation.
pub(crate) fn zeroed<T: Element>(op: &'static str, n: usize) -> Result<Vec<T>> {
    let zero = T::from_f64(0.0);
    match cached(n) {
        Some(mut v) => {
            v.fill(zero);
            Ok(v)
        }
        None => filled(op, n, zero),
    }
}

/// A buffer of `n` elements whose contents are unspecified (stale values of a dead tensor, or zeros):
/// only for outputs the caller overwrites *entirely*, which saves zero filling. Debug builds fill it
/// with NaN so that an element left unwritten shows up in the tests.
pub(crate) fn for_overwrite<T: Element>(op: &'static str, n: usize) -> Result<Vec<T>> {
    let poison = T::from_f64(if cfg!(debug_assertions) { f64::NAN } else { 0.0 });
    match cached(n) {
        Some(mut v) => {
            if cfg!(debug_assertions) {
                v.fill(poison);
            }
            Ok(v)
        }
        None => filled(op, n, poison),
    }
}

/// The host block of the last checkpoint arena dropped (see [`take_block`]).
static BLOCK: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// A block of `n` words for a checkpoint arena, contents unspecified: the last arena's block when it
/// has at least `n` words and at most twice that (so a loop of metagradients, each with an arena of
/// the same size, touches fresh pages once: faulting in a 160 MB store-all arena was a fifth of its
/// metagradient's time), else a new zeroed allocation.
pub(crate) fn take_block(op: &'static str, n: usize) -> Result<Vec<u64>> {
    let mut kept = BLOCK.lock().unwrap_or_else(|e| e.into_inner());
    if kept.len() >= n && kept.len() / 2 <= n {
        let mut v = std::mem::take(&mut *kept);
        v.truncate(n);
        return Ok(v);
    }
    drop(kept);
    filled(op, n, 0u64)
}

/// Keeps a dropped arena's block for [`take_block`] (replacing the one kept before).
pub(crate) fn keep_block(v: Vec<u64>) {
    if v.len() * 8 >= MIN_BYTES {
        *BLOCK.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

/// Frees every cached buffer.
pub(crate) fn clear() {
    *BLOCK.lock().unwrap_or_else(|e| e.into_inner()) = Vec::new();
    let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
    p.f32.clear();
    p.f64.clear();
    p.bytes = 0;
}

/// Takes a dying buffer into the cache (large f32/f64 ones only), evicting the oldest past the cap.
pub(crate) fn recycle<T: Element>(v: Vec<T>) {
    if v.len() * std::mem::size_of::<T>() < MIN_BYTES || v.len() * std::mem::size_of::<T>() > CAP_BYTES / 4 {
        return;
    }
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let p = &mut *guard;
    match T::DTYPE {
        DType::F32 => put(&mut p.f32, &mut p.bytes, bytemuck::allocation::cast_vec::<T, f32>(v)),
        DType::F64 => put(&mut p.f64, &mut p.bytes, bytemuck::allocation::cast_vec::<T, f64>(v)),
        _ => return,
    }
    while p.bytes > CAP_BYTES {
        // Evict from whichever list holds the oldest-pushed large share: simply the longer one's head.
        let (a, b) = (p.f32.len(), p.f64.len());
        if a >= b && a > 0 {
            p.bytes -= p.f32.remove(0).len() * 4;
        } else if b > 0 {
            p.bytes -= p.f64.remove(0).len() * 8;
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_buffers_come_back_zeroed() {
        let n = 1 << 16;
        let v: Vec<f32> = vec![3.5; n];
        recycle(v);
        let w: Vec<f32> = zeroed("test", n).unwrap();
        assert_eq!(w.len(), n);
        assert!(w.iter().all(|&x| x.to_bits() == 0));
        let small: Vec<f64> = zeroed("test", 3).unwrap();
        assert_eq!(small, vec![0.0; 3]);
    }

    #[test]
    fn huge_buffers_are_an_error_not_an_abort() {
        let e = zeroed::<f32>("op", 1 << 61).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { op: "op", .. }), "{e}");
        assert!(filled::<f64>("op", usize::MAX, 0.0).is_err());
    }
}
