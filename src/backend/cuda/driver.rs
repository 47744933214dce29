//! What the CUDA backend needs from a device, as a trait: raw device memory, copies, and kernel
//! launches by name on one in-order stream. Two implementations: [`CudaDriver`] (a real GPU through
//! cudarc) and the host emulator in [`super::emulator`], so that everything above this trait (the
//! caching allocator, the op dispatch, the kernels' logic) is tested on machines without a GPU too.

use super::cache;
use crate::error::{Error, Result};
use cudarc::driver::{result, CudaContext, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

/// A device: memory, copies and launches, all ordered on one stream (so no kernel ever races another,
/// and a buffer freed to the cache can be reused by the next launch without a synchronization).
pub(crate) trait Driver: Send + Sync {
    /// A human-readable name, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
    fn name(&self) -> String;
    /// Allocates `bytes` (> 0) of device memory.
    fn malloc(&self, bytes: usize) -> Result<u64>;
    /// Frees memory from [`Driver::malloc`].
    fn free(&self, ptr: u64);
    /// Copies host bytes to the device (returns once `src` may be reused).
    fn htod(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Copies device bytes to the host, after all work queued before it.
    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()>;
    /// Copies `bytes` bytes from `src` to `dst` on the device (ordered on the stream).
    fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Zeroes `bytes` bytes at `dst`.
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()>;
    /// Launches kernel `name` (one of `kernels::SOURCES`) with `params` laid out as for
    /// `cuLaunchKernel`: one pointer to each argument's value.
    fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], params: &mut [*mut c_void]) -> Result<()>;
    /// Launches kernel `name` of the CUDA C translation unit `source` (a custom kernel), compiling and
    /// loading it on first use and caching it under `key` (a hash of the source).
    fn launch_source(&self, key: u64, source: &str, name: &str, grid: [u32; 3], block: [u32; 3], params: &mut [*mut c_void]) -> Result<()>;
    /// Waits for all queued work; reports a kernel fault.
    fn synchronize(&self) -> Result<()>;
}

/// A real GPU: its primary context, the default stream, and the kernels compiled once with NVRTC for
/// its compute capability.
pub(crate) struct CudaDriver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    modules: OnceLock<std::result::Result<Vec<Arc<CudaModule>>, String>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Modules of custom kernels, by key.
    user: Mutex<HashMap<u64, Arc<CudaModule>>>,
}

fn dev_err(op: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::device_from(op, "the CUDA driver reported an error", e)
}

impl CudaDriver {
    pub(crate) fn new(ctx: Arc<CudaContext>) -> Result<CudaDriver> {
        let (major, minor) = ctx.compute_capability().map_err(|e| dev_err("Device::cuda", e))?;
        let stream = ctx.default_stream();
        let arch = format!("sm_{major}{minor}");
        Ok(CudaDriver {
            ctx,
            stream,
            arch,
            modules: OnceLock::new(),
            functions: Mutex::new(HashMap::new()),
            user: Mutex::new(HashMap::new()),
        })
    }

    /// The kernel `name`, compiling and loading every kernel file on first use.
    fn function(&self, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(f.clone());
        }
        let modules = self.modules.get_or_init(|| {
            super::kernels::SOURCES
                .iter()
                .map(|(file, src)| {
                    let ptx = cached_ptx(file, src, &self.arch)?;
                    self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| format!("loading {file}: {e}"))
                })
                .collect()
        });
        let modules = modules.as_ref().map_err(|e| Error::device("cuda kernels", e.clone()))?;
        let f = modules
            .iter()
            .find_map(|m| m.load_function(name).ok())
            .ok_or_else(|| Error::device("cuda kernels", format!("no kernel named {name} in kernels/*.cu")))?;
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), f.clone());
        Ok(f)
    }
}

impl CudaDriver {
    /// Launches `f` (named `name`) on the stream.
    ///
    /// # Safety
    /// `params` must point to values of exactly the kernel's parameter types, alive for the call
    /// (cuLaunchKernel copies them).
    unsafe fn run(&self, f: &CudaFunction, name: &str, grid: [u32; 3], block: [u32; 3], params: &mut [*mut c_void]) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("cuda launch", e))?;
        // SAFETY: the caller's contract.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                0,
                self.stream.cu_stream(),
                params,
            )
        }
        .map_err(|e| Error::device_from("cuda launch", format!("launching {name}"), e))
    }
}

/// NVRTC's version, e.g. "13.0" (None without NVRTC).
fn nvrtc_version() -> Option<String> {
    if !super::nvrtc_available() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); the call only writes the two integers.
    let ok = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) } == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS;
    ok.then(|| format!("{major}.{minor}"))
}

/// The PTX of one kernel file for `arch`, compiled with NVRTC or read from the per-user kernel cache
/// (`cache.rs`; keyed by a hash of the source, the architecture and the NVRTC version), so that every
/// process after the first skips the compile.
fn cached_ptx(file: &str, src: &str, arch: &str) -> std::result::Result<String, String> {
    let version = nvrtc_version().unwrap_or_default();
    let key = cache::fnv(&[src.as_bytes(), arch.as_bytes(), version.as_bytes()]);
    let path = cache::dir().map(|d| d.join(format!("{}-{arch}-{key:016x}.ptx", file.trim_end_matches(".cu"))));
    if let Some(ptx) = path.as_ref().ok().and_then(|p| cache::read(p)).and_then(|b| String::from_utf8(b).ok()) {
        return Ok(ptx);
    }
    let ptx = super::compile_ptx(file, src, arch).map_err(|e| e.to_string())?;
    if let Ok(p) = &path {
        cache::write(p, ptx.as_bytes());
    }
    Ok(ptx)
}

impl Driver for CudaDriver {
    fn name(&self) -> String {
        format!("{} ({})", self.ctx.name().unwrap_or_else(|_| "CUDA device".into()), self.arch)
    }
    fn malloc(&self, bytes: usize) -> Result<u64> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("cuda malloc", e))?;
        // SAFETY: a plain allocation in the bound context.
        unsafe { result::malloc_sync(bytes) }.map_err(|e| Error::device_from("cuda malloc", format!("{bytes} bytes"), e))
    }
    fn free(&self, ptr: u64) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from malloc_sync and no queued work uses it (the caller synchronized).
            let _ = unsafe { result::free_sync(ptr) };
        }
    }
    fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("cuda upload", e))?;
        // SAFETY: dst holds at least src.len() bytes (the allocator's contract); synchronous copy.
        unsafe { result::memcpy_htod_sync(dst, src) }.map_err(|e| dev_err("cuda upload", e))
    }
    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("cuda download", e))?;
        self.stream.synchronize().map_err(|e| dev_err("cuda download (a kernel failed)", e))?;
        // SAFETY: src holds at least dst.len() bytes; synchronous copy after the stream drained.
        unsafe { result::memcpy_dtoh_sync(dst, src) }.map_err(|e| dev_err("cuda download", e))
    }
    fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("cuda copy", e))?;
        // SAFETY: both ranges lie in live allocations (the caller's contract); ordered on the stream.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }.map_err(|e| dev_err("cuda copy", e))
    }
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("cuda memset", e))?;
        // SAFETY: dst holds at least `bytes` bytes; ordered on the stream.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }.map_err(|e| dev_err("cuda memset", e))
    }
    fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], params: &mut [*mut c_void]) -> Result<()> {
        // SAFETY: `params` point to values of the kernel's parameter types (storage.rs builds them from
        // the kernel's signature) and stay alive for the call.
        unsafe { self.run(&self.function(name)?, name, grid, block, params) }
    }
    fn launch_source(&self, key: u64, source: &str, name: &str, grid: [u32; 3], block: [u32; 3], params: &mut [*mut c_void]) -> Result<()> {
        let module = {
            let mut user = self.user.lock().unwrap_or_else(|e| e.into_inner());
            match user.get(&key) {
                Some(m) => m.clone(),
                None => {
                    let ptx =
                        cached_ptx(&format!("custom-{name}.cu"), source, &self.arch).map_err(|e| Error::device("cuda custom kernel", e))?;
                    let m = self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| dev_err("cuda custom kernel", e))?;
                    user.insert(key, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(name).map_err(|e| Error::device_from("cuda custom kernel", format!("no kernel named {name}"), e))?;
        // SAFETY: the caller (crate::cuda::Kernel::launch, an unsafe fn) guarantees that `params` match
        // the kernel's parameters.
        unsafe { self.run(&f, name, grid, block, params) }
    }
    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| dev_err("cuda synchronize (a kernel failed)", e))
    }
}

#[cfg(test)]
mod tests {
    /// The on-disk PTX cache returns what NVRTC compiled, from the file the second time.
    #[test]
    fn ptx_cache_round_trips() {
        if !super::super::nvrtc_available() {
            println!("skipped: NVRTC not found");
            return;
        }
        let src = "extern \"C\" __global__ void cache_probe(float* x) { x[threadIdx.x] = 1.0f; }";
        let first = super::cached_ptx("cache_probe.cu", src, "sm_90").unwrap();
        let key = super::cache::fnv(&[src.as_bytes(), b"sm_90", super::nvrtc_version().unwrap().as_bytes()]);
        let path = super::cache::dir().unwrap().join(format!("cache_probe-sm_90-{key:016x}.ptx"));
        assert_eq!(super::cache::read(&path).unwrap(), first.as_bytes());
        assert_eq!(super::cached_ptx("cache_probe.cu", src, "sm_90").unwrap(), first);
        assert!(first.contains(".entry cache_probe"));
    }
}
