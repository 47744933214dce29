//! Finite-difference checks of gradients and Hessian-vector products, for your own functions.
//!
//! Everything runs in f64: inputs are converted, the function is evaluated at x ± h·eᵢ (first order)
//! or its gradient at x ± h·v (second order), and central differences are compared with the engine's
//! reverse-mode gradient or reverse-over-reverse HVP. The report gives the largest absolute and relative
//! errors and where they occur.
//!
//! ```
//! use metagrad::{gradcheck, Tensor};
//! # fn main() -> metagrad::Result<()> {
//! let x = Tensor::from_vec(vec![0.3f64, -1.2, 2.0], [3])?;
//! let r = gradcheck::check_grad(|v| v[0].tanh()?.square()?.sum_all(), &[x], 1e-6)?;
//! assert!(r.max_abs_err < 1e-8, "{r}");
//! # Ok(()) }
//! ```

use crate::autodiff::{grad, hvp, Tape, Var};
use crate::error::{invalid, Result};
use crate::{DType, Tensor};
use std::fmt;

/// The result of a finite-difference check.
#[derive(Clone, Debug)]
pub struct Report {
    /// Largest |analytic − numeric| over all checked elements.
    pub max_abs_err: f64,
    /// Largest |analytic − numeric| / max(|analytic|, |numeric|), over elements where that max exceeds
    /// 1e-8 (relative error is meaningless at zero).
    pub max_rel_err: f64,
    /// (input, element) of the largest absolute error.
    pub worst: (usize, usize),
    /// The engine's values, per input.
    pub analytic: Vec<Vec<f64>>,
    /// The finite-difference values, per input.
    pub numeric: Vec<Vec<f64>>,
}

impl Report {
    fn new(analytic: Vec<Vec<f64>>, numeric: Vec<Vec<f64>>) -> Report {
        let (mut max_abs_err, mut max_rel_err, mut worst) = (0.0f64, 0.0f64, (0, 0));
        for (i, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
            for (j, (&a, &n)) in a.iter().zip(n).enumerate() {
                let e = (a - n).abs();
                if e > max_abs_err || e.is_nan() {
                    max_abs_err = if e.is_nan() { f64::INFINITY } else { e };
                    worst = (i, j);
                }
                let s = a.abs().max(n.abs());
                if s > 1e-8 {
                    max_rel_err = max_rel_err.max(e / s);
                }
            }
        }
        Report { max_abs_err, max_rel_err, worst, analytic, numeric }
    }

    /// Whether every element satisfies |analytic − numeric| ≤ atol + rtol·|numeric|.
    pub fn within(&self, atol: f64, rtol: f64) -> bool {
        self.analytic.iter().zip(&self.numeric).all(|(a, n)| a.iter().zip(n).all(|(&a, &n)| (a - n).abs() <= atol + rtol * n.abs()))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, j) = self.worst;
        let at = |v: &Vec<Vec<f64>>| v.get(i).and_then(|x| x.get(j)).copied().unwrap_or(f64::NAN);
        write!(
            f,
            "max abs err {:.3e}, max rel err {:.3e}; worst at input {i} element {j}: analytic {:.12e} vs numeric {:.12e}",
            self.max_abs_err,
            self.max_rel_err,
            at(&self.analytic),
            at(&self.numeric)
        )
    }
}

fn to_f64(inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    inputs.iter().map(|t| t.try_to_dtype(DType::F64)).collect()
}

/// Evaluates the scalar `f` at `xs`. The inputs are leaves of a fresh tape, as in the analytic pass,
/// so that an `f` which differentiates internally (a gradient norm, a derivative of an HVP, a training
/// step) is evaluated as the same function.
fn eval(f: &impl Fn(&[Var]) -> Result<Var>, xs: &[Tensor]) -> Result<f64> {
    let tape = Tape::new();
    let vars: Vec<Var> = xs.iter().map(|x| tape.var(x.clone())).collect();
    f(&vars)?.value().to_scalar()
}

/// `xs` with `x[i] += delta` (element `j` only, or along the whole direction `dir`).
fn shifted(xs: &[Tensor], i: usize, j: Option<usize>, dir: Option<&[Tensor]>, delta: f64) -> Result<Vec<Tensor>> {
    xs.iter()
        .enumerate()
        .map(|(k, x)| {
            let mut v = x.try_to_vec_f64()?;
            match (j, dir) {
                (Some(j), _) if k == i => match v.get_mut(j) {
                    Some(e) => *e += delta,
                    None => return invalid("gradcheck", format!("element {j} is past input {k} of shape {}", x.shape())),
                },
                (None, Some(d)) => {
                    let Some(d) = d.get(k) else {
                        return invalid("gradcheck", format!("no direction for input {k} ({} directions)", d.len()));
                    };
                    for (a, b) in v.iter_mut().zip(d.try_to_vec_f64()?) {
                        *a += delta * b;
                    }
                }
                _ => {}
            }
            Tensor::from_vec(v, x.shape().clone())
        })
        .collect()
}

/// The engine's gradient of scalar `f` at `xs` (f64).
fn analytic_grad(f: &impl Fn(&[Var]) -> Result<Var>, xs: &[Tensor]) -> Result<Vec<Vec<f64>>> {
    let tape = Tape::new();
    let vars: Vec<Var> = xs.iter().map(|x| tape.var(x.clone())).collect();
    let refs: Vec<&Var> = vars.iter().collect();
    let out = f(&vars)?;
    grad(&out, &refs, false)?.iter().map(|g| g.value().try_to_vec_f64()).collect()
}

/// Checks ∇f against central differences (f(x + h·eⱼ) − f(x − h·eⱼ)) / 2h for every element of every
/// input. `f` maps variables to a scalar; inputs are converted to f64. A step `h` around 1e-6 suits
/// smooth functions of O(1) inputs.
pub fn check_grad(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor], h: f64) -> Result<Report> {
    if !(h.is_finite() && h > 0.0) {
        return invalid("check_grad", format!("step {h} must be positive and finite"));
    }
    let xs = to_f64(inputs)?;
    let analytic = analytic_grad(&f, &xs)?;
    let mut numeric = Vec::with_capacity(xs.len());
    for (i, x) in xs.iter().enumerate() {
        let mut d = Vec::with_capacity(x.numel());
        for j in 0..x.numel() {
            let hi = eval(&f, &shifted(&xs, i, Some(j), None, h)?)?;
            let lo = eval(&f, &shifted(&xs, i, Some(j), None, -h)?)?;
            d.push((hi - lo) / (2.0 * h));
        }
        numeric.push(d);
    }
    Ok(Report::new(analytic, numeric))
}

/// Checks the Hessian-vector product H·v (the engine's reverse-over-reverse [`hvp`]) against central
/// differences of the gradient, (∇f(x + h·v) − ∇f(x − h·v)) / 2h, where `v` has one direction tensor
/// per input. Inputs and directions are converted to f64. A step around 1e-5 suits O(1) inputs.
pub fn check_hvp(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor], v: &[Tensor], h: f64) -> Result<Report> {
    if !(h.is_finite() && h > 0.0) {
        return invalid("check_hvp", format!("step {h} must be positive and finite"));
    }
    if v.len() != inputs.len() {
        return invalid("check_hvp", format!("{} inputs but {} directions", inputs.len(), v.len()));
    }
    let (xs, vs) = (to_f64(inputs)?, to_f64(v)?);
    let tape = Tape::new();
    let vars: Vec<Var> = xs.iter().map(|x| tape.var(x.clone())).collect();
    let refs: Vec<&Var> = vars.iter().collect();
    let out = f(&vars)?;
    let analytic: Vec<Vec<f64>> = hvp(&out, &refs, &vs)?.iter().map(Tensor::try_to_vec_f64).collect::<Result<_>>()?;
    let hi = analytic_grad(&f, &shifted(&xs, 0, None, Some(&vs), h)?)?;
    let lo = analytic_grad(&f, &shifted(&xs, 0, None, Some(&vs), -h)?)?;
    let numeric = hi.iter().zip(&lo).map(|(a, b)| a.iter().zip(b).map(|(p, q)| (p - q) / (2.0 * h)).collect()).collect();
    Ok(Report::new(analytic, numeric))
}
