//! The CUDA backend: device tensors, a caching allocator, NVRTC-compiled kernels, and the dispatch of
//! every op to them.
//!
//! **What runs on the GPU.** A tensor placed with [`crate::Tensor::to_device`] lives in device memory
//! from the device's caching allocator ([`memory_stats`], [`empty_cache`]); every op on CUDA operands
//! runs the kernels of `kernels/*.cu` (host side in `storage.rs`), so forward, backward and
//! backward-over-backward all stay on the device. The fused conv nodes run implicit-GEMM kernels
//! (`kernels/gemm.cu`) and the three fused attention ops run `kernels/attention.cu` (widths up to 128;
//! wider ones take the composite path). Optimizer updates run
//! as ops. Matmul is our own tiled kernel rather than cuBLAS: one FMA per k in ascending order, so it
//! is bitwise deterministic by construction, matches the CPU kernel's rounding sequence, and needs no
//! library settings to pin down.
//!
//! **Kernels** are compiled with NVRTC at first use for the device's compute capability and cached for
//! the process, and on disk (a per-user cache directory, `cache.rs`, keyed by source, architecture and
//! NVRTC version) for later processes. CI compiles every kernel for sm_80 and sm_90 with NVRTC installed from PyPI wheels.
//!
//! **Without a GPU**, `METAGRAD_CUDA_EMULATOR=1` makes `cuda:0` an emulated device (`emulator.rs`): the
//! same kernel sources built with the host C++ compiler and run on the CPU behind the same driver trait,
//! so the allocator, the dispatch and the kernels' logic are tested on any machine (CI does).
//!
//! Everything goes through [cudarc](https://docs.rs/cudarc) with dynamic loading: `libcuda.so.1` and
//! `libnvrtc.so.13` are opened at run time, so the crate builds and every CPU test runs on a machine
//! without CUDA. cudarc panics on the first call into a library it cannot load, so each entry point here
//! first asks cudarc's `is_culib_present` (driver and NVRTC each have one) and returns an
//! [`Error::Device`] instead.
//!
//! # CPU concepts and their CUDA counterparts
//!
//! | Concept | CPU backend | CUDA backend |
//! | --- | --- | --- |
//! | Device handle | the process | `cudarc::driver::CudaContext` (one per ordinal) |
//! | Buffer | `Vec<T>` behind an `Arc` | `cudarc::driver::CudaSlice<T>` |
//! | Read-only / mutable view | `&[T]` / `&mut [T]` | `CudaView<T>` / `CudaViewMut<T>` |
//! | Kernel | a Rust function in `backend::cpu` | an `extern "C" __global__` function in `kernels/*.cu` |
//! | Compiling a kernel | rustc, ahead of time | NVRTC at first use, for the device's `sm_XY` |
//! | Calling a kernel | a function call on rayon's pool | a launch on a `CudaStream` |
//! | Parallel worker | a rayon thread | a thread block |
//!
//! # Determinism rules
//!
//! The GPU kernels keep the crate's promise of identical bits across runs:
//! - no floating-point atomics anywhere;
//! - every reduction has a fixed tree that depends only on the shapes: a fixed block size, fixed
//!   per-thread strides and a fixed shared-memory halving tree (see `kernels/reduce.cu`), never on the
//!   grid size or on scheduling;
//! - every other kernel writes each output from exactly one thread, and scatter-adds are computed by
//!   their outputs (summing contributions in ascending index order);
//! - all work is ordered on one stream.
//!
//! GPU and CPU results agree to rounding, not bitwise: their reduction trees differ.

mod attention;
mod cache;
mod driver;
mod emulator;
mod launch;
mod memory;
mod storage;
mod update;

use crate::error::{Error, Result};
use crate::{DType, Device};
use driver::Driver;
pub(crate) use memory::Gpu;
pub use memory::MemoryStats;
use std::sync::{Arc, Mutex};
pub(crate) use storage::{all_finite_many, CudaStorage};

pub(crate) mod kernels {
    //! The CUDA C kernel sources, embedded at compile time from `kernels/*.cu`.
    //!
    //! Each entry is one translation unit: `kernels/common.cuh` (typedefs, math overloads, the
    //! determinism conventions) followed by the file. They are header-free (NVRTC has no default include
    //! path) and every entry point is `extern "C"`, named `<op>_<dtype>` (e.g. `unary_f32`,
    //! `sum_axis_f64`).

    macro_rules! unit {
        ($file:literal) => {
            ($file, concat!(include_str!("../../../kernels/common.cuh"), include_str!(concat!("../../../kernels/", $file))))
        };
    }

    /// `(file name, CUDA C source)` of every kernel file in `kernels/`, prelude included.
    pub(crate) const SOURCES: &[(&str, &str)] =
        &[unit!("elementwise.cu"), unit!("reduce.cu"), unit!("gemm.cu"), unit!("index.cu"), unit!("attention.cu")];
}

/// Whether `cuda:0` can be opened.
pub(crate) fn available() -> bool {
    gpu(0).is_ok()
}

/// Whether `METAGRAD_CUDA_EMULATOR=1` asks for the kernel emulator as `cuda:0`.
pub(crate) fn emulated() -> bool {
    std::env::var("METAGRAD_CUDA_EMULATOR").is_ok_and(|v| v == "1")
}

/// Opens device `ordinal` (see [`crate::Device::cuda`]).
pub(crate) fn open(ordinal: usize) -> Result<()> {
    gpu(ordinal).map(|_| ())
}

/// Whether a kernel converts `from` to `to` on the device (other conversions go through the host).
pub(crate) fn casts_on_device(from: DType, to: DType) -> bool {
    matches!((from, to), (DType::F32, DType::F64) | (DType::F64, DType::F32) | (DType::F32, DType::BF16) | (DType::BF16, DType::F32))
}

/// The opened device `ordinal`, opening it on first use (one per process).
pub(crate) fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    static OPEN: Mutex<Vec<(usize, Arc<Gpu>)>> = Mutex::new(Vec::new());
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, g)) = open.iter().find(|(o, _)| *o == ordinal) {
        return Ok(g.clone());
    }
    let driver: Box<dyn Driver> = if emulated() {
        if ordinal != 0 {
            return Err(Error::device("Device::cuda", format!("cannot use cuda:{ordinal}: the kernel emulator is cuda:0 only")));
        }
        Box::new(emulator::EmuDriver::new()?)
    } else {
        Box::new(driver::CudaDriver::new(open_context(ordinal)?)?)
    };
    let g = Arc::new(Gpu::new(ordinal, driver));
    open.push((ordinal, g.clone()));
    Ok(g)
}

pub(crate) fn memory_stats(device: Device) -> Result<MemoryStats> {
    Ok(gpu_of(device)?.stats())
}

pub(crate) fn reset_peak_memory(device: Device) -> Result<()> {
    gpu_of(device)?.reset_peak();
    Ok(())
}

pub(crate) fn empty_cache(device: Device) -> Result<()> {
    gpu_of(device)?.empty_cache()
}

pub(crate) fn device_name(device: Device) -> Result<String> {
    Ok(gpu_of(device)?.driver.name())
}

pub(crate) fn synchronize(device: Device) -> Result<()> {
    gpu_of(device)?.synchronize()
}

pub(crate) fn gpu_of(device: Device) -> Result<Arc<Gpu>> {
    match device {
        Device::Cuda(n) => gpu(n),
        d => Err(Error::device("cuda", format!("{d} is not a CUDA device"))),
    }
}

/// Opens the primary context of device `ordinal`, with a clear error when that is impossible.
fn open_context(ordinal: usize) -> Result<Arc<cudarc::driver::CudaContext>> {
    const OP: &str = "Device::cuda";
    let msg = |what: &str| format!("cannot use cuda:{ordinal}: {what}");
    // SAFETY: only tries to load the driver library (dlopen) and drops it; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::device(OP, msg("the CUDA driver library (libcuda.so.1) was not found; is an NVIDIA driver installed?")));
    }
    cudarc::driver::result::init().map_err(|e| Error::device_from(OP, msg("the CUDA driver failed to initialize"), e))?;
    let count = cudarc::driver::result::device::get_count().map_err(|e| Error::device_from(OP, msg("cannot count devices"), e))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::device(OP, msg(&format!("the driver reports {count} CUDA device(s)"))));
    }
    cudarc::driver::CudaContext::new(ordinal).map_err(|e| Error::device_from(OP, msg("cannot create a context"), e))
}

/// Whether NVRTC (`libnvrtc.so.13`) can be loaded, e.g. from `LD_LIBRARY_PATH`. Never panics.
pub(crate) fn nvrtc_available() -> bool {
    // SAFETY: only tries to load the library (dlopen) and drops it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles the CUDA C source `src` (named `name` in diagnostics) to PTX for `arch`, e.g. `"sm_90"`.
///
/// Checks that NVRTC is present first (cudarc would panic otherwise), so this returns
/// [`Error::Device`] on a machine without it. A source that does not compile gives [`Error::Invalid`]
/// with NVRTC's log.
pub(crate) fn compile_ptx(name: &str, src: &str, arch: &str) -> Result<String> {
    const OP: &str = "cuda::compile_ptx";
    if !nvrtc_available() {
        return Err(Error::device(OP, format!("cannot compile {name}: NVRTC (libnvrtc.so.13) was not found")));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        // `arch` is a `&'static str` in cudarc's options; pass the flag as a plain option instead.
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some(name.to_string()),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(src, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. }) => {
            Err(Error::Invalid { op: OP, msg: format!("{name} for {arch}: {nvrtc:?}\n{}", log.to_string_lossy()) })
        }
        Err(e) => Err(Error::Invalid { op: OP, msg: format!("{name} for {arch}: {e}") }),
    }
}
