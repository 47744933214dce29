//! The CUDA API of a build without the `cuda` cargo feature: no device, and clear errors.

use crate::error::{Error, Result};
use crate::Device;

/// Counters of one device: its caching allocator and its host transfers (see [`super::memory_stats`]).
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

pub(crate) use crate::backend::not_built;

fn ordinal(d: Device) -> usize {
    match d {
        Device::Cuda(n) => n,
        Device::Cpu => 0,
    }
}

pub(crate) fn available() -> bool {
    false
}
pub(crate) fn emulated() -> bool {
    std::env::var("METAGRAD_CUDA_EMULATOR").is_ok_and(|v| v == "1")
}
pub(crate) fn open(ordinal: usize) -> Result<()> {
    Err(not_built("Device::cuda", ordinal))
}
pub(crate) fn memory_stats(d: Device) -> Result<MemoryStats> {
    Err(not_built("memory_stats", ordinal(d)))
}
pub(crate) fn reset_peak_memory(d: Device) -> Result<()> {
    Err(not_built("reset_peak_memory", ordinal(d)))
}
pub(crate) fn empty_cache(d: Device) -> Result<()> {
    Err(not_built("empty_cache", ordinal(d)))
}
pub(crate) fn device_name(d: Device) -> Result<String> {
    Err(not_built("device_name", ordinal(d)))
}
pub(crate) fn synchronize(d: Device) -> Result<()> {
    Err(not_built("synchronize", ordinal(d)))
}
pub(crate) fn nvrtc_available() -> bool {
    false
}
pub(crate) fn compile_ptx(name: &str, _src: &str, _arch: &str) -> Result<String> {
    Err(Error::device("cuda::compile_ptx", format!("cannot compile {name}: metagrad was built without its `cuda` cargo feature")))
}

pub(crate) mod kernels {
    /// No kernel sources in this build.
    pub(crate) const SOURCES: &[(&str, &str)] = &[];
}
