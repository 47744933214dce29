//! # metagrad
//!
//! A low-level autodiff and kernel engine for computing *gradients through training* (metagradients)
//! exactly and fast.
//!
//! - [`Tensor`]: immutable, contiguous, row-major values in f32/f64 (bf16/f16 for storage).
//! - [`Var`] and [`Tape`]: tape-based reverse-mode autodiff whose backward pass is itself recorded, so
//!   [`grad`] with `create_graph = true` returns differentiable gradients: Hessian-vector products
//!   ([`hvp`]), Jacobian-vector products ([`jvp`]) and backward-over-backward for every op.
//! - Deterministic CPU kernels on rayon: the same bits for any thread count.
//! - [`gradcheck`]: finite-difference checks (first and second order) for your own functions.
//! - [`nn`]: named parameters ([`nn::Params`]), their map to REPLAY's flat state, and safetensors files;
//!   layers ([`nn::Linear`] .. the transformer [`nn::Block`]), dropout, gradient clipping, lr schedules.
//!
//! ```
//! use metagrad::{Tape, Tensor, DType, hvp};
//! # fn main() -> metagrad::Result<()> {
//! let tape = Tape::new();
//! let x = tape.var(Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3])?);
//! // f(x) = Σ x³, so ∇f = 3x² and H = diag(6x).
//! let f = x.powf(3.0)?.sum_all()?;
//! let v = Tensor::ones([3], DType::F64);
//! let hv = hvp(&f, &[&x], &[v])?;
//! assert_eq!(hv[0].to_vec::<f64>()?, vec![6.0, 12.0, 18.0]);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
// Library code returns errors instead of panicking: the few infallible unwraps say why at the site,
// and only the CPU kernels (`backend::cpu`, whose module docs say why) index without `get`. Tests are
// exempt (clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
// Kernels index several buffers with one loop variable; iterator chains would hide the math.
#![allow(clippy::needless_range_loop)]

pub mod autodiff;
mod backend;
pub mod cuda;
pub mod data;
pub mod device;
pub mod dtype;
pub mod error;
pub mod gradcheck;
mod mode;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod random;
pub mod replay;
pub mod shape;
pub mod tensor;

pub use autodiff::{
    grad, grad_with, hvp, is_grad_enabled, jvp, no_grad, vjp, vjp_many, with_grad_mode, BackwardFn, CustomOp, GradOptions, Tape, Var,
};
pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use ops::conv::Conv2dOpts;
pub use ops::softmax::CrossEntropyOpts;
pub use shape::Shape;
pub use tensor::Tensor;

/// The instruction-set level the CPU kernels run at on this machine: `"avx512"` (AVX-512F and VL with
/// AVX2 and FMA), `"avx2"` (AVX2 with FMA) or `"portable"`, capped by the environment variable
/// `METAGRAD_MAX_ISA` (same names). Every level gives the same bits; this only says which code runs.
pub fn cpu_isa() -> &'static str {
    backend::cpu::best_isa().name()
}

/// Makes the calling thread (normally `main`'s) a worker of rayon's global thread pool, which the CPU
/// kernels run on. Call it once, at the start of the program, before anything uses rayon.
///
/// Without it, each parallel kernel called from the main thread hands its tasks to the pool's threads
/// and sleeps until they finish: two thread wake-ups per kernel, tens of microseconds on a busy or
/// virtual machine, which on a small model's training step (kernels of 10–100 µs) cost more than the
/// parallelism gains. With it, the calling thread runs the kernel's tasks itself while the other
/// workers steal the rest; the pool then has `n − 1` threads of its own besides it, `n` being the
/// thread count rayon would choose (`RAYON_NUM_THREADS`, else the CPU count). Results are the same
/// bits either way. An error if the global pool exists already (some code used rayon first).
///
/// Keep the calling thread out of blocking waits on work it spawned into the pool itself
/// (`rayon::spawn` then a channel receive): the pool's other workers run such jobs, and with one
/// thread there are none, so with `n = 1` the pool is left as rayon makes it and the kernels run on the
/// calling thread.
pub fn use_calling_thread() -> Result<()> {
    backend::cpu::use_calling_thread()
}

/// Returns the memory the CPU backend keeps for reuse to the allocator: buffers of dead tensors cached
/// for later outputs of the same size (at most 256 MiB), the host block of the last REPLAY checkpoint
/// arena (reused by the next arena of about its size), and the per-thread scratch of the fused
/// attention kernels (at most 64 MiB per thread is kept between calls; a bigger call's scratch is
/// freed when it ends). Nothing live is touched; later ops allocate afresh. (CUDA devices have
/// [`cuda::empty_cache`].)
pub fn release_memory() {
    backend::cpu::release_memory()
}
