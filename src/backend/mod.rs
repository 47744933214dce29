//! Kernels, one module per device.
//!
//! Ops in `src/ops` check shapes and dtypes, then call these kernels on plain slices. Every kernel obeys
//! the determinism rules of the crate: the order of each floating-point reduction depends only on the
//! shapes, never on the thread count or on scheduling, and parallel work writes disjoint outputs.

pub mod cpu;
pub mod cuda;
