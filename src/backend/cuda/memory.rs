//! Device memory: a caching allocator, so that steady-state training makes no driver allocations.
//!
//! Freed buffers go to per-size-class free lists instead of back to the driver; the next request of that
//! class reuses one. Size classes are 512 bytes up to 512 B, then four per power of two (at most 25%
//! slack). Every launch and copy is ordered on the device's one stream, so a buffer returned to the
//! cache while a queued kernel still reads it is safe to hand out again: the next writer is queued
//! behind that kernel. When the driver runs out of memory, the cache is released and the allocation
//! retried once. [`super::memory_stats`] reports what the allocator did.

use super::driver::Driver;
use crate::error::{Error, Result};
use crate::Device;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counters of one device: its caching allocator and its host transfers (see [`crate::cuda::memory_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Allocations that went to the driver (cache misses) since the device was opened.
    pub driver_allocs: u64,
    /// Allocations served from the cache.
    pub cache_hits: u64,
    /// Bytes held by live tensors (rounded up to size classes).
    pub bytes_in_use: usize,
    /// Bytes held in the cache, free for reuse.
    pub bytes_cached: usize,
    /// The most bytes ever in use at once.
    pub peak_bytes_in_use: usize,
    /// Copies from the host to the device (index lists, `to_device`).
    pub uploads: u64,
    /// Copies from the device to the host; each waits for all queued work, so it is a host
    /// synchronization (`to_vec`, non-finite checks, arena stores to host memory).
    pub downloads: u64,
    /// Explicit waits for the device ([`crate::cuda::synchronize`], releasing the cache).
    pub synchronizations: u64,
}

/// An opened device: its driver and its allocator.
pub(crate) struct Gpu {
    pub(crate) ordinal: usize,
    pub(crate) driver: Box<dyn Driver>,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<u64>>,
    stats: MemoryStats,
}

/// The most bytes one buffer may have: requests above it cannot be satisfied by any device and would
/// overflow the size-class arithmetic.
const MAX_BYTES: usize = 1 << 56;

/// The size class of a request of `bytes` (at most [`MAX_BYTES`]).
fn class(bytes: usize) -> usize {
    if bytes <= 512 {
        return 512;
    }
    let quarter = (bytes.next_power_of_two() / 8).max(512);
    bytes.div_ceil(quarter) * quarter
}

impl Gpu {
    pub(crate) fn new(ordinal: usize, driver: Box<dyn Driver>) -> Gpu {
        Gpu { ordinal, driver, pool: Mutex::new(Pool::default()) }
    }

    /// The device this is.
    pub(crate) fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    /// A buffer of at least `bytes` bytes (uninitialized), or [`Error::OutOfMemory`] naming `op`.
    pub(crate) fn alloc(self: &Arc<Self>, op: &'static str, bytes: usize) -> Result<Buf> {
        if bytes > MAX_BYTES {
            return Err(Error::oom(op, "a device buffer", Some(bytes as u128), self.device()));
        }
        let size = class(bytes);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let ptr = match pool.free.get_mut(&size).and_then(Vec::pop) {
            Some(p) => {
                pool.stats.cache_hits += 1;
                pool.stats.bytes_cached -= size;
                p
            }
            None => {
                let p = match self.driver.malloc(size) {
                    Ok(p) => p,
                    Err(_) => {
                        // Out of memory, perhaps only because of the cache: release it and retry once.
                        Self::release_cache(self.driver.as_ref(), &mut pool)?;
                        self.driver.malloc(size).map_err(|e| Error::OutOfMemory {
                            op,
                            msg: format!(
                                "cannot allocate {bytes} bytes on {} ({} in use by tensors; the driver said: {e})",
                                self.device(),
                                pool.stats.bytes_in_use
                            ),
                        })?
                    }
                };
                pool.stats.driver_allocs += 1;
                p
            }
        };
        pool.stats.bytes_in_use += size;
        pool.stats.peak_bytes_in_use = pool.stats.peak_bytes_in_use.max(pool.stats.bytes_in_use);
        Ok(Buf { ptr, size, gpu: self.clone() })
    }

    fn release_cache(driver: &dyn Driver, pool: &mut Pool) -> Result<()> {
        pool.stats.synchronizations += 1;
        driver.synchronize()?;
        for (_, ptrs) in pool.free.drain() {
            ptrs.into_iter().for_each(|p| driver.free(p));
        }
        pool.stats.bytes_cached = 0;
        Ok(())
    }

    /// Copies host bytes to the device (counted in [`MemoryStats::uploads`]).
    pub(crate) fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).stats.uploads += 1;
        self.driver.htod(dst, src)
    }

    /// Copies device bytes to the host after all queued work (counted in [`MemoryStats::downloads`]).
    pub(crate) fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).stats.downloads += 1;
        self.driver.dtoh(dst, src)
    }

    /// Waits for all queued work (counted in [`MemoryStats::synchronizations`]).
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).stats.synchronizations += 1;
        self.driver.synchronize()
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).stats
    }

    pub(crate) fn reset_peak(&self) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.stats.peak_bytes_in_use = pool.stats.bytes_in_use;
    }

    pub(crate) fn empty_cache(&self) -> Result<()> {
        Self::release_cache(self.driver.as_ref(), &mut self.pool.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A device buffer from the caching allocator; dropping it returns it to the cache.
pub(crate) struct Buf {
    pub(crate) ptr: u64,
    size: usize,
    pub(crate) gpu: Arc<Gpu>,
}

impl Drop for Buf {
    fn drop(&mut self) {
        let mut pool = self.gpu.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.free.entry(self.size).or_default().push(self.ptr);
        pool.stats.bytes_in_use -= self.size;
        pool.stats.bytes_cached += self.size;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_classes_cover_requests_with_at_most_a_quarter_slack() {
        for b in
            [1usize, 512, 513, 1000, 4096, 4097, 1 << 20, (1 << 20) + 1, 3_000_000, 123_456_789, super::MAX_BYTES - 1, super::MAX_BYTES]
        {
            let c = super::class(b);
            assert!(c >= b && (c <= 512 || c - b <= b / 4 + 512), "{b} -> {c}");
        }
        assert_eq!(super::class(4097), 5120);
    }
}
