//! The reference problems R1 and R2: small, exactly specified training runs whose metagradients every
//! backend must reproduce (CPU f64 is the reference; other backends and precisions compare against it).
//!
//! Data: `x_train[i][j] = sin(0.37·(i+1)·(j+1) + 0.1·j)` for i < 64, j < 8, `y_train[i] = (7i + 3) mod 4`;
//! `x_val[i][j] = cos(0.23·(i+1)·(j+2) − 0.05·j)` for i < 32, `y_val[i] = (5i + 1) mod 4`.
//! Model: `h = tanh(x·W1 + b1)`, `logits = h·W2 + b2`, with `W1[a][b] = 0.5·sin(1.3a + 0.7b + 0.1)/√8`
//! (8×16), `W2[a][b] = 0.5·cos(0.9a + 1.1b)/√16` (16×4), zero biases.
//! Training: T = 40 steps of batch 16, step t using train indices `(16t + j) mod 64`; loss
//! `L_t = (1/16)·Σ wᵢ·CEᵢ`. Learning rate from 5 keypoints η at positions m·(T−1)/4, linearly
//! interpolated. R1: SGD, momentum 0.9, coupled weight decay 1e-3, η = 0.3. R2: AdamW, β = (0.9, 0.99),
//! eps = eps_root = 1e-8, decoupled weight decay 1e-2, η = 0.01. Weight decay applies to biases too.
//! φ = mean validation cross-entropy at θ_T. Metaparameters: `[η (5), w (64)]`.

use super::{StepCtx, Training};
use crate::error::{invalid, shape_err, Error, Result};
use crate::optim::{scalar, Adam, Sgd};
use crate::{DType, Device, Tensor, Var};

/// Which reference problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// SGD with heavy-ball momentum 0.9 and coupled weight decay 1e-3.
    R1,
    /// AdamW with bias correction and eps_root.
    R2,
}

/// A reference problem in a given dtype.
#[derive(Clone, Debug)]
pub struct ReferenceProblem {
    kind: Reference,
    dtype: DType,
    x_train: Tensor,
    y_train: Vec<usize>,
    x_val: Tensor,
    y_val: Vec<usize>,
    device: Device,
}

/// Training steps.
pub const STEPS: usize = 40;
/// Batch size.
pub const BATCH: usize = 16;
/// Training examples.
pub const N_TRAIN: usize = 64;
/// Learning-rate keypoints.
pub const KEYPOINTS: usize = 5;

fn matrix(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64, dtype: DType) -> Tensor {
    let v: Vec<f64> = (0..rows * cols).map(|p| f(p / cols, p % cols)).collect();
    #[allow(clippy::expect_used)] // infallible: rows·cols values for a [rows, cols] tensor
    Tensor::from_vec(v, [rows, cols]).expect("rows·cols values").to_dtype(dtype)
}

/// lr(t) from the keypoints: pos = t·(K−1)/(T−1), m = min(⌊pos⌋, K−2), f = pos − m, lr = η_m + f·(η_{m+1} − η_m).
pub fn keypoint_lr(eta: &Var, t: usize, steps: usize) -> Result<Var> {
    let k = eta.dims().first().copied().unwrap_or(0);
    if eta.shape().rank() != 1 || k < 2 {
        return shape_err("keypoint_lr", format!("keypoints {} must be a vector of at least 2", eta.shape()));
    }
    if t >= steps {
        return invalid("keypoint_lr", format!("step {t} is past the schedule's {steps} steps"));
    }
    let pos = if steps > 1 { t as f64 * (k - 1) as f64 / (steps - 1) as f64 } else { 0.0 };
    let m = (pos.floor() as usize).min(k - 2);
    let f = pos - m as f64;
    let (a, b) = (eta.narrow(0, m, 1)?.reshape(())?, eta.narrow(0, m + 1, 1)?.reshape(())?);
    a.add(&b.sub(&a)?.mul_scalar(f)?)
}

impl ReferenceProblem {
    /// R1 or R2, computed in `dtype` (f64 is the reference).
    pub fn new(kind: Reference, dtype: DType) -> ReferenceProblem {
        let x_train = matrix(N_TRAIN, 8, |i, j| (0.37 * ((i + 1) * (j + 1)) as f64 + 0.1 * j as f64).sin(), dtype);
        let x_val = matrix(32, 8, |i, j| (0.23 * ((i + 1) * (j + 2)) as f64 - 0.05 * j as f64).cos(), dtype);
        ReferenceProblem {
            kind,
            dtype,
            x_train,
            y_train: (0..N_TRAIN).map(|i| (7 * i + 3) % 4).collect(),
            x_val,
            y_val: (0..32).map(|i| (5 * i + 1) % 4).collect(),
            device: Device::Cpu,
        }
    }

    /// The same problem with its data and training state on `device` (the metaparameters from
    /// [`ReferenceProblem::initial_meta`] stay on the CPU and are moved, differentiably, by each step).
    pub fn to_device(mut self, device: Device) -> Result<ReferenceProblem> {
        self.x_train = self.x_train.to_device(device)?;
        self.x_val = self.x_val.to_device(device)?;
        self.device = device;
        Ok(self)
    }

    /// The initial metaparameters: η (5 keypoints, 0.3 for R1, 0.01 for R2) and w (64 ones), on the CPU.
    pub fn initial_meta(&self) -> Vec<Tensor> {
        let eta = if self.kind == Reference::R1 { 0.3 } else { 0.01 };
        vec![Tensor::full(eta, [KEYPOINTS], self.dtype), Tensor::ones([N_TRAIN], self.dtype)]
    }

    /// The model's logits on `x` with the parameters `[W1, b1, W2, b2]` (the first four state tensors).
    fn logits(x: &Var, params: &[Var]) -> Result<Var> {
        let [w1, b1, w2, b2, ..] = params else {
            return shape_err("reference problem", format!("the state must start with [W1, b1, W2, b2], got {} tensors", params.len()));
        };
        x.matmul(w1)?.add(b1)?.tanh()?.matmul(w2)?.add(b2)
    }
}

impl Training for ReferenceProblem {
    fn steps(&self) -> usize {
        STEPS
    }

    fn initial_state(&self) -> Result<Vec<Tensor>> {
        let params = [
            matrix(8, 16, |a, b| 0.5 * (1.3 * a as f64 + 0.7 * b as f64 + 0.1).sin() / 8f64.sqrt(), self.dtype),
            Tensor::zeros([16], self.dtype),
            matrix(16, 4, |a, b| 0.5 * (0.9 * a as f64 + 1.1 * b as f64).cos() / 4.0, self.dtype),
            Tensor::zeros([4], self.dtype),
        ];
        let params = params.iter().map(|p| p.to_device(self.device)).collect::<Result<Vec<_>>>()?;
        let buffers = if self.kind == Reference::R1 { 1 } else { 2 };
        let zeros = params.iter().map(|p| Tensor::full_on(0.0, p.shape().clone(), self.dtype, self.device)).collect::<Result<Vec<_>>>()?;
        let mut s = params;
        for _ in 0..buffers {
            s.extend(zeros.iter().cloned());
        }
        Ok(s)
    }

    fn step(&self, ctx: &StepCtx, t: usize, state: &[Var], meta: &[Var]) -> Result<Vec<Var>> {
        let (eta, w) = match meta {
            [eta, w] if eta.dims() == [KEYPOINTS] && w.dims() == [N_TRAIN] => (eta, w),
            _ => {
                let got: Vec<String> = meta.iter().map(|m| m.shape().to_string()).collect();
                return shape_err("reference step", format!("metaparameters must be [η [5], w [64]], got [{}]", got.join(", ")));
            }
        };
        // The parameters W1, b1, W2, b2, then the optimizer's buffers (4 for SGD, 4 + 4 for AdamW).
        let Some((params @ [p0, ..], bufs)) = state.split_at_checked(4) else {
            return shape_err("reference step", format!("the state must start with [W1, b1, W2, b2], got {} tensors", state.len()));
        };
        let idx: Vec<usize> = (0..BATCH).map(|j| (BATCH * t + j) % N_TRAIN).collect();
        let labels = idx.iter().map(|&i| self.y_train.get(i).copied()).collect::<Option<Vec<usize>>>();
        let labels = labels.ok_or_else(|| Error::Invalid {
            op: "reference step",
            msg: format!("{} training labels for {N_TRAIN} examples", self.y_train.len()),
        })?;
        let x = Var::constant(self.x_train.clone()).index_select(0, &idx)?;
        let w = w.to_device(self.device)?.index_select(0, &idx)?;
        let loss = Self::logits(&x, params)?.cross_entropy(&labels, Some(&w))?;
        let g = ctx.grad(&loss, &params.iter().collect::<Vec<_>>())?;
        let lr = keypoint_lr(eta, t, STEPS)?;
        Ok(match self.kind {
            Reference::R1 => {
                let opt = Sgd { lr, momentum: Some(scalar(0.9, p0)), weight_decay: scalar(1e-3, p0), nesterov: false };
                let (p, v) = opt.step(params, &g, bufs)?;
                p.into_iter().chain(v).collect()
            }
            Reference::R2 => {
                let opt = Adam {
                    lr,
                    beta1: scalar(0.9, p0),
                    beta2: scalar(0.99, p0),
                    eps: 1e-8,
                    eps_root: 1e-8,
                    weight_decay: scalar(1e-2, p0),
                    decoupled: true,
                };
                // An m of fewer than 4 buffers leaves v empty, and Adam names the mismatch.
                let (m, v) = bufs.split_at_checked(4).unwrap_or((bufs, &[]));
                let (p, m, v) = opt.step(t, params, &g, m, v)?;
                p.into_iter().chain(m).chain(v).collect()
            }
        })
    }

    fn output(&self, state: &[Var]) -> Result<Var> {
        Self::logits(&Var::constant(self.x_val.clone()), state)?.cross_entropy(&self.y_val, None)
    }
}
