//! Where a tensor lives.
//!
//! A tensor lives on the CPU or on a CUDA device ([`crate::Tensor::to_device`] copies between them), and
//! every op runs where its operands live (see [`crate::cuda`] for the GPU side). The storage layer
//! checks that an op's operands share a device and names both in the error when they do not; nothing
//! moves implicitly, except that optimizers move scalar hyperparameters to their parameters' device.

use std::fmt;

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// The host CPU; kernels run on rayon's thread pool and are bitwise deterministic for any thread count.
    #[default]
    Cpu,
    /// CUDA device number `ordinal` (`cuda:N`). Obtain one checked with [`Device::cuda`]. Kernels are
    /// bitwise deterministic there too (no atomics, fixed reduction trees).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
