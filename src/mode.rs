//! The per-thread grad mode: whether ops on tracked variables are recorded.
//!
//! It lives below both the autodiff (which reads and sets it: [`crate::no_grad`],
//! [`crate::with_grad_mode`]) and the kernels (which reset it around their parallel sections, see
//! [`kernel_scope`]), so neither depends on the other for it.

use std::cell::Cell;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether recording is on for this thread.
pub(crate) fn enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Sets this thread's mode and returns the previous one.
pub(crate) fn replace(enabled: bool) -> bool {
    GRAD_ENABLED.with(|g| g.replace(enabled))
}

/// Restores this thread's grad mode when dropped (also during a panic's unwinding).
pub(crate) struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        replace(self.0);
    }
}

/// Sets this thread's grad mode until the returned guard drops.
pub(crate) fn set(enabled: bool) -> Restore {
    Restore(replace(enabled))
}

/// Puts this thread in the default grad mode (recording on) until the returned guard drops. Kernels
/// hold it around their rayon sections: a worker waiting inside a parallel kernel may run an unrelated
/// job (say, another tape's forward pass submitted to the same pool), and that job must see a fresh
/// thread's mode, not the mode of the backward pass or `no_grad` section that launched the kernel.
/// Kernels themselves record nothing, so this changes nothing for the code that calls them.
pub(crate) fn kernel_scope() -> Restore {
    set(true)
}
