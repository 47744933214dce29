//! The per-thread grad mode: whether ops on tracked variables are recorded, and whether optimizer
//! updates are (see [`untaped_step`]).
//!
//! It lives below both the autodiff (which reads and sets it: [`crate::no_grad`],
//! [`crate::with_grad_mode`]) and the kernels (which reset it around their parallel sections, see
//! [`kernel_scope`]), so neither depends on the other for it.

use std::cell::Cell;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    static UNTAPED_STEP: Cell<bool> = const { Cell::new(false) };
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

/// Whether this thread is inside an untaped training step run by REPLAY (see [`untaped_step`]).
pub(crate) fn in_untaped_step() -> bool {
    UNTAPED_STEP.with(|u| u.get())
}

/// Restores the untaped-step flag when dropped.
pub(crate) struct RestoreStep(bool);

impl Drop for RestoreStep {
    fn drop(&mut self) {
        UNTAPED_STEP.with(|u| u.set(self.0));
    }
}

/// Marks this thread as running an untaped training step (a plain training step or a replay) until the
/// guard drops. Its forward pass is still recorded, for the training gradient, but nothing
/// differentiates the step's result, so the optimizers in [`crate::optim`] compute their update with
/// the fused kernel instead of recording it (same bits; one pass over memory instead of six taped ops).
pub(crate) fn untaped_step(on: bool) -> RestoreStep {
    RestoreStep(UNTAPED_STEP.with(|u| u.replace(on)))
}

/// Puts this thread in the default grad mode (recording on) until the returned guard drops. Kernels
/// hold it around their rayon sections: a worker waiting inside a parallel kernel may run an unrelated
/// job (say, another tape's forward pass submitted to the same pool), and that job must see a fresh
/// thread's mode, not the mode of the backward pass or `no_grad` section that launched the kernel.
/// Kernels themselves record nothing, so this changes nothing for the code that calls them.
pub(crate) fn kernel_scope() -> (Restore, RestoreStep) {
    (set(true), untaped_step(false))
}
