//! Optimizer updates on the device, as a sequence of the element-wise kernels: exactly the operations
//! of the taped path in `optim`, in the same order, so both paths give the same bits.

use super::storage::CudaStorage;
use crate::backend::spec::{Backend, BinaryOp, Update};
use crate::error::{invalid, Result};

/// `f(a, b)` where `b` may be a one-element hyperparameter (broadcast).
fn bin(op: &'static str, a: &CudaStorage, b: &CudaStorage, f: BinaryOp) -> Result<CudaStorage> {
    let (ad, bd): (Vec<usize>, Vec<usize>) = (vec![a.len], if b.len == 1 && a.len != 1 { vec![] } else { vec![b.len] });
    a.binary(op, &ad, b, &bd, &[a.len], f)
}

/// The update `u` (see [`Update`] for the operand order).
pub(crate) fn update(op: &'static str, u: Update, t: &[&CudaStorage], h: &[&CudaStorage]) -> Result<Vec<CudaStorage>> {
    use crate::backend::spec::UnaryOp::{Affine, Powf, Sqrt, Square};
    use BinaryOp::*;
    match u {
        Update::Sgd { momentum, nesterov } => {
            let (&[p, g, ref rest @ ..], &[lr, wd, ref mu @ ..]) = (t, h) else {
                return invalid(op, "sgd update: wrong operand count");
            };
            let g1 = bin(op, g, &bin(op, p, wd, Mul)?, Add)?;
            match (momentum, rest, mu) {
                (true, [b], [m]) => {
                    let v1 = bin(op, &bin(op, b, m, Mul)?, &g1, Add)?;
                    let np = if nesterov {
                        let s = bin(op, &g1, &bin(op, &v1, m, Mul)?, Add)?;
                        bin(op, p, &bin(op, &s, lr, Mul)?, Sub)?
                    } else {
                        bin(op, p, &bin(op, &v1, lr, Mul)?, Sub)?
                    };
                    Ok(vec![np, v1])
                }
                (false, [], []) => Ok(vec![bin(op, p, &bin(op, &g1, lr, Mul)?, Sub)?]),
                _ => invalid(op, "sgd update: wrong operand count"),
            }
        }
        Update::Adam { decoupled, eps, eps_root, t: step } => {
            let (&[p, g, m, v], &[lr, b1, b2, wd]) = (t, h) else {
                return invalid(op, "adam update: wrong operand count");
            };
            let p1 = (step as f64) + 1.0;
            let (c1, c2) = (b1.unary(op, Affine(-1.0, 1.0))?, b2.unary(op, Affine(-1.0, 1.0))?);
            let bc1 = b1.unary(op, Powf(p1))?.unary(op, Affine(-1.0, 1.0))?;
            let bc2 = b2.unary(op, Powf(p1))?.unary(op, Affine(-1.0, 1.0))?;
            let coupled;
            let g = if decoupled {
                g
            } else {
                coupled = bin(op, g, &bin(op, p, wd, Mul)?, Add)?;
                &coupled
            };
            let m1 = bin(op, &bin(op, m, b1, Mul)?, &bin(op, g, &c1, Mul)?, Add)?;
            let v1 = bin(op, &bin(op, v, b2, Mul)?, &bin(op, &g.unary(op, Square)?, &c2, Mul)?, Add)?;
            let denom = bin(op, &v1, &bc2, Div)?.unary(op, Affine(1.0, eps_root))?.unary(op, Sqrt)?.unary(op, Affine(1.0, eps))?;
            let mut upd = bin(op, &bin(op, &m1, &bc1, Div)?, &denom, Div)?;
            if decoupled {
                upd = bin(op, &upd, &bin(op, p, wd, Mul)?, Add)?;
            }
            let np = bin(op, p, &bin(op, &upd, lr, Mul)?, Sub)?;
            Ok(vec![np, m1, v1])
        }
    }
}
