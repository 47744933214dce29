//! Derivative operators built on [`grad_with`]: vector-Jacobian products, Hessian-vector products
//! (reverse over reverse) and Jacobian-vector products (the double-VJP trick).

use super::{grad, grad_with, vjp_many, GradOptions, Tape, Var};
use crate::error::{Error, Result};
use crate::Tensor;

fn check_like(op: &'static str, xs: &[&Var], vs: &[Tensor]) -> Result<()> {
    if xs.len() != vs.len() {
        return Err(Error::Invalid { op, msg: format!("{} variables but {} direction tensors", xs.len(), vs.len()) });
    }
    for (i, (x, v)) in xs.iter().zip(vs).enumerate() {
        if x.shape() != v.shape() || x.dtype() != v.dtype() {
            return Err(Error::Shape {
                op,
                msg: format!("direction {i} is {} {} but its variable is {} {}", v.shape(), v.dtype(), x.shape(), x.dtype()),
            });
        }
    }
    Ok(())
}

/// Σᵢ ⟨aᵢ, bᵢ⟩ as a scalar variable.
fn inner(op: &'static str, a: &[Var], b: &[Var]) -> Result<Var> {
    let mut acc: Option<Var> = None;
    for (x, y) in a.iter().zip(b) {
        let d = x.mul(y)?.sum_all()?;
        acc = Some(match acc {
            None => d,
            Some(s) => s.add(&d)?,
        });
    }
    acc.ok_or_else(|| Error::Invalid { op, msg: "no variables given".into() })
}

/// The vector-Jacobian product `cotangentᵀ · ∂output/∂wrt` (constants; see [`grad_with`] for the
/// differentiable form).
pub fn vjp(output: &Var, wrt: &[&Var], cotangent: &Tensor) -> Result<Vec<Tensor>> {
    let c = Var::constant(cotangent.clone());
    Ok(grad_with(output, wrt, &c, GradOptions::default())?.into_iter().map(|g| g.value().clone()).collect())
}

/// The Hessian-vector product H·v of the scalar `loss` with respect to `wrt` (one direction tensor per
/// variable), by reverse over reverse: the gradient of ⟨∇loss, v⟩.
pub fn hvp(loss: &Var, wrt: &[&Var], v: &[Tensor]) -> Result<Vec<Tensor>> {
    check_like("hvp", wrt, v)?;
    if wrt.is_empty() {
        return Err(Error::Invalid { op: "hvp", msg: "no variables given".into() });
    }
    let g = grad(loss, wrt, true)?;
    let vs: Vec<Var> = v.iter().map(|t| Var::constant(t.clone())).collect();
    // ∇⟨∇loss, v⟩: the backward pass seeded with v at the gradients (no recorded inner product).
    let hv = vjp_many(&g.iter().collect::<Vec<_>>(), &vs.iter().collect::<Vec<_>>(), wrt, GradOptions::default())?;
    Ok(hv.into_iter().map(|g| g.value().clone()).collect())
}

/// The Jacobian-vector product J·v of `output` with respect to `wrt` (one direction per variable),
/// by the double-VJP trick: with a dummy cotangent u, g(u) = uᵀJ is linear in u, and ∂⟨g(u), v⟩/∂u = J·v.
/// `tape` must be the tape `output` is recorded on (it records the dummy).
pub fn jvp(tape: &Tape, output: &Var, wrt: &[&Var], v: &[Tensor]) -> Result<Tensor> {
    check_like("jvp", wrt, v)?;
    let u = tape.var(Tensor::full_on(0.0, output.shape().clone(), output.dtype(), output.value().device())?);
    let g = grad_with(output, wrt, &u, GradOptions { create_graph: true, retain_graph: true })?;
    let vs: Vec<Var> = v.iter().map(|t| Var::constant(t.clone())).collect();
    let dot = inner("jvp", &g, &vs)?;
    Ok(grad(&dot, &[&u], false)?.remove(0).value().clone())
}
