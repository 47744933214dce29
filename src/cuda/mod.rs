//! The CUDA side of metagrad, as users see it: device queries, the caching allocator's counters, the
//! NVRTC compile path, and custom kernels ([`Kernel`]).
//!
//! Tensors move to a GPU with [`crate::Tensor::to_device`] and [`crate::Device::cuda`]; every op then
//! runs there (see the crate README's CUDA section for what runs how). This module exists whether or
//! not the crate was built with the `cuda` cargo feature (on by default): without it, queries answer
//! "no device" and everything else returns an [`crate::Error::Device`] saying so, so code written
//! against it compiles either way.

mod kernel;
#[cfg(not(feature = "cuda"))]
mod stub;

#[cfg(feature = "cuda")]
use crate::backend::cuda as imp;
use crate::error::Result;
use crate::Device;
#[cfg(not(feature = "cuda"))]
use stub as imp;

pub use imp::MemoryStats;
pub use kernel::{Kernel, KernelArg};

/// Whether a CUDA device (or, with `METAGRAD_CUDA_EMULATOR=1`, the kernel emulator) can be used as
/// `cuda:0`. Never panics; always `false` without the `cuda` feature.
pub fn available() -> bool {
    imp::available()
}

/// Whether `METAGRAD_CUDA_EMULATOR=1` asks for the kernel emulator in place of a GPU as `cuda:0`.
pub fn emulated() -> bool {
    imp::emulated()
}

impl Device {
    /// CUDA device `ordinal`, checked to exist: the driver is loaded and a context is created on it.
    ///
    /// Returns [`crate::Error::Device`] naming the ordinal and the reason when there is no driver, no
    /// device, no device with that ordinal, or no CUDA support in this build; never panics. With
    /// `METAGRAD_CUDA_EMULATOR=1`, `cuda:0` is the kernel emulator (see [`emulated`]).
    pub fn cuda(ordinal: usize) -> Result<Device> {
        imp::open(ordinal).map(|()| Device::Cuda(ordinal))
    }

    /// The best device to place tensors on: `cuda:0` when a CUDA device can be opened (or the kernel
    /// emulator is asked for), else the CPU. Never panics.
    pub fn best() -> Device {
        if available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }
}

/// The allocator counters of `device` (a CUDA device already in use).
pub fn memory_stats(device: Device) -> Result<MemoryStats> {
    imp::memory_stats(device)
}

/// Restarts `device`'s peak-memory counter from the bytes in use now (to measure one workload).
pub fn reset_peak_memory(device: Device) -> Result<()> {
    imp::reset_peak_memory(device)
}

/// Returns `device`'s cached free buffers to the driver (live tensors are untouched).
pub fn empty_cache(device: Device) -> Result<()> {
    imp::empty_cache(device)
}

/// The name of the GPU behind `device`, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
pub fn device_name(device: Device) -> Result<String> {
    imp::device_name(device)
}

/// Waits until every kernel queued on `device` has finished (for timing); reports a kernel fault.
pub fn synchronize(device: Device) -> Result<()> {
    imp::synchronize(device)
}

/// Whether NVRTC (`libnvrtc.so.13`) can be loaded, e.g. from `LD_LIBRARY_PATH`. Never panics; always
/// `false` without the `cuda` feature.
pub fn nvrtc_available() -> bool {
    imp::nvrtc_available()
}

/// Compiles the CUDA C source `src` (named `name` in diagnostics) to PTX for `arch`, e.g. `"sm_90"`.
///
/// Returns [`crate::Error::Device`] when NVRTC is missing (or the crate has no CUDA support), and
/// [`crate::Error::Invalid`] with NVRTC's log for a source that does not compile.
pub fn compile_ptx(name: &str, src: &str, arch: &str) -> Result<String> {
    imp::compile_ptx(name, src, arch)
}

/// `(file name, CUDA C source)` of every kernel file in `kernels/`, prelude included (empty without
/// the `cuda` feature).
pub fn kernel_sources() -> &'static [(&'static str, &'static str)] {
    imp::kernels::SOURCES
}
