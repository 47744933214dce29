//! Transformer layers: multi-head self-attention on the fused kernel, a GELU MLP, and a pre-norm block.

use super::layers::{LayerNorm, Linear};
use super::vars::{Init, NamedVars};
use super::Params;
use crate::error::{invalid, shape_err, Result};
use crate::{DType, Var};

/// Multi-head self-attention on x [B, L, d]: one projection `{prefix}.qkv` ([`Linear`] d → 3d, the
/// queries, keys and values side by side), heads split by reshape/permute to [B, heads, L, d/heads],
/// the fused [`Var::attention`] kernel (scale 1/√(d/heads); causal when `causal`, as [`init`] makes
/// it), heads merged back, and the output projection `{prefix}.proj` (d → d).
///
/// [`init`]: MultiHeadAttention::init
#[derive(Clone, Debug, PartialEq)]
pub struct MultiHeadAttention {
    /// Model width.
    pub d: usize,
    /// Number of heads (dividing `d`).
    pub heads: usize,
    /// Whether query i sees only keys j ≤ i (set on by `init`).
    pub causal: bool,
    /// The joint query/key/value projection, d → 3d.
    pub qkv: Linear,
    /// The output projection, d → d.
    pub proj: Linear,
}

impl MultiHeadAttention {
    /// Causal attention of width `d` with `heads` heads; projection weights N(0, std²), biases zero.
    /// An [`crate::Error::Invalid`] if `heads` is zero or does not divide `d`.
    pub fn init(
        params: &mut Params,
        prefix: &str,
        d: usize,
        heads: usize,
        std: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<MultiHeadAttention> {
        if heads == 0 || !d.is_multiple_of(heads) {
            return invalid("nn::MultiHeadAttention", format!("{heads} heads do not divide the width {d}"));
        }
        let qkv = Linear::init_with(params, &format!("{prefix}.qkv"), [d, 3 * d], true, Init::Normal(std), dtype, seed)?;
        let proj = Linear::init_with(params, &format!("{prefix}.proj"), [d, d], true, Init::Normal(std), dtype, seed)?;
        Ok(MultiHeadAttention { d, heads, causal: true, qkv, proj })
    }

    /// x [B, L, d] → [B, L, d].
    pub fn forward(&self, p: &NamedVars<'_>, x: &Var) -> Result<Var> {
        const OP: &str = "nn::MultiHeadAttention";
        let (d, h) = (self.d, self.heads);
        let &[b, l, xd] = x.dims() else {
            return shape_err(OP, format!("`{}` takes [B, L, {d}] but the input is {}", self.qkv.weight, x.shape()));
        };
        if xd != d || h == 0 || !d.is_multiple_of(h) {
            return shape_err(OP, format!("{h} heads of width {d} (heads must divide it) but the input is {}", x.shape()));
        }
        let hd = d / h;
        let qkv = self.qkv.forward(p, x)?;
        let head = |i: usize| qkv.narrow(-1, i * d, d)?.reshape([b, l, h, hd])?.permute(&[0, 2, 1, 3]);
        let o = head(0)?.attention(&head(1)?, &head(2)?, 1.0 / (hd as f64).sqrt(), self.causal)?;
        self.proj.forward(p, &o.permute(&[0, 2, 1, 3])?.reshape([b, l, d])?)
    }
}

/// A two-layer perceptron with exact (erf) GELU: `{prefix}.fc1` (d → hidden), GELU, `{prefix}.fc2`
/// (hidden → d).
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// The first layer, d → hidden.
    pub fc1: Linear,
    /// The second layer, hidden → d.
    pub fc2: Linear,
}

impl Mlp {
    /// An MLP of width `d` and hidden width `hidden`; weights N(0, std²), biases zero.
    pub fn init(params: &mut Params, prefix: &str, d: usize, hidden: usize, std: f64, dtype: DType, seed: u64) -> Result<Mlp> {
        let fc1 = Linear::init_with(params, &format!("{prefix}.fc1"), [d, hidden], true, Init::Normal(std), dtype, seed)?;
        let fc2 = Linear::init_with(params, &format!("{prefix}.fc2"), [hidden, d], true, Init::Normal(std), dtype, seed)?;
        Ok(Mlp { fc1, fc2 })
    }

    /// x [.., d] → [.., d].
    pub fn forward(&self, p: &NamedVars<'_>, x: &Var) -> Result<Var> {
        self.fc2.forward(p, &self.fc1.forward(p, x)?.gelu()?)
    }
}

/// A pre-norm transformer block: h = x + attn(ln1(x)), then h + mlp(ln2(h)). Parameters under
/// `{prefix}.ln1`, `{prefix}.attn`, `{prefix}.ln2`, `{prefix}.mlp`. No dropout (apply
/// [`super::Dropout`] around it if wanted).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The norm before attention.
    pub ln1: LayerNorm,
    /// Causal multi-head self-attention.
    pub attn: MultiHeadAttention,
    /// The norm before the MLP.
    pub ln2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

impl Block {
    /// A block of width `d`, `heads` heads and MLP width `hidden`: layer norms with eps 1e-5 (gains
    /// one, biases zero), linear weights N(0, std²), biases zero.
    #[allow(clippy::too_many_arguments)] // the block's three sizes, the init scale, dtype and seed
    pub fn init(
        params: &mut Params,
        prefix: &str,
        d: usize,
        heads: usize,
        hidden: usize,
        std: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<Block> {
        Ok(Block {
            ln1: LayerNorm::init(params, &format!("{prefix}.ln1"), d, 1e-5, dtype)?,
            attn: MultiHeadAttention::init(params, &format!("{prefix}.attn"), d, heads, std, dtype, seed)?,
            ln2: LayerNorm::init(params, &format!("{prefix}.ln2"), d, 1e-5, dtype)?,
            mlp: Mlp::init(params, &format!("{prefix}.mlp"), d, hidden, std, dtype, seed)?,
        })
    }

    /// x [B, L, d] → [B, L, d].
    pub fn forward(&self, p: &NamedVars<'_>, x: &Var) -> Result<Var> {
        let h = x.add(&self.attn.forward(p, &self.ln1.forward(p, x)?)?)?;
        h.add(&self.mlp.forward(p, &self.ln2.forward(p, &h)?)?)
    }
}
