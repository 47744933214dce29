//! What a backend implements: the [`Backend`] trait, and the backend-neutral description of every
//! kernel it runs (op codes, shapes of convolutions, attention and matrix products).
//!
//! Both device backends (`cpu`, `cuda`) implement [`Backend`] for their storage type; the storage enum
//! of `backend/mod.rs` dispatches every call to one of them after checking that all operands live on
//! one device. Nothing here knows about tensors, variables or tapes: kernels take buffers and the
//! shapes below, and return new buffers.
//!
//! Every method checks that its buffers' lengths fit the shapes it is given and returns an
//! [`crate::Error`] otherwise (never a panic), and reports a failed allocation as
//! [`crate::Error::OutOfMemory`] naming `op`.

use crate::error::Result;
use crate::{DType, Device};

/// The element-wise unary functions. Parameters are f64 and rounded to the element type once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum UnaryOp {
    Neg,
    Exp,
    Log,
    Tanh,
    Sigmoid,
    Relu,
    Sqrt,
    Rsqrt,
    Abs,
    Square,
    Erf,
    /// sin x (f32: computed in f64 and rounded once).
    Sin,
    /// cos x (f32: computed in f64 and rounded once).
    Cos,
    Powf(f64),
    Clamp(f64, f64),
    /// a·x + b, one fused multiply-add.
    Affine(f64, f64),
    /// 1 where x > 0, else 0.
    Step,
    /// −1, 0 or 1.
    Sign,
    /// 1 where lo ≤ x ≤ hi, else 0.
    InRange(f64, f64),
    /// 1 where x ≠ 0 (NaN included), else 0: a condition tensor read as a 0/1 mask.
    NonZero,
    /// GELU x·Φ(x), as the composite x/2 · (1 + erf(x/√2)) rounds it: the same operations in the same
    /// order, in one pass.
    Gelu,
    /// GELU's derivative Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π).
    GeluGrad,
}

/// The element-wise binary functions (with NumPy broadcasting).
///
/// The discriminants are the op codes of `kernels/elementwise.cu`: keep the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// b where b > a or b is NaN, else a (ties and a NaN in a give a).
    Max,
    /// b where b < a or b is NaN, else a (ties and a NaN in a give a).
    Min,
    /// a where b ≠ 0 (NaN included), else −0: x + (−0) = x for every x, so the sum of two selections
    /// with complementary masks is exactly one of the operands.
    Select,
}

/// The three softmax-family reductions over an axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SoftmaxMode {
    /// exp(x − logsumexp(x)), same shape as x.
    Softmax = 0,
    /// x − logsumexp(x), same shape as x.
    LogSoftmax = 1,
    /// logsumexp(x): one value per (outer, inner) pair.
    LogSumExp = 2,
}

/// A tensor seen as (outer, n, inner): the axis being reduced (or indexed) is the middle one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AxisView {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Size of the axis.
    pub n: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
}

impl AxisView {
    /// Elements of the whole view.
    pub fn len(&self) -> Option<usize> {
        self.outer.checked_mul(self.n)?.checked_mul(self.inner)
    }
}

/// `batches` products C = op(A)·op(B) of m×k by k×n, op transposing when `ta` / `tb` (A stored k×m,
/// B stored n×k), every operand row-major and the batches consecutive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatmulShape {
    pub batches: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub ta: bool,
    pub tb: bool,
}

/// The shape of one 2-D convolution y = conv(x, w): x is [n, c, h, w], w is [o, c, kh, kw] and y is
/// [n, o, ho, wo], with `ho = (h + 2·padding.0 − dilation.0·(kh − 1) − 1) / stride.0 + 1` (same for wo).
/// The window maps ([`WindowOp`]) use the same description with `o` ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
    /// Step between windows (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding on each side (rows, columns).
    pub padding: (usize, usize),
    /// Spacing between taps (rows, columns).
    pub dilation: (usize, usize),
}

impl ConvShape {
    /// Elements of x, w and y (`None` if a count overflows).
    pub(crate) fn lens(&self) -> Option<(usize, usize, usize)> {
        let m = |d: &[usize]| d.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        Some((m(&[self.n, self.c, self.h, self.w])?, m(&[self.o, self.c, self.kh, self.kw])?, m(&[self.n, self.o, self.ho, self.wo])?))
    }
}

/// Which of the three partial derivatives of T(x, w, y) = Σ y ∘ conv(x, w) a convolution computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvMode {
    /// y = Σ conv(x_p, w_p); pairs are (x, w).
    Forward = 0,
    /// x = Σ conv_transpose(y_p, w_p); pairs are (y, w).
    InputGrad = 1,
    /// w = Σ correlate(x_p, y_p); pairs are (x, y).
    WeightGrad = 2,
}

/// The linear window maps of a convolution's geometry (see `ops/conv.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WindowOp {
    /// x [n, c, h, w] → columns [c·kh·kw, n·ho·wo].
    Im2col,
    /// The adjoint of [`WindowOp::Im2col`].
    Col2im,
    /// Average over kh×kw windows (padding counts as zeros; divisor kh·kw): [n, c, ho, wo].
    AvgPool,
    /// The adjoint of [`WindowOp::AvgPool`].
    AvgPoolAdjoint,
}

/// The shapes of one attention call: `heads` problems, each Q [nq, d], K [nk, d], V [nk, dv], all
/// contiguous and row-major (head after head), with scale `scale` and an optional causal mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    /// Number of independent problems (the product of the leading batch and head dimensions).
    pub heads: usize,
    /// Queries per problem.
    pub nq: usize,
    /// Keys (and values) per problem.
    pub nk: usize,
    /// Width of queries and keys.
    pub d: usize,
    /// Width of values.
    pub dv: usize,
    /// The factor c in S = c·Q·Kᵀ.
    pub scale: f64,
    /// Whether query i sees only keys j ≤ i (top-left aligned).
    pub causal: bool,
}

impl AttnShape {
    /// Keys visible to query row `i`.
    pub(crate) fn visible(&self, i: usize) -> usize {
        if self.causal {
            (i + 1).min(self.nk)
        } else {
            self.nk
        }
    }
    /// Elements of Q, K, V and O (`None` if a count overflows).
    pub(crate) fn lens(&self) -> Option<[usize; 4]> {
        let m = |a: usize, b: usize| self.heads.checked_mul(a)?.checked_mul(b);
        Some([m(self.nq, self.d)?, m(self.nk, self.d)?, m(self.nk, self.dv)?, m(self.nq, self.dv)?])
    }
}

/// Which outputs an attention backward kernel computes; the others are left zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The query cotangent (dQ, or Q̄).
    pub q: bool,
    /// The key and value cotangents (dK and dV, or K̄ and V̄).
    pub kv: bool,
    /// The cotangent of dO (dŌ; backward-over-backward only).
    pub d_o: bool,
}

/// A fused optimizer update (see `optim`): the same IEEE operations, in the same order, as the taped
/// path, so both give the same bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Update {
    /// Tensors (θ, g[, v]), hyperparameters (lr, wd[, μ]) → (θ'[, v']).
    Sgd { momentum: bool, nesterov: bool },
    /// Tensors (θ, g, m, v), hyperparameters (lr, β₁, β₂, wd) → (θ', m', v'), at step index `t`.
    Adam { decoupled: bool, eps: f64, eps_root: f64, t: usize },
}

/// Row-major strides of `dims` stretched to `out` for broadcasting (0 on broadcast dimensions).
pub(crate) fn broadcast_strides(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let mut s = vec![0; r];
    let mut acc = 1usize;
    for (i, &d) in dims.iter().enumerate().rev() {
        if let Some(slot) = (i + r).checked_sub(dims.len()).and_then(|o| s.get_mut(o)) {
            *slot = if d == 1 { 0 } else { acc };
        }
        acc = acc.saturating_mul(d);
    }
    s
}

/// Merges adjacent dimensions that are contiguous in the strided view (stride[d] = stride[d + 1]·dims[d + 1])
/// and drops dimensions of size 1, so that rows are as long as possible.
pub(crate) fn coalesce(dims: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut d, mut s): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for (&n, &st) in dims.iter().zip(strides) {
        if n == 1 {
            continue;
        }
        match (d.last_mut(), s.last_mut()) {
            (Some(pd), Some(ps)) if Some(*ps) == st.checked_mul(n) => {
                *pd *= n;
                *ps = st;
            }
            _ => {
                d.push(n);
                s.push(st);
            }
        }
    }
    (d, s)
}

/// One device's buffers and the kernels on them. `op` names the user-facing op in errors.
///
/// Operands passed as `&Self` are on the same device as `self` (the storage enum checks that before
/// calling); their dtypes are checked by the ops layer and again here. Lengths are in elements.
pub(crate) trait Backend: Sized {
    /// The element type.
    fn dtype(&self) -> DType;
    /// The device the buffer lives on.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn device(&self) -> Device;
    /// The number of elements.
    fn len(&self) -> usize;

    /// f(x) element-wise.
    fn unary(&self, op: &'static str, f: UnaryOp) -> Result<Self>;
    /// f(a, b) element-wise with broadcasting of `self` (dims `ad`) and `rhs` (dims `bd`) to `out`.
    fn binary(&self, op: &'static str, ad: &[usize], rhs: &Self, bd: &[usize], out: &[usize], f: BinaryOp) -> Result<Self>;
    /// Σ over the middle axis of `v`: outer·inner elements, each summed in ascending order.
    fn sum_axis(&self, op: &'static str, v: AxisView) -> Result<Self>;
    /// Max over the middle axis (outer·inner values) and the one-hot mask of the first maximum (NaN
    /// wins), shaped like `self`.
    fn max_axis(&self, op: &'static str, v: AxisView) -> Result<(Self, Self)>;
    /// A softmax-family reduction over the middle axis.
    fn softmax_axis(&self, op: &'static str, v: AxisView, mode: SoftmaxMode) -> Result<Self>;
    /// Batched op(self)·op(rhs), each output one FMA chain over k ascending from zero.
    fn matmul(&self, op: &'static str, rhs: &Self, s: MatmulShape) -> Result<Self>;
    /// out[k] = self[offset + Σ_d k_d·strides[d]] for every index k of `dims` (row-major output):
    /// permutes, broadcasts and narrows.
    fn copy_strided(&self, op: &'static str, dims: &[usize], strides: &[usize], offset: usize) -> Result<Self>;
    /// A zero buffer of `len` elements with out[offset + Σ_d k_d·strides[d]] = self[k] for every index k
    /// of `dims` (positions distinct): the adjoint of a narrow.
    fn place_strided(&self, op: &'static str, len: usize, dims: &[usize], strides: &[usize], offset: usize) -> Result<Self>;
    /// The parts (each outer·lᵢ·inner) concatenated along the middle axis.
    fn concat(op: &'static str, parts: &[&Self], outer: usize, inner: usize) -> Result<Self>;
    /// out[o, j, i] = self[o, idx[j], i] for a (outer, n, inner) `self`; out is (outer, idx.len(), inner).
    fn index_select(&self, op: &'static str, idx: &[usize], v: AxisView) -> Result<Self>;
    /// The adjoint of [`Backend::index_select`]: out (outer, n, inner) sums the rows j of `self`
    /// (outer, idx.len(), inner) with idx[j] = r, in ascending j.
    fn index_add(&self, op: &'static str, idx: &[usize], v: AxisView) -> Result<Self>;
    /// out[o, j, i] = self[o, idx[o, j, i], i] for a (outer, n, inner) `self`; idx (and out) are
    /// (outer, m, inner).
    fn gather(&self, op: &'static str, idx: &[usize], v: AxisView, m: usize) -> Result<Self>;
    /// The adjoint of [`Backend::gather`]: out (outer, n, inner), self and idx (outer, m, inner).
    fn scatter_add(&self, op: &'static str, idx: &[usize], v: AxisView, m: usize) -> Result<Self>;
    /// A window map of a convolution geometry (`s.o` unused).
    fn window(&self, op: &'static str, w: WindowOp, s: &ConvShape) -> Result<Self>;
    /// Σ over `pairs` of one partial derivative of the convolution `s` (see [`ConvMode`]).
    fn conv(op: &'static str, mode: ConvMode, s: &ConvShape, pairs: &[(&Self, &Self)]) -> Result<Self>;
    /// Whether the fused attention kernels handle `g` (else the ops layer takes the composite path).
    fn supports_attention(g: &AttnShape) -> bool;
    /// Fused attention forward: O [heads·nq·dv] and the row logsumexp ℓ [heads·nq].
    fn attention_forward(op: &'static str, g: &AttnShape, q: &Self, k: &Self, v: &Self) -> Result<(Self, Self)>;
    /// Fused attention backward: the packed [dQ | dK | dV] from Q, K, V, the forward's O and ℓ, and dO.
    fn attention_backward(op: &'static str, g: &AttnShape, qkv: [&Self; 3], saved: [&Self; 2], d_o: &Self, need: Need) -> Result<Self>;
    /// Fused attention backward-over-backward: the packed [Q̄ | K̄ | V̄ | dŌ] given the packed cotangent
    /// [a | b | e] of (dQ, dK, dV).
    fn attention_backward_backward(
        op: &'static str,
        g: &AttnShape,
        qkv: [&Self; 3],
        saved: [&Self; 2],
        d_o: &Self,
        cot: &Self,
        need: Need,
    ) -> Result<Self>;
    /// A fused optimizer update (see [`Update`]); hyperparameters are one-element buffers.
    fn update(op: &'static str, u: Update, tensors: &[&Self], hypers: &[&Self]) -> Result<Vec<Self>>;
    /// The element type converted (round to nearest even when narrowing).
    fn cast(&self, op: &'static str, to: DType) -> Result<Self>;
    /// Whether no element is NaN or infinite.
    fn all_finite(&self, op: &'static str) -> Result<bool>;
}
