//! The kernel emulator: the CUDA C sources of `kernels/` compiled with the host's C++ compiler and run
//! on the CPU, behind the same [`Driver`] trait as a real GPU.
//!
//! **Why.** Most machines this crate is developed and tested on have no GPU. With
//! `METAGRAD_CUDA_EMULATOR=1`, `Device::cuda(0)` opens an emulated device instead, so the whole CUDA
//! path (allocator, uploads and downloads, launch configurations, argument lists, and every kernel's
//! indexing, shared-memory trees and barriers) runs and is checked against the CPU backend, and CI runs
//! the GPU test suite this way. What it cannot check: timing, occupancy, register use, and anything
//! about the real hardware (warp-level behaviour, memory ordering beyond `__syncthreads`).
//!
//! **How.** `emu/emu.h` maps the CUDA C subset the kernels use onto C++ (`__shared__` becomes `static`,
//! `threadIdx` a global); `emu/runtime.cpp` runs one block at a time, its threads as fibers on one OS thread
//! (x86-64 only: the fiber switch is a few lines of assembly), switching at `__syncthreads` and reporting a barrier that not every thread reaches.
//! The library is built once per set of kernel sources with `g++` (or `$CXX`), kept in the per-user
//! kernel cache (`cache.rs`) and loaded with `dlopen`; "device memory" is host memory. Custom kernels
//! ([`crate::cuda::Kernel`]) get a library of their own, built the same way.

use super::cache;
use super::driver::Driver;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

type Launch = unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, u32, u32, *mut *mut c_void, *mut c_char, usize) -> i32;

/// An emulated device (see the module docs).
pub(crate) struct EmuDriver {
    /// The crate's kernels.
    lib: Lib,
    /// Libraries of custom kernels (see [`Driver::launch_source`]), by key.
    user: Mutex<HashMap<u64, Lib>>,
    /// Launches run one at a time (the runtime's scheduler state is global); also the stream order.
    lock: Mutex<()>,
    sizes: Mutex<HashMap<u64, std::alloc::Layout>>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::device("cuda emulator", msg)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().map_err(|e| err(format!("cannot run {cmd:?}: {e} (is a C++ compiler installed? set CXX)")))?;
    if !out.status.success() {
        return Err(err(format!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// The names of the `extern "C"` kernels in preprocessed C++ (`__global__` expands to nothing).
fn kernel_names(preprocessed: &str) -> Vec<String> {
    let toks: Vec<&str> = preprocessed.split(|c: char| c.is_whitespace() || c == '(').filter(|t| !t.is_empty()).collect();
    toks.windows(4)
        .filter_map(|w| match w {
            ["extern", "\"C\"", "void", name] if !name.starts_with('_') => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

/// Builds (or finds in the kernel cache, keyed by a hash of every source and the compiler) an emulator
/// library of the CUDA C `sources` (each a whole translation unit) with its own runtime, and returns
/// its path. The build runs in a private temporary directory; the library is then stored in the cache
/// (see `cache.rs`: per-user, mode 0700, content hash checked before use).
fn build(sources: &[(&str, &str)]) -> Result<PathBuf> {
    const HEADER: &str = include_str!("emu/emu.h");
    const RUNTIME: &str = include_str!("emu/runtime.cpp");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let mut parts: Vec<&[u8]> = vec![HEADER.as_bytes(), RUNTIME.as_bytes(), cxx.as_bytes()];
    parts.extend(sources.iter().flat_map(|(f, s)| [f.as_bytes(), s.as_bytes()]));
    let key = cache::fnv(&parts);
    let cached = cache::dir().map(|d| d.join(format!("emu-{key:016x}.so")));
    if let Ok(lib) = &cached {
        if cache::read(lib).is_some() {
            return Ok(lib.clone());
        }
    }
    // Build inside the private cache directory when there is one (nobody else can plant files there).
    let base = cached.as_ref().ok().and_then(|l| l.parent()).map_or_else(std::env::temp_dir, Path::to_path_buf);
    let work = base.join(format!("emu-build-{key:016x}-{}", std::process::id()));
    cache::private_dir(&work)?;
    let write = |name: &str, text: &str| std::fs::write(work.join(name), text).map_err(|e| err(format!("{name}: {e}")));
    write("emu.h", HEADER)?;
    write("runtime.cpp", RUNTIME)?;
    let cc =
        |args: &[&str]| -> Result<()> { run(Command::new(&cxx).current_dir(&work).args(["-std=c++17", "-O2", "-fPIC", "-w"]).args(args)) };
    let mut objects = vec!["runtime.o".to_string()];
    cc(&["-c", "runtime.cpp", "-o", "runtime.o"])?;
    for (i, (file, src)) in sources.iter().enumerate() {
        let stem = format!("k{i}_{}", file.trim_end_matches(".cu").replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        write(&format!("{stem}.cpp"), &format!("#include \"emu.h\"\n{src}"))?;
        cc(&["-E", &format!("{stem}.cpp"), "-o", &format!("{stem}.ii")])?;
        let pre = std::fs::read_to_string(work.join(format!("{stem}.ii"))).map_err(|e| err(e.to_string()))?;
        let regs: String = kernel_names(&pre)
            .iter()
            .map(|k| format!("static int emu_reg_{k} = emu_register(\"{k}\", &EmuCall<decltype(&{k})>::thunk<&{k}>);\n"))
            .collect();
        write(&format!("{stem}.reg.ii"), &format!("{pre}\n{regs}"))?;
        cc(&["-x", "c++", "-c", &format!("{stem}.reg.ii"), "-o", &format!("{stem}.o")])?;
        objects.push(format!("{stem}.o"));
    }
    let mut link = vec!["-shared", "-o", "libmetagrad_emu.so"];
    link.extend(objects.iter().map(String::as_str));
    cc(&link)?;
    let built = work.join("libmetagrad_emu.so");
    let out = match &cached {
        Ok(lib) => {
            let bytes = std::fs::read(&built).map_err(|e| err(format!("{}: {e}", built.display())))?;
            cache::write(lib, &bytes);
            if cache::read(lib).is_some() {
                let _ = std::fs::remove_dir_all(&work);
                lib.clone()
            } else {
                built // the cache is not writable: load the private build
            }
        }
        Err(_) => built,
    };
    Ok(out)
}

/// One loaded emulator library: its handle and its launch entry point.
struct Lib {
    _lib: libloading::Library,
    launch: Launch,
}

impl Lib {
    fn load(path: &Path) -> Result<Lib> {
        // SAFETY: a library built by `build` from our sources (or the user's kernel source) with our
        // runtime, found at a path only this user can write; its initializers only fill the registry.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(format!("{}: {e}", path.display())))?;
        // SAFETY: emu_launch has exactly the `Launch` signature (runtime.cpp).
        let launch = *unsafe { lib.get::<Launch>(b"emu_launch\0") }.map_err(|e| err(e.to_string()))?;
        Ok(Lib { _lib: lib, launch })
    }

    /// Runs kernel `name` (the caller holds the launch lock).
    fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], params: &mut [*mut c_void]) -> Result<()> {
        let cname = CString::new(name).map_err(|e| err(e.to_string()))?;
        let mut msg = vec![0u8; 512];
        // SAFETY: params point to the kernel's arguments (as for cuLaunchKernel); msg is writable.
        let rc = unsafe {
            (self.launch)(
                cname.as_ptr(),
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                params.as_mut_ptr(),
                msg.as_mut_ptr().cast(),
                msg.len(),
            )
        };
        if rc != 0 {
            let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
            return Err(Error::device("cuda launch", String::from_utf8_lossy(msg.get(..end).unwrap_or_default()).into_owned()));
        }
        Ok(())
    }
}

impl EmuDriver {
    /// Builds (once per kernel-source version) and loads the emulator.
    pub(crate) fn new() -> Result<EmuDriver> {
        let lib = Lib::load(&build(super::kernels::SOURCES)?)?;
        Ok(EmuDriver { lib, user: Mutex::new(HashMap::new()), lock: Mutex::new(()), sizes: Mutex::new(HashMap::new()) })
    }
}

impl Driver for EmuDriver {
    fn name(&self) -> String {
        "metagrad kernel emulator (host CPU)".into()
    }
    fn malloc(&self, bytes: usize) -> Result<u64> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 256).map_err(|e| err(e.to_string()))?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(err(format!("out of host memory allocating {bytes} bytes")));
        }
        self.sizes.lock().unwrap_or_else(|e| e.into_inner()).insert(p as u64, layout);
        Ok(p as u64)
    }
    fn free(&self, ptr: u64) {
        if let Some(layout) = self.sizes.lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr) {
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) }
        }
    }
    fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: dst is a live allocation of at least src.len() bytes (the allocator's contract).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as for htod.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as for htod (ranges may not overlap: the arena copies between distinct buffers).
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as for htod.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }
    fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], params: &mut [*mut c_void]) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.lib.launch(name, grid, block, params)
    }
    fn launch_source(&self, key: u64, source: &str, name: &str, grid: [u32; 3], block: [u32; 3], params: &mut [*mut c_void]) -> Result<()> {
        let mut user = self.user.lock().unwrap_or_else(|e| e.into_inner());
        let lib = match user.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Lib::load(&build(&[("user.cu", source)])?)?),
        };
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        lib.launch(name, grid, block, params)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
