//! The CUDA backend, first slice: device detection, kernel sources and their NVRTC compilation.
//!
//! **What exists today.** [`available`] tells whether a CUDA driver and device 0 can be used,
//! [`Device::cuda`] opens a device and names the reason when it cannot, [`kernels::SOURCES`] holds the
//! CUDA C kernels from `kernels/*.cu`, and [`compile_ptx`] compiles them to PTX with NVRTC. CI compiles
//! every kernel for sm_80 and sm_90 with NVRTC installed from PyPI wheels. **No op runs on the GPU yet**:
//! tensors live on the CPU, and [`Device::best`] returns the CPU until they do.
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
//! # Plan
//!
//! Later slices add device storage to [`crate::Tensor`] (with a caching allocator so that steady-state
//! training steps make no driver allocations), compile [`kernels::SOURCES`] once per process for the
//! device's compute capability, and dispatch every op to these kernels when its operands live on
//! `Device::Cuda(n)`; only then will [`Device::best`] pick CUDA.
//!
//! # Determinism rules
//!
//! The GPU kernels keep the crate's promise of identical bits across runs:
//! - no floating-point atomics anywhere;
//! - every reduction has a fixed tree that depends only on the shapes: a fixed block size, fixed
//!   per-thread strides and a fixed shared-memory halving tree (see `kernels/reduce.cu`), never on the
//!   grid size or on scheduling;
//! - element-wise kernels write each output from exactly one thread.
//!
//! GPU and CPU results agree to rounding, not bitwise: their reduction trees differ.

use crate::error::{Error, Result};
use crate::Device;

pub mod kernels {
    //! The CUDA C kernel sources, embedded at compile time from `kernels/*.cu`.
    //!
    //! They are header-free (NVRTC has no default include path) and every entry point is `extern "C"`,
    //! named `<op>_<dtype>` (e.g. `exp_f32`, `sum_axis_f64`).

    /// `(name, CUDA C source)` of every kernel file, in `kernels/`.
    pub const SOURCES: &[(&str, &str)] =
        &[("elementwise.cu", include_str!("../../../kernels/elementwise.cu")), ("reduce.cu", include_str!("../../../kernels/reduce.cu"))];
}

/// Whether the CUDA driver library is loadable and device 0 can be opened.
///
/// Never panics; returns `false` on a machine without a driver or without a GPU.
pub fn available() -> bool {
    open(0).is_ok()
}

/// Opens the primary context of device `ordinal`, with a clear error when that is impossible.
fn open(ordinal: usize) -> Result<std::sync::Arc<cudarc::driver::CudaContext>> {
    let err = |msg: String| Error::Device { op: "Device::cuda", msg: format!("cannot use cuda:{ordinal}: {msg}") };
    // SAFETY: only tries to load the driver library (dlopen) and drops it; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(err("the CUDA driver library (libcuda.so.1) was not found; is an NVIDIA driver installed?".into()));
    }
    cudarc::driver::result::init().map_err(|e| err(format!("the CUDA driver failed to initialize ({e})")))?;
    let count = cudarc::driver::result::device::get_count().map_err(|e| err(format!("cannot count devices ({e})")))?;
    if ordinal >= count.max(0) as usize {
        return Err(err(format!("the driver reports {count} CUDA device(s)")));
    }
    cudarc::driver::CudaContext::new(ordinal).map_err(|e| err(format!("cannot create a context ({e})")))
}

impl Device {
    /// CUDA device `ordinal`, checked to exist: the driver is loaded and a context is created on it.
    ///
    /// Returns [`Error::Device`] naming the ordinal and the reason when there is no driver, no device
    /// or no device with that ordinal; never panics. Tensors cannot be placed on the returned device yet
    /// (no op runs on the GPU in this version).
    pub fn cuda(ordinal: usize) -> Result<Device> {
        open(ordinal).map(|_| Device::Cuda(ordinal))
    }
}

/// Whether NVRTC (`libnvrtc.so.13`) can be loaded, e.g. from `LD_LIBRARY_PATH`. Never panics.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to load the library (dlopen) and drops it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles the CUDA C source `src` (named `name` in diagnostics) to PTX for `arch`, e.g. `"sm_90"`.
///
/// Checks that NVRTC is present first (cudarc would panic otherwise), so this returns
/// [`Error::Device`] on a machine without it. A source that does not compile gives [`Error::Invalid`]
/// with NVRTC's log.
pub fn compile_ptx(name: &str, src: &str, arch: &str) -> Result<String> {
    const OP: &str = "cuda::compile_ptx";
    if !nvrtc_available() {
        return Err(Error::Device { op: OP, msg: format!("cannot compile {name}: NVRTC (libnvrtc.so.13) was not found") });
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
