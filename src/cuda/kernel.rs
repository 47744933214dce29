//! Custom CUDA kernels: a crate built on metagrad compiles its own CUDA C through the crate's NVRTC
//! path (or the kernel emulator) and launches it on tensors, typically inside a
//! [`crate::CustomOp`]'s forward.

use crate::error::{Error, Result};
use crate::{Device, Tensor};

/// A kernel argument.
pub enum KernelArg<'a> {
    /// A tensor the kernel reads: its device pointer (`const T*` in the kernel).
    In(&'a Tensor),
    /// A tensor the kernel writes: its device pointer (`T*`). The tensor must not share its buffer with
    /// any other tensor (make it fresh, e.g. with [`Tensor::full_on`]); a shared one is an error.
    Out(&'a mut Tensor),
    /// A 64-bit unsigned integer (`unsigned long long`).
    U64(u64),
    /// A 64-bit signed integer (`long long`).
    I64(i64),
    /// A 32-bit signed integer (`int`).
    I32(i32),
    /// A `float`.
    F32(f32),
    /// A `double`.
    F64(f64),
}

/// A custom kernel: the CUDA C source of one translation unit and the name of its `extern "C"` entry
/// point. It is compiled on first launch for the device it runs on (NVRTC for `sm_XY`, cached on disk
/// like the crate's own kernels) and cached for the process. The source must be header-free (NVRTC has
/// no include path) and, to run on the kernel emulator as well, keep to the CUDA C subset the crate's
/// kernels use (`threadIdx`, `blockIdx`, `blockDim`, `gridDim`, `__syncthreads`, `__shared__`, math
/// functions).
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct Kernel {
    entry: String,
    source: String,
    key: u64,
}

impl Kernel {
    /// A kernel named `entry` in `source`.
    pub fn new(entry: impl Into<String>, source: impl Into<String>) -> Kernel {
        let (entry, source) = (entry.into(), source.into());
        let mut key: u64 = 0xcbf29ce484222325;
        for b in source.bytes() {
            key = (key ^ b as u64).wrapping_mul(0x100000001b3);
        }
        Kernel { entry, source, key }
    }

    /// The entry point's name.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Launches the kernel with a `grid` of blocks of `block` threads, on the CUDA device of its tensor
    /// arguments (all must live on one CUDA device), ordered after all work queued there.
    ///
    /// A tensor argument on another device, an [`KernelArg::Out`] tensor that shares its buffer, no
    /// tensor argument at all, or a source that does not compile is an [`Error`].
    ///
    /// # Safety
    /// The kernel runs unchecked code on the device: its parameters must have exactly the types and
    /// order of `args`, and it must read and write only within the buffers passed (`numel` elements of
    /// each tensor's dtype), writing only through [`KernelArg::Out`] tensors.
    pub unsafe fn launch(&self, grid: [u32; 3], block: [u32; 3], args: &mut [KernelArg<'_>]) -> Result<()> {
        let op = "cuda::Kernel::launch";
        let mut device: Option<Device> = None;
        for a in args.iter_mut() {
            let t: &Tensor = match a {
                KernelArg::In(t) => t,
                KernelArg::Out(t) => {
                    if !t.is_unique() {
                        return Err(Error::Invalid {
                            op,
                            msg: format!("the output tensor {} shares its buffer with another tensor", t.shape()),
                        });
                    }
                    t
                }
                _ => continue,
            };
            match (device, t.device()) {
                (_, Device::Cpu) => return Err(Error::device(op, format!("kernel {} got a tensor on the CPU", self.entry))),
                (Some(d), e) if d != e => return Err(Error::device(op, format!("kernel {} got tensors on {d} and {e}", self.entry))),
                (_, e) => device = Some(e),
            }
        }
        let device =
            device.ok_or_else(|| Error::Invalid { op, msg: format!("kernel {} has no tensor argument to place it", self.entry) })?;
        imp::launch(self, device, grid, block, args)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::{Kernel, KernelArg};
    use crate::backend::cuda::gpu_of;
    use crate::error::{Error, Result};
    use crate::Device;
    use std::ffi::c_void;

    pub(super) fn launch(k: &Kernel, device: Device, grid: [u32; 3], block: [u32; 3], args: &mut [KernelArg<'_>]) -> Result<()> {
        let gpu = gpu_of(device)?;
        // One 8-byte slot per argument, holding its value (pointers and 64-bit integers, or the low
        // bytes for narrower types); cuLaunchKernel reads each through its pointer.
        let mut slots: Vec<u64> = Vec::with_capacity(args.len());
        for a in args.iter() {
            slots.push(match a {
                KernelArg::In(t) => ptr(t)?,
                KernelArg::Out(t) => ptr(t)?,
                KernelArg::U64(v) => *v,
                KernelArg::I64(v) => *v as u64,
                KernelArg::I32(v) => *v as u32 as u64,
                KernelArg::F32(v) => v.to_bits() as u64,
                KernelArg::F64(v) => v.to_bits(),
            });
        }
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        gpu.driver.launch_source(k.key, &k.source, &k.entry, grid, block, &mut params)
    }

    fn ptr(t: &crate::Tensor) -> Result<u64> {
        t.storage()
            .cuda()
            .map(|c| c.buf.ptr)
            .ok_or_else(|| Error::device("cuda::Kernel::launch", "a tensor argument is not on a CUDA device"))
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::{Kernel, KernelArg};
    use crate::error::Result;
    use crate::Device;

    pub(super) fn launch(k: &Kernel, device: Device, _: [u32; 3], _: [u32; 3], _: &mut [KernelArg<'_>]) -> Result<()> {
        let _ = k;
        Err(crate::backend::not_built("cuda::Kernel::launch", if let Device::Cuda(n) = device { n } else { 0 }))
    }
}
