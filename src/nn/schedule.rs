//! Differentiable training utilities: global-norm gradient clipping and learning-rate schedules.
//!
//! Both are written with [`Var`] ops, so inside a taped REPLAY step they differentiate like the rest of
//! the step: clipping with respect to the gradients (and through them the data and parameters), the
//! schedules with respect to their metaparameters (a peak learning rate, or keypoint values MGD learns).

use crate::error::{invalid, shape_err, Result};
use crate::Var;

/// The gradients scaled by min(1, max_norm/‖g‖), ‖g‖ the global L2 norm over all of them.
///
/// Computed as `g · max_norm · rsqrt(clamp(Σ g², max_norm², ∞))`, i.e. max_norm / max(‖g‖, max_norm):
/// no square root of the norm itself, so no infinite derivative at g = 0, and the scale is exactly 1
/// (with zero derivative) below the threshold. At the kink ‖g‖ = max_norm the derivative taken is the
/// clipping side's ([`Var::clamp`] counts its boundary as inside). An [`crate::Error::Invalid`] unless
/// `max_norm` is positive and finite; an empty list gives an empty list.
pub fn clip_grad_norm(grads: &[Var], max_norm: f64) -> Result<Vec<Var>> {
    const OP: &str = "nn::clip_grad_norm";
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return invalid(OP, format!("max_norm {max_norm} must be positive and finite"));
    }
    let mut total: Option<Var> = None;
    for g in grads {
        let s = g.square()?.sum_all()?;
        total = Some(match total {
            Some(t) => t.add(&s)?,
            None => s,
        });
    }
    let Some(total) = total else { return Ok(Vec::new()) };
    let scale = total.clamp(max_norm * max_norm, f64::INFINITY)?.rsqrt()?.mul_scalar(max_norm)?;
    grads.iter().map(|g| g.mul(&scale)).collect()
}

/// Linear warmup then cosine decay, as a multiple of the scalar metaparameter `peak`: at step t of
/// `total`,
/// - t < warmup: peak · (t + 1)/warmup (so step 0 already moves);
/// - otherwise: peak · (r + (1 − r)·½(1 + cos(π·(t − warmup)/(total − warmup)))), r = `final_ratio`,
///   going from peak at t = warmup to peak·r at t = total.
///
/// The factor is a constant, so the lr is differentiable in `peak` (a tracked metaparameter in a taped
/// step). An [`crate::Error::Invalid`] for t ≥ total, warmup ≥ total or r outside [0, 1]; an
/// [`crate::Error::Shape`] unless `peak` is a scalar.
pub fn warmup_cosine(peak: &Var, t: usize, warmup: usize, total: usize, final_ratio: f64) -> Result<Var> {
    const OP: &str = "nn::warmup_cosine";
    if peak.shape().rank() != 0 {
        return shape_err(OP, format!("peak {} must be a scalar", peak.shape()));
    }
    if t >= total || warmup >= total {
        return invalid(OP, format!("step {t} and warmup {warmup} must both be below the total {total} steps"));
    }
    if !(0.0..=1.0).contains(&final_ratio) {
        return invalid(OP, format!("final_ratio {final_ratio} must be in [0, 1]"));
    }
    let factor = if t < warmup {
        (t + 1) as f64 / warmup as f64
    } else {
        let progress = (t - warmup) as f64 / (total - warmup) as f64;
        final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    };
    peak.mul_scalar(factor)
}

/// The piecewise-linear interpolation at step t of `values` (shape `[K]`, K ≥ 1, a metaparameter MGD can
/// learn) placed at the strictly increasing steps `at` (K of them): `values[0]` before `at[0]`,
/// `values[K−1]` after `at[K−1]`, linear in between. Differentiable in `values` (the lr at t depends on
/// the two keypoints around it). Errors: an [`crate::Error::Shape`] if `values` is not `[K]` for
/// K = `at.len()` ≥ 1, an [`crate::Error::Invalid`] if `at` is not strictly increasing.
pub fn piecewise_linear(values: &Var, at: &[usize], t: usize) -> Result<Var> {
    const OP: &str = "nn::piecewise_linear";
    if values.dims() != [at.len()] || at.is_empty() {
        return shape_err(
            OP,
            format!("values {} must be a vector of one value per keypoint step ({} steps, at least 1)", values.shape(), at.len()),
        );
    }
    if at.windows(2).any(|w| matches!(w, [a, b] if a >= b)) {
        return invalid(OP, format!("keypoint steps {at:?} must be strictly increasing"));
    }
    let value = |i: usize| values.narrow(0, i, 1)?.reshape(());
    // The last keypoint at or before t; none: t is before the first.
    let Some(m) = at.iter().rposition(|&s| s <= t) else { return value(0) };
    let (Some(&s0), Some(&s1)) = (at.get(m), at.get(m + 1)) else { return value(m) };
    let f = (t - s0) as f64 / (s1 - s0) as f64;
    let (a, b) = (value(m)?, value(m + 1)?);
    a.add(&b.sub(&a)?.mul_scalar(f)?)
}
