//! Where a tensor lives.
//!
//! Today every tensor lives on the CPU; the CUDA backend (dynamic loading through cudarc) adds
//! `Device::Cuda(ordinal)` behind the same ops. Ops check that their operands share a device and name
//! both in the error when they do not.

use std::fmt;

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// The host CPU; kernels run on rayon's thread pool and are bitwise deterministic for any thread count.
    #[default]
    Cpu,
}

impl Device {
    /// The best device available: the CPU until the CUDA backend lands.
    pub fn best() -> Device {
        Device::Cpu
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}
