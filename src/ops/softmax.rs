//! softmax, log_softmax and cross-entropy.
//!
//! softmax and log_softmax have fused, max-shifted forward kernels; their VJPs are written in ops
//! (y∘(g − Σ g∘y) and g − softmax·Σg), so they differentiate again. Cross-entropy is a composite of
//! log_softmax and gather, so every order of derivative comes from those.

use crate::backend::spec::SoftmaxMode;
use crate::error::{shape_err, Error, Result};
use crate::{Tensor, Var};

fn softmax_kernel(op: &'static str, x: &Tensor, axis: isize, mode: SoftmaxMode) -> Result<Tensor> {
    let a = x.shape().axis(op, axis)?;
    super::compute(op, x)?;
    Tensor::new(op, x.storage().softmax_axis(op, super::view(x.shape(), a), mode)?, x.shape().clone())
}

impl Tensor {
    /// exp(x) / Σ exp(x) along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        softmax_kernel("softmax", self, axis, SoftmaxMode::Softmax)
    }

    /// x − log Σ exp(x) along `axis`.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        softmax_kernel("log_softmax", self, axis, SoftmaxMode::LogSoftmax)
    }
}

impl Var {
    /// exp(x) / Σ exp(x) along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Var> {
        let a = self.shape().axis("softmax", axis)?;
        let y = self.value().softmax(axis)?;
        Var::record("softmax", y, &[self], move |_, y, g| {
            let s = g.mul(y)?.sum(&[a as isize], true)?;
            Ok(vec![Some(y.mul(&g.sub(&s)?)?)])
        })
    }

    /// x − log Σ exp(x) along `axis`.
    pub fn log_softmax(&self, axis: isize) -> Result<Var> {
        let a = self.shape().axis("log_softmax", axis)?;
        let y = self.value().log_softmax(axis)?;
        Var::record("log_softmax", y, &[self], move |_, y, g| {
            let s = g.sum(&[a as isize], true)?;
            Ok(vec![Some(g.sub(&y.exp()?.mul(&s)?)?)])
        })
    }

    /// Per-example cross-entropy of logits [N, C] against integer labels: `−log softmax(x)[i, labels[i]]`,
    /// shape `[N]`.
    pub fn cross_entropy_per_example(&self, labels: &[usize]) -> Result<Var> {
        super::same_dtypes("cross_entropy", &[self])?;
        let (n, c) = match *self.dims() {
            [n, c] if n == labels.len() => (n, c),
            _ => return shape_err("cross_entropy", format!("logits {} need shape [N, C] with N = {} labels", self.shape(), labels.len())),
        };
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= c) {
            return Err(Error::Invalid { op: "cross_entropy", msg: format!("label {l} of example {i} is out of range for {c} classes") });
        }
        self.log_softmax(1)?.gather(1, labels, [n, 1])?.reshape([n])?.neg()
    }

    /// Mean cross-entropy (1/N)·Σᵢ wᵢ·CEᵢ of logits [N, C] against integer labels, with optional
    /// per-example weights w of shape `[N]` (differentiable: data weights are metaparameters).
    pub fn cross_entropy(&self, labels: &[usize], weights: Option<&Var>) -> Result<Var> {
        let ce = self.cross_entropy_per_example(labels)?;
        let ce = match weights {
            Some(w) => {
                if w.dims() != [labels.len()] {
                    return shape_err("cross_entropy", format!("weights of shape {} must have shape [{}]", w.shape(), labels.len()));
                }
                super::same_dtypes("cross_entropy", &[self, w])?;
                ce.mul(w)?
            }
            None => ce,
        };
        ce.mean_all()
    }
}
