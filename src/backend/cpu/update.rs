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
    match u {
        Update::Sgd { momentum, nesterov } => {
            let (&[p, g, ref rest @ ..], &[lr, wd, ref mu @ ..]) = (t, h) else {
                return invalid(op, "sgd update: wrong operand count");
            };
            match (momentum, rest, mu) {
                (true, &[b], &[m]) => {
                    let [np, nb] = zip_n(op, [p, g, b], |[p, g, b]| {
                        let g1 = g + p * wd;
                        let v1 = b * m + g1;
                        let step = if nesterov { g1 + v1 * m } else { v1 };
                        [p - step * lr, v1]
                    })?;
                    Ok(vec![np, nb])
                }
                (false, [], []) => Ok(zip_n(op, [p, g], |[p, g]| [p - (g + p * wd) * lr])?.into()),
                _ => invalid(op, "sgd update: wrong operand count"),
            }
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
            let out = zip_n(op, [p, g, m, v], |[p, g, m, v]| {
                let gk = if decoupled { g } else { g + p * wd };
                let m1 = m * b1 + gk * c1;
                let v1 = v * b2 + (gk * gk) * c2;
                let denom = one.mul_add(one.mul_add(v1 / bc2, er).sqrt(), ep);
                let mut upd = (m1 / bc1) / denom;
                if decoupled {
                    upd += p * wd;
                }
                [p - upd * lr, m1, v1]
            })?;
            Ok(out.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{set_isa_cap, Isa};

    fn data(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 - 500.0) / 250.0).collect()
    }

    /// Every ISA copy of the fused kernels, on lengths below, at and across the 16-element blocks and
    /// the parallel chunks, gives the bits of the formula written as a plain scalar loop.
    #[test]
    fn fused_updates_give_the_scalar_formula_bits_at_every_isa() {
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            set_isa_cap(isa);
            for n in [0, 5, 16, 37, 255, 256, 257, 40_003] {
                let (p, g, b) = (data(n, 1), data(n, 2), data(n, 3));
                let v: Vec<f32> = data(n, 4).iter().map(|x| x * x).collect();
                let (lr, wd, mu) = (0.05f32, 1e-3f32, 0.9f32);
                let out = update("t", Update::Sgd { momentum: true, nesterov: true }, &[&p, &g, &b], &[lr, wd, mu]).unwrap();
                for k in 0..n {
                    let g1 = g[k] + p[k] * wd;
                    let v1 = b[k] * mu + g1;
                    let want = p[k] - (g1 + v1 * mu) * lr;
                    assert_eq!((out[0][k].to_bits(), out[1][k].to_bits()), (want.to_bits(), v1.to_bits()), "sgd {isa:?} n={n} k={k}");
                }
                let (b1, b2) = (0.9f32, 0.999f32);
                let u = Update::Adam { decoupled: true, eps: 1e-8, eps_root: 1e-9, t: 6 };
                let out = update("t", u, &[&p, &g, &b, &v], &[lr, b1, b2, wd]).unwrap();
                let (c1, c2) = ((-1f32).mul_add(b1, 1.0), (-1f32).mul_add(b2, 1.0));
                let (bc1, bc2) = ((-1f32).mul_add(b1.powf(7.0), 1.0), (-1f32).mul_add(b2.powf(7.0), 1.0));
                for k in 0..n {
                    let m1 = b[k] * b1 + g[k] * c1;
                    let v1 = v[k] * b2 + (g[k] * g[k]) * c2;
                    let denom = 1f32.mul_add(1f32.mul_add(v1 / bc2, 1e-9).sqrt(), 1e-8);
                    let want = p[k] - ((m1 / bc1) / denom + p[k] * wd) * lr;
                    let got = (out[0][k].to_bits(), out[1][k].to_bits(), out[2][k].to_bits());
                    assert_eq!(got, (want.to_bits(), m1.to_bits(), v1.to_bits()), "adam {isa:?} n={n} k={k}");
                }
            }
        }
        set_isa_cap(Isa::Avx512);
    }
}
