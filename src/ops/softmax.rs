//! softmax, log_softmax and cross-entropy.
//!
//! softmax and log_softmax have fused, max-shifted forward kernels; their VJPs are written in ops
//! (y∘(g − Σ g∘y) and g − softmax·Σg), so they differentiate again. Cross-entropy (also with ignored
//! positions and label smoothing, [`Var::cross_entropy_with`]) is a composite of index_select,
//! log_softmax, gather and mean, so every order of derivative comes from those.

use crate::backend::spec::SoftmaxMode;
use crate::error::{invalid, shape_err, Error, Result};
use crate::{Shape, Tensor, Var};

/// Options of [`Var::cross_entropy_with`]; `CrossEntropyOpts::default()` is plain mean cross-entropy
/// (nothing ignored, no smoothing, no weights).
#[derive(Clone, Copy, Debug, Default)]
pub struct CrossEntropyOpts<'a> {
    /// Positions whose label equals this value are left out of the loss and of its mean (PyTorch's
    /// `ignore_index`, e.g. padding tokens). It may be any value, also one ≥ C (such as `usize::MAX`).
    pub ignore_index: Option<usize>,
    /// Label smoothing ε in [0, 1]: the target distribution is (1 − ε)·onehot(label) + ε/C.
    pub label_smoothing: f64,
    /// Per-position weights wᵢ, shaped like the logits without their last axis (`[N]` for logits
    /// `[N, C]`, `[B, T]` for `[B, T, C]`), of the logits' dtype; differentiable (data weights are
    /// metaparameters). Not PyTorch's per-class `weight`: the mean divides by the number of kept
    /// positions, not by Σ wᵢ.
    pub weights: Option<&'a Var>,
}

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

    /// Mean cross-entropy of logits of any rank `[.., C]` (classes along the last axis) against one
    /// integer label per position (row-major over the leading axes), with the options of
    /// [`CrossEntropyOpts`]:
    ///
    /// L = (1/K) · Σ_{i kept} wᵢ · ℓᵢ,  ℓᵢ = −Σ_c qᵢ_c · log softmax(xᵢ)_c,  qᵢ = (1 − ε)·onehot(labelᵢ) + ε/C,
    ///
    /// where the kept positions are those whose label is not `ignore_index`, K is their number (the
    /// mean is over non-ignored positions, as in PyTorch), and wᵢ = 1 without weights. Ignored
    /// positions take no part at all: their logits may be anything (even NaN) and get a zero gradient.
    /// If no position is kept (or there are none) the loss is 0 with zero gradients, where PyTorch
    /// gives 0/0 = NaN.
    ///
    /// With default options and logits `[N, C]` this is [`Var::cross_entropy`] with `weights: None`.
    /// Errors: logits of rank 0, a label count other than the number of positions, a kept label ≥ C,
    /// ε outside [0, 1], weights of the wrong shape or dtype.
    pub fn cross_entropy_with(&self, labels: &[usize], opts: CrossEntropyOpts<'_>) -> Result<Var> {
        const OP: &str = "cross_entropy_with";
        super::same_dtypes(OP, &[self])?;
        let Some((&c, lead)) = self.dims().split_last() else {
            return shape_err(OP, format!("logits {} need shape [.., C] (at least one axis)", self.shape()));
        };
        let n = crate::shape::numel(lead);
        if labels.len() != n {
            return shape_err(OP, format!("logits {} hold {n} positions but {} labels were given", self.shape(), labels.len()));
        }
        let eps = opts.label_smoothing;
        if !(0.0..=1.0).contains(&eps) {
            return invalid(OP, format!("label smoothing {eps} is not in [0, 1]"));
        }
        if let Some(w) = opts.weights {
            if w.dims() != lead {
                return shape_err(
                    OP,
                    format!(
                        "weights of shape {} must have the logits' leading shape {} (logits {})",
                        w.shape(),
                        Shape::new(lead),
                        self.shape()
                    ),
                );
            }
            super::same_dtypes(OP, &[self, w])?;
        }
        let kept = |l: usize| opts.ignore_index != Some(l);
        if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| kept(l) && l >= c) {
            let hint = opts.ignore_index.map_or_else(String::new, |v| format!(" (ignore_index is {v})"));
            return invalid(OP, format!("label {l} at position {i} is out of range for {c} classes{hint}"));
        }
        let rows: Vec<usize> = labels.iter().enumerate().filter(|&(_, &l)| kept(l)).map(|(i, _)| i).collect();
        let targets: Vec<usize> = labels.iter().copied().filter(|&l| kept(l)).collect();
        let k = rows.len();
        let x = self.reshape([n, c])?;
        if k == 0 {
            // Nothing to average: a tracked zero (zero gradients), not 0/0.
            return x.narrow(0, 0, 0)?.sum_all();
        }
        let pick = |v: Var| if k == n { Ok(v) } else { v.index_select(0, &rows) };
        let lp = pick(x)?.log_softmax(1)?;
        let nll = lp.gather(1, &targets, [k, 1])?.reshape([k])?.neg()?;
        let per = if eps > 0.0 {
            // −Σ_c (ε/C)·log p_c = −ε·mean_c log p_c.
            nll.mul_scalar(1.0 - eps)?.sub(&lp.mean(&[1], false)?.mul_scalar(eps)?)?
        } else {
            nll
        };
        let per = match opts.weights {
            Some(w) => per.mul(&pick(w.reshape([n])?)?)?,
            None => per,
        };
        per.mean_all()
    }
}
