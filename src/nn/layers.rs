//! Basic layers: linear, convolution, batch/layer/RMS normalization, embedding, dropout.
//!
//! Each layer is plain data: its hyperparameters and the full names of the parameters it owns. Its
//! `init` draws those parameters (see [`Init`]) and inserts them into a [`Params`] under a prefix;
//! its `forward` reads them by name from a [`NamedVars`] (see [`Params::vars`]), so the same layer
//! runs on leaves of a tape, on constants, or on the state of a REPLAY step.

use super::vars::{Init, NamedVars};
use super::Params;
use crate::error::{invalid, shape_err, Error, Result};
use crate::random::{derive_seed, try_uniform_vec};
use crate::{Conv2dOpts, DType, Tensor, Var};

/// The last dimension of `x`, or a shape error naming `layer`.
fn last_dim(layer: &'static str, x: &Var) -> Result<usize> {
    x.dims().last().copied().ok_or_else(|| Error::Shape { op: layer, msg: format!("input {} needs at least one axis", x.shape()) })
}

/// Checks that `eps` is finite and non-negative.
fn check_eps(layer: &'static str, eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return invalid(layer, format!("eps {eps} must be finite and non-negative"));
    }
    Ok(())
}

/// Checks that a layer size is positive.
fn positive(layer: &'static str, what: &str, n: usize) -> Result<()> {
    if n == 0 {
        return invalid(layer, format!("{what} must be positive"));
    }
    Ok(())
}

/// y = x·W + b over the last axis: W is `[d_in, d_out]` (note: the transpose of PyTorch's layout),
/// b is `[d_out]`. Parameters `{prefix}.weight` and, with a bias, `{prefix}.bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// The weight's full name.
    pub weight: String,
    /// The bias's full name, if the layer has one.
    pub bias: Option<String>,
}

impl Linear {
    /// A linear layer with weight U(−1/√d_in, 1/√d_in) (PyTorch's default bound) and a zero bias.
    pub fn init(params: &mut Params, prefix: &str, d_in: usize, d_out: usize, bias: bool, dtype: DType, seed: u64) -> Result<Linear> {
        let bound = 1.0 / (d_in.max(1) as f64).sqrt();
        Linear::init_with(params, prefix, [d_in, d_out], bias, Init::Uniform(bound), dtype, seed)
    }

    /// A linear layer of shape `[d_in, d_out]` whose weight is drawn from `weight` (e.g.
    /// `Init::Normal(0.02)`, GPT-2's); the bias is zero.
    pub fn init_with(
        params: &mut Params,
        prefix: &str,
        shape: [usize; 2],
        bias: bool,
        weight: Init,
        dtype: DType,
        seed: u64,
    ) -> Result<Linear> {
        let [d_in, d_out] = shape;
        positive("nn::Linear", "d_in", d_in)?;
        positive("nn::Linear", "d_out", d_out)?;
        let weight = weight.insert(params, prefix, "weight", &[d_in, d_out], dtype, seed)?;
        let bias = if bias { Some(Init::Const(0.0).insert(params, prefix, "bias", &[d_out], dtype, seed)?) } else { None };
        Ok(Linear { d_in, d_out, weight, bias })
    }

    /// x [.., d_in] → [.., d_out].
    pub fn forward(&self, p: &NamedVars<'_>, x: &Var) -> Result<Var> {
        const OP: &str = "nn::Linear";
        if last_dim(OP, x)? != self.d_in {
            return shape_err(OP, format!("`{}` is [{}, {}] but the input is {}", self.weight, self.d_in, self.d_out, x.shape()));
        }
        let w = p.get(OP, &self.weight)?;
        // matmul needs rank ≥ 2: a single vector is a batch of one.
        let y = if x.shape().rank() == 1 { x.reshape([1, self.d_in])?.matmul(w)?.reshape([self.d_out])? } else { x.matmul(w)? };
        match &self.bias {
            Some(b) => y.add(p.get(OP, b)?),
            None => Ok(y),
        }
    }
}

/// 2-D convolution over [N, C, H, W] on [`Var::conv2d`]: weight `{prefix}.weight` `[out, in, kh, kw]`
/// and, with a bias, `{prefix}.bias` `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    /// Input channels C.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel (rows, columns).
    pub kernel: (usize, usize),
    /// Stride, padding and dilation.
    pub opts: Conv2dOpts,
    /// The weight's full name.
    pub weight: String,
    /// The bias's full name, if the layer has one.
    pub bias: Option<String>,
}

impl Conv2d {
    /// A convolution with weight U(−1/√fan_in, 1/√fan_in), fan_in = in·kh·kw (PyTorch's default
    /// bound), and a zero bias. `channels` is (in, out).
    #[allow(clippy::too_many_arguments)] // the convolution's geometry, the bias flag, dtype and seed
    pub fn init(
        params: &mut Params,
        prefix: &str,
        channels: (usize, usize),
        kernel: (usize, usize),
        opts: Conv2dOpts,
        bias: bool,
        dtype: DType,
        seed: u64,
    ) -> Result<Conv2d> {
        const OP: &str = "nn::Conv2d";
        let ((c, o), (kh, kw)) = (channels, kernel);
        for (what, n) in [("in_channels", c), ("out_channels", o), ("kernel height", kh), ("kernel width", kw)] {
            positive(OP, what, n)?;
        }
        let bound = 1.0 / ((c * kh * kw) as f64).sqrt();
        let weight = Init::Uniform(bound).insert(params, prefix, "weight", &[o, c, kh, kw], dtype, seed)?;
        let bias = if bias { Some(Init::Const(0.0).insert(params, prefix, "bias", &[o], dtype, seed)?) } else { None };
        Ok(Conv2d { in_channels: c, out_channels: o, kernel, opts, weight, bias })
    }

    /// x [N, in, H, W] → [N, out, Ho, Wo].
    pub fn forward(&self, p: &NamedVars<'_>, x: &Var) -> Result<Var> {
        const OP: &str = "nn::Conv2d";
        if x.shape().rank() != 4 || x.dims().get(1) != Some(&self.in_channels) {
            return shape_err(OP, format!("`{}` takes [N, {}, H, W] but the input is {}", self.weight, self.in_channels, x.shape()));
        }
        let b = self.bias.as_ref().map(|b| p.get(OP, b)).transpose()?;
        x.conv2d(p.get(OP, &self.weight)?, b, self.opts)
    }
}

/// Batch normalization over [N, C, ...] with the statistics of the batch ([`Var::batch_norm`]): the
/// training-mode computation, which the metasmoothness recipe uses everywhere. There is no eval mode:
/// no running statistics are kept (they would be state outside [`Params`]); to evaluate with
/// population statistics, normalize with them yourself. Parameters `{prefix}.weight` (γ, ones) and
/// `{prefix}.bias` (β, zeros), each `[C]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm2d {
    /// Channels C.
    pub channels: usize,
    /// Added to the variance.
    pub eps: f64,
    /// γ's full name.
    pub weight: String,
    /// β's full name.
    pub bias: String,
}

impl BatchNorm2d {
    /// A batch norm of `channels` channels.
    pub fn init(params: &mut Params, prefix: &str, channels: usize, eps: f64, dtype: DType) -> Result<BatchNorm2d> {
        positive("nn::BatchNorm2d", "channels", channels)?;
        check_eps("nn::BatchNorm2d", eps)?;
        let weight = Init::Const(1.0).insert(params, prefix, "weight", &[channels], dtype, 0)?;
        let bias = Init::Const(0.0).insert(params, prefix, "bias", &[channels], dtype, 0)?;
        Ok(BatchNorm2d { channels, eps, weight, bias })
    }

    /// x [N, C, H, W] normalized per channel with its batch mean and biased variance.
    pub fn forward(&self, p: &NamedVars<'_>, x: &Var) -> Result<Var> {
        const OP: &str = "nn::BatchNorm2d";
        if x.shape().rank() != 4 || x.dims().get(1) != Some(&self.channels) {
            return shape_err(OP, format!("`{}` takes [N, {}, H, W] but the input is {}", self.weight, self.channels, x.shape()));
        }
        x.batch_norm(p.get(OP, &self.weight)?, p.get(OP, &self.bias)?, self.eps)
    }
}

/// Layer normalization over the last axis ([`Var::layer_norm`]): parameters `{prefix}.weight` (ones)
/// and `{prefix}.bias` (zeros), each `[d]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    /// The normalized (last) dimension.
    pub d: usize,
    /// Added to the variance.
    pub eps: f64,
    /// The gain's full name.
    pub weight: String,
    /// The bias's full name.
    pub bias: String,
}

impl LayerNorm {
    /// A layer norm over a last axis of `d`.
    pub fn init(params: &mut Params, prefix: &str, d: usize, eps: f64, dtype: DType) -> Result<LayerNorm> {
        positive("nn::LayerNorm", "d", d)?;
        check_eps("nn::LayerNorm", eps)?;
        let weight = Init::Const(1.0).insert(params, prefix, "weight", &[d], dtype, 0)?;
        let bias = Init::Const(0.0).insert(params, prefix, "bias", &[d], dtype, 0)?;
        Ok(LayerNorm { d, eps, weight, bias })
    }

    /// (x − mean)/√(var + eps)·weight + bias over the last axis of x [.., d].
    pub fn forward(&self, p: &NamedVars<'_>, x: &Var) -> Result<Var> {
        const OP: &str = "nn::LayerNorm";
        if last_dim(OP, x)? != self.d {
            return shape_err(OP, format!("`{}` normalizes a last axis of {} but the input is {}", self.weight, self.d, x.shape()));
        }
        x.layer_norm(Some(p.get(OP, &self.weight)?), Some(p.get(OP, &self.bias)?), self.eps)
    }
}

/// RMS normalization over the last axis: x / √(mean(x²) + eps) · g, a composite of differentiable
/// ops (every derivative order exact). Parameter `{prefix}.weight` (g, ones) `[d]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNorm {
    /// The normalized (last) dimension.
    pub d: usize,
    /// Added to the mean square.
    pub eps: f64,
    /// The gain's full name.
    pub weight: String,
}

impl RmsNorm {
    /// An RMS norm over a last axis of `d`.
    pub fn init(params: &mut Params, prefix: &str, d: usize, eps: f64, dtype: DType) -> Result<RmsNorm> {
        positive("nn::RmsNorm", "d", d)?;
        check_eps("nn::RmsNorm", eps)?;
        let weight = Init::Const(1.0).insert(params, prefix, "weight", &[d], dtype, 0)?;
        Ok(RmsNorm { d, eps, weight })
    }

    /// x [.., d] / √(mean(x², last axis) + eps) · weight.
    pub fn forward(&self, p: &NamedVars<'_>, x: &Var) -> Result<Var> {
        const OP: &str = "nn::RmsNorm";
        if last_dim(OP, x)? != self.d {
            return shape_err(OP, format!("`{}` normalizes a last axis of {} but the input is {}", self.weight, self.d, x.shape()));
        }
        let g = p.get(OP, &self.weight)?;
        x.mul(&x.square()?.mean(&[-1], true)?.add_scalar(self.eps)?.rsqrt()?)?.mul(g)
    }
}

/// A table of `vocab` vectors of width `d`: parameter `{prefix}.weight` `[vocab, d]`. Lookups select
/// rows ([`Var::index_select`], whose VJP scatter-adds deterministically).
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// Rows of the table.
    pub vocab: usize,
    /// Width of each row.
    pub d: usize,
    /// The table's full name.
    pub weight: String,
}

impl Embedding {
    /// A table drawn from N(0, std²) (GPT-2 uses std 0.02, PyTorch's default is 1).
    pub fn init(params: &mut Params, prefix: &str, vocab: usize, d: usize, std: f64, dtype: DType, seed: u64) -> Result<Embedding> {
        positive("nn::Embedding", "vocab", vocab)?;
        positive("nn::Embedding", "d", d)?;
        let weight = Init::Normal(std).insert(params, prefix, "weight", &[vocab, d], dtype, seed)?;
        Ok(Embedding { vocab, d, weight })
    }

    /// The rows `ids` (row-major, of shape `ids_shape`): [ids_shape.., d]. An [`Error::Invalid`] for
    /// an id past the table or an `ids_shape` that does not hold `ids.len()` ids.
    pub fn forward(&self, p: &NamedVars<'_>, ids: &[usize], ids_shape: &[usize]) -> Result<Var> {
        const OP: &str = "nn::Embedding";
        if ids_shape.iter().product::<usize>() != ids.len() {
            return invalid(OP, format!("{} ids do not fill the shape {ids_shape:?}", ids.len()));
        }
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id >= self.vocab) {
            return invalid(OP, format!("id {id} at position {i} is past `{}` of {} rows", self.weight, self.vocab));
        }
        let rows = p.get(OP, &self.weight)?.index_select(0, ids)?;
        rows.reshape(ids_shape.iter().copied().chain([self.d]).collect::<Vec<_>>())
    }

    /// Scores of h [.., d] against every row: h·Wᵀ, [.., vocab] (a tied output head).
    pub fn attend(&self, p: &NamedVars<'_>, h: &Var) -> Result<Var> {
        const OP: &str = "nn::Embedding::attend";
        if h.shape().rank() < 2 || last_dim(OP, h)? != self.d {
            return shape_err(
                OP,
                format!(
                    "`{}` is [{}, {}] but the input is {} (needs [.., {}], rank ≥ 2)",
                    self.weight,
                    self.vocab,
                    self.d,
                    h.shape(),
                    self.d
                ),
            );
        }
        h.matmul_t(p.get(OP, &self.weight)?, false, true)
    }
}

/// Inverted dropout with counter-based random numbers: element i of the input is kept (and scaled by
/// 1/(1 − p)) iff u ≥ p, where u ∈ [0, 1) is the Philox uniform of counter i under the key
/// `derive_seed(derive_seed(seed, stream), step)` ([`crate::random`]). So the mask is a pure function
/// of (seed, stream, step, element index): a replayed training step reproduces its mask bit for bit,
/// on any thread count or device, and layers with different `stream`s draw independent masks.
///
/// The mask is a constant: gradients flow through the kept elements. Not calling `forward` is eval
/// mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The probability of dropping an element, in [0, 1).
    pub p: f64,
    /// This layer's stream, distinguishing its masks from other dropout layers' (e.g. its index).
    pub stream: u64,
}

impl Dropout {
    /// A dropout layer; an [`Error::Invalid`] unless 0 ≤ p < 1.
    pub fn new(p: f64, stream: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return invalid("nn::Dropout", format!("drop probability {p} must be in [0, 1)"));
        }
        Ok(Dropout { p, stream })
    }

    /// The keep mask of `n` elements at (`seed`, `step`): `true` where an element is kept.
    pub fn keep_mask(&self, seed: u64, step: u64, n: usize) -> Result<Vec<bool>> {
        let key = derive_seed(derive_seed(seed, self.stream), step);
        let u =
            try_uniform_vec(key, n).map_err(|e| Error::OutOfMemory { op: "nn::Dropout", msg: format!("a mask of {n} elements: {e}") })?;
        Ok(u.into_iter().map(|u| u >= self.p).collect())
    }

    /// x with the mask of (`seed`, `step`) applied and the kept elements scaled by 1/(1 − p).
    pub fn forward(&self, x: &Var, seed: u64, step: u64) -> Result<Var> {
        if self.p == 0.0 {
            return Ok(x.clone());
        }
        let scale = 1.0 / (1.0 - self.p);
        let m: Vec<f64> = self.keep_mask(seed, step, x.value().numel())?.into_iter().map(|k| if k { scale } else { 0.0 }).collect();
        let m = Tensor::from_vec(m, x.shape().clone())?.try_to_dtype(x.dtype())?.to_device(x.value().device())?;
        x.mul(&Var::constant(m))
    }
}
