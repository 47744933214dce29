//! The small MNIST CNN training run shared by the application examples (metagradient_descent,
//! poisoning, lr_schedule, metasmoothness): one `replay::Training` whose metaparameters are any of
//! a learning-rate schedule's keypoints, one weight per training example, and an additive
//! perturbation of the pixels of the last `m` training images, so every example optimizes or probes
//! the same training run with the same mechanism.
//!
//! The network (configurable for the metasmoothness table, paper §3 / appendix E.2): avg-pool 28→14,
//! conv 3×3 (1→width), batch norm before or after the GELU, avg-pool 14→7, linear (width·49→10), the
//! logits scaled by `out_scale`. Training: T steps of SGD with momentum 0.9 and weight decay 5e-4 on
//! batches that stride through a seeded permutation of the training set. φ = cross-entropy on the
//! validation digits.

use super::mgdata::splitmix64;
use metagrad::data::{default_path, Mnist};
use metagrad::optim::{scalar, Sgd};
use metagrad::replay::reference::keypoint_lr;
use metagrad::replay::{StepCtx, Training};
use metagrad::{no_grad, Conv2dOpts, DType, Device, Error, Result, Tensor, Var};

/// MNIST digits split into training, validation and test sets (class-balanced, disjoint).
pub struct Digits {
    /// Training images [n, 1, 28, 28] in [0, 1].
    pub x_train: Tensor,
    /// Training labels.
    pub y_train: Vec<usize>,
    /// Validation images (φ's set).
    pub x_val: Tensor,
    /// Validation labels.
    pub y_val: Vec<usize>,
    /// Test images (reported, never optimized on).
    pub x_test: Tensor,
    /// Test labels.
    pub y_test: Vec<usize>,
}

fn images(data: &Mnist, idx: &[usize], device: Device) -> Result<Tensor> {
    let px: Vec<f32> = data.pixels_f64(idx)?.iter().map(|&v| v as f32).collect();
    Tensor::from_vec(px, [idx.len(), 1, 28, 28])?.to_device(device)
}

impl Digits {
    /// The bundled digits (`data::default_path`): the first `n_train`, then `n_val`, then `n_test`
    /// of the class-balanced order.
    pub fn load(n_train: usize, n_val: usize, n_test: usize, device: Device) -> Result<Digits> {
        let data = Mnist::load(default_path())?;
        let order = data.balanced_order();
        if n_train == 0 || n_val == 0 {
            return Err(Error::Invalid {
                op: "Digits::load",
                msg: format!("{n_train} training and {n_val} validation digits: both must be at least 1"),
            });
        }
        if n_train + n_val + n_test > order.len() {
            let msg = format!("{n_train} + {n_val} + {n_test} digits asked for, {} bundled", order.len());
            return Err(Error::Invalid { op: "Digits::load", msg });
        }
        let (tr, rest) = order.split_at(n_train);
        let (va, rest) = rest.split_at(n_val);
        let te = &rest[..n_test];
        Ok(Digits {
            x_train: images(&data, tr, device)?,
            y_train: data.labels_of(tr)?,
            x_val: images(&data, va, device)?,
            y_val: data.labels_of(va)?,
            x_test: images(&data, te, device)?,
            y_test: data.labels_of(te)?,
        })
    }
}

/// Where the batch norm sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnPlace {
    /// conv → batch norm → GELU (the metasmooth placement).
    Before,
    /// conv → GELU → batch norm (the common placement).
    After,
}

/// The network's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Arch {
    /// Convolution channels.
    pub width: usize,
    /// Batch norm before or after the activation.
    pub bn: BnPlace,
    /// The factor on the logits (the paper's "scaled-down output": 0.2 here, 1 for a plain net).
    pub out_scale: f64,
}

impl Arch {
    /// The metasmooth recipe: 8 channels, batch norm before the GELU, logits × 0.2.
    pub const SMOOTH: Arch = Arch { width: 8, bn: BnPlace::Before, out_scale: 0.2 };
    /// Parameters of this network (conv, bn γ, bn β, linear W, linear b).
    pub const PARAMS: usize = 5;
}

/// The learning rate of step t.
#[derive(Clone, Debug)]
pub enum Lr {
    /// One fixed value per step (a schedule that is not a metaparameter).
    Fixed(Vec<f64>),
    /// Linear interpolation between keypoints that are metaparameter 0 (`keypoint_lr`).
    Keypoints,
}

/// The training run. Metaparameters, in this order, each present or not: the learning-rate
/// keypoints (`Lr::Keypoints`), per-example weights [n] (`weights`), and the pixel perturbation
/// [m, 1, 28, 28] added to the last `m = perturbed` training images (`perturbed > 0`).
pub struct Cnn<'a> {
    /// The held-out digits (validation for φ, test for reporting).
    pub digits: &'a Digits,
    /// Training images (a copy of `digits.x_train`, or a poisoned/noised one).
    pub x_train: Tensor,
    /// Training labels (possibly flipped).
    pub y_train: Vec<usize>,
    /// The network.
    pub arch: Arch,
    /// Training steps T.
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Seed of the initialization and of the batch order.
    pub seed: u64,
    /// The learning-rate schedule.
    pub lr: Lr,
    /// Per-example weights as a metaparameter.
    pub weights: bool,
    /// How many of the last training images carry a pixel perturbation metaparameter.
    pub perturbed: usize,
    order: Vec<usize>,
}

/// A seeded permutation of 0..n (Fisher–Yates with splitmix64).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (splitmix64(seed.wrapping_mul(0x1000_0000_01b3).wrapping_add(i as u64)) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

impl<'a> Cnn<'a> {
    /// A run on `digits`' training set with `arch`, T = `steps`, `batch`, a fixed learning rate
    /// schedule `lr`, no metaparameters.
    pub fn new(digits: &'a Digits, arch: Arch, steps: usize, batch: usize, seed: u64, lr: Lr) -> Cnn<'a> {
        let n = digits.y_train.len();
        Cnn {
            digits,
            x_train: digits.x_train.clone(),
            y_train: digits.y_train.clone(),
            arch,
            steps,
            batch,
            seed,
            lr,
            weights: false,
            perturbed: 0,
            order: permutation(n, seed),
        }
    }

    /// Training examples n.
    pub fn n_train(&self) -> usize {
        self.y_train.len()
    }

    fn slots(&self) -> (Option<usize>, Option<usize>, Option<usize>) {
        let lr = matches!(self.lr, Lr::Keypoints).then_some(0);
        let w = self.weights.then_some(lr.map_or(0, |_| 1));
        let next = lr.is_some() as usize + w.is_some() as usize;
        (lr, w, (self.perturbed > 0).then_some(next))
    }

    /// The logits of images `x` under parameters `p`.
    pub fn logits(&self, x: &Var, p: &[Var]) -> Result<Var> {
        let pool = Conv2dOpts::new(2, 0);
        let h = x.avg_pool2d((2, 2), pool)?.conv2d(&p[0], None, Conv2dOpts::new(1, 1))?;
        let h = match self.arch.bn {
            BnPlace::Before => h.batch_norm(&p[1], &p[2], 1e-5)?.gelu()?,
            BnPlace::After => h.gelu()?.batch_norm(&p[1], &p[2], 1e-5)?,
        };
        let h = h.avg_pool2d((2, 2), pool)?;
        let n = h.dims()[0];
        h.reshape([n, self.arch.width * 49])?.matmul(&p[3])?.add(&p[4])?.mul_scalar(self.arch.out_scale)
    }

    /// Cross-entropy and accuracy of parameters `params` on images `x` with labels `y`.
    pub fn loss_and_accuracy(&self, params: &[Tensor], x: &Tensor, y: &[usize]) -> Result<(f64, f64)> {
        no_grad(|| {
            let p: Vec<Var> = params.iter().take(Arch::PARAMS).map(|t| Var::constant(t.clone())).collect();
            let logits = self.logits(&Var::constant(x.clone()), &p)?;
            let loss = logits.cross_entropy(y, None)?.value().to_scalar()?;
            let pred = logits.value().argmax(-1)?;
            let right = pred.iter().zip(y).filter(|(a, b)| a == b).count();
            Ok((loss, right as f64 / y.len().max(1) as f64))
        })
    }

    /// Test cross-entropy and accuracy of a final training state.
    pub fn test(&self, state: &[Tensor]) -> Result<(f64, f64)> {
        self.loss_and_accuracy(state, &self.digits.x_test, &self.digits.y_test)
    }

    /// Validation cross-entropy and accuracy of a final training state.
    pub fn val(&self, state: &[Tensor]) -> Result<(f64, f64)> {
        self.loss_and_accuracy(state, &self.digits.x_val, &self.digits.y_val)
    }
}

impl Training for Cnn<'_> {
    fn steps(&self) -> usize {
        self.steps
    }

    fn initial_state(&self) -> Result<Vec<Tensor>> {
        let device = self.x_train.device();
        let c = self.arch.width;
        let f = |shape: &[usize], stream: u64, fan_in: usize| -> Result<Tensor> {
            let t = Tensor::randn(shape.to_vec(), DType::F32, splitmix64(self.seed ^ (stream << 40)));
            let v: Vec<f32> = t.to_vec::<f32>()?.iter().map(|x| x / (fan_in as f32).sqrt()).collect();
            Tensor::from_vec(v, shape.to_vec())?.to_device(device)
        };
        let params = vec![
            f(&[c, 1, 3, 3], 1, 9)?,
            Tensor::full_on(1.0, [c], DType::F32, device)?,
            Tensor::full_on(0.0, [c], DType::F32, device)?,
            f(&[c * 49, 10], 2, c * 49)?,
            Tensor::full_on(0.0, [10], DType::F32, device)?,
        ];
        let bufs = params.iter().map(|p| Tensor::full_on(0.0, p.shape().clone(), DType::F32, device)).collect::<Result<Vec<_>>>()?;
        Ok(params.into_iter().chain(bufs).collect())
    }

    fn step(&self, ctx: &StepCtx, t: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        let n = self.n_train();
        let idx: Vec<usize> = (0..self.batch).map(|j| self.order[(t * self.batch + j) % n]).collect();
        let labels: Vec<usize> = idx.iter().map(|&i| self.y_train[i]).collect();
        let (lr_slot, w_slot, px_slot) = self.slots();
        let meta = |slot: Option<usize>| {
            slot.and_then(|i| z.get(i)).ok_or_else(|| Error::Invalid { op: "Cnn::step", msg: "a metaparameter is missing".into() })
        };
        let x = Var::constant(self.x_train.clone()).index_select(0, &idx)?;
        let x = match px_slot {
            None => x,
            Some(_) => {
                // Only the batch's rows: row 0 of [0; δ] for a clean image, row 1 + j for perturbed
                // image n − m + j (adding +0.0 to a pixel leaves it unchanged), so a step copies
                // m + 1 images, not the whole training set.
                let m = self.perturbed;
                let dx = meta(px_slot)?.to_device(self.x_train.device())?;
                let zero = Var::constant(Tensor::full_on(0.0, [1, 1, 28, 28], DType::F32, self.x_train.device())?);
                let rows: Vec<usize> = idx.iter().map(|&i| if i >= n - m { 1 + i - (n - m) } else { 0 }).collect();
                x.add(&Var::concat(&[&zero, &dx], 0)?.index_select(0, &rows)?)?
            }
        };
        let w = match w_slot {
            None => None,
            Some(_) => Some(meta(w_slot)?.to_device(self.x_train.device())?.index_select(0, &idx)?),
        };
        let (params, bufs) = s.split_at(Arch::PARAMS);
        let loss = self.logits(&x, params)?.cross_entropy(&labels, w.as_ref())?;
        let g = ctx.grad(&loss, &params.iter().collect::<Vec<_>>())?;
        let p0 = &params[0];
        let lr = match &self.lr {
            Lr::Keypoints => keypoint_lr(meta(lr_slot)?, t, self.steps)?,
            Lr::Fixed(v) => scalar(v.get(t).copied().unwrap_or(0.0), p0),
        };
        let opt = Sgd { lr, momentum: Some(scalar(0.9, p0)), weight_decay: scalar(5e-4, p0), nesterov: false };
        let (p, v) = opt.step(params, &g, bufs)?;
        Ok(p.into_iter().chain(v).collect())
    }

    fn output(&self, s: &[Var]) -> Result<Var> {
        self.logits(&Var::constant(self.digits.x_val.clone()), &s[..Arch::PARAMS])?.cross_entropy(&self.digits.y_val, None)
    }
}

/// Learning-rate schedules over T steps (the grid search's families).
pub mod schedules {
    /// η at every step.
    pub fn constant(eta: f64, steps: usize) -> Vec<f64> {
        vec![eta; steps]
    }

    /// η for the first half, η/10 after.
    pub fn step(eta: f64, steps: usize) -> Vec<f64> {
        (0..steps).map(|t| if 2 * t < steps { eta } else { 0.1 * eta }).collect()
    }

    /// η·(1 + cos(π t / T))/2.
    pub fn cosine(eta: f64, steps: usize) -> Vec<f64> {
        (0..steps).map(|t| 0.5 * eta * (1.0 + (std::f64::consts::PI * t as f64 / steps as f64).cos())).collect()
    }
}
