//! Fused optimizer updates: one pass over a parameter tensor computes every new state tensor.
//!
//! Each element goes through exactly the IEEE operations of the taped path in `optim` (the same
//! formula, operation by operation, each rounded once), so both paths give the same bits.

use super::elementwise::zip_n;
use super::float::Float;
use crate::backend::spec::Update;
use crate::error::{invalid, Result};

/// The update `u` of tensors `t` with scalar hyperparameters `h` (see [`Update`] for the order).
pub(crate) fn update<T: Float>(op: &'static str, u: Update, t: &[&[T]], h: &[T]) -> Result<Vec<Vec<T>>> {
    let len = t.first().map_or(0, |p| p.len());
    match u {
        Update::Sgd { momentum, nesterov } => {
            let (&[p, g, ref rest @ ..], &[lr, wd, ref mu @ ..]) = (t, h) else {
                return invalid(op, "sgd update: wrong operand count");
            };
            let (b, m) = match (momentum, rest, mu) {
                (true, [b], [m]) => (Some(*b), *m),
                (false, [], []) => (None, T::ZERO),
                _ => return invalid(op, "sgd update: wrong operand count"),
            };
            let [np, nb] = zip_n(op, len, |k| {
                let g1 = g[k] + p[k] * wd;
                let (step, v1) = match b {
                    Some(b) => {
                        let v1 = b[k] * m + g1;
                        (if nesterov { g1 + v1 * m } else { v1 }, v1)
                    }
                    None => (g1, T::ZERO),
                };
                [p[k] - step * lr, v1]
            })?;
            Ok(if momentum { vec![np, nb] } else { vec![np] })
        }
        Update::Adam { decoupled, eps, eps_root, t: step } => {
            let (&[p, g, m, v], &[lr, b1, b2, wd]) = (t, h) else {
                return invalid(op, "adam update: wrong operand count");
            };
            // The same roundings as the taped path: affine(−1, 1) is one FMA, i.e. fl(1 − b).
            let one = T::ONE;
            let (c1, c2) = ((-one).mul_add(b1, one), (-one).mul_add(b2, one));
            let e = T::from_f64((step as f64) + 1.0);
            let (bc1, bc2) = ((-one).mul_add(b1.powf(e), one), (-one).mul_add(b2.powf(e), one));
            let (er, ep) = (T::from_f64(eps_root), T::from_f64(eps));
            let out = zip_n(op, len, |k| {
                let gk = if decoupled { g[k] } else { g[k] + p[k] * wd };
                let m1 = m[k] * b1 + gk * c1;
                let v1 = v[k] * b2 + (gk * gk) * c2;
                let denom = one.mul_add(one.mul_add(v1 / bc2, er).sqrt(), ep);
                let mut upd = (m1 / bc1) / denom;
                if decoupled {
                    upd += p[k] * wd;
                }
                [p[k] - upd * lr, m1, v1]
            })?;
            Ok(out.into())
        }
    }
}
