//! Where a tensor lives.
//!
//! Today every tensor lives on the CPU. [`Device::Cuda`] names a GPU, and [`Device::cuda`] checks that
//! it can be opened (see [`crate::backend::cuda`]), but no op runs there yet. Ops check that their
//! operands share a device and name both in the error when they do not.

use std::fmt;

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// The host CPU; kernels run on rayon's thread pool and are bitwise deterministic for any thread count.
    #[default]
    Cpu,
    /// CUDA device number `ordinal` (`cuda:N`). Obtain one checked with [`Device::cuda`]; tensors cannot
    /// live there yet.
    Cuda(usize),
}

impl Device {
    /// The best device to place tensors on: the CPU for now.
    ///
    /// It will return `Device::Cuda(0)` when a GPU is present once ops run on CUDA; until then, use
    /// [`crate::backend::cuda::available`] to detect a GPU.
    pub fn best() -> Device {
        Device::Cpu
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
