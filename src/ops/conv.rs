//! 2-D convolution (NCHW, groups = 1) and average pooling.
//!
//! Two paths compute the same convolution:
//! - [`Var::conv2d`], the fused path: direct convolution kernels (`backend::cpu::conv`) recorded as
//!   *conv nodes*, described below;
//! - [`Var::conv2d_composite`], the reference: `im2col` (a linear map, a gather with zero padding) then a
//!   matmul. Through the linear-map mechanism of `linear.rs` its derivatives of every order are exact with
//!   no code of their own; the tests check the fused path against it.
//!
//! # Conv nodes: one op for every derivative order
//! Write the convolution as the trilinear form T(x, w, y) = Σ y ∘ conv(x, w). Its partial derivatives are
//! the three kernels: ∂T/∂y = conv(x, w), ∂T/∂x = conv_transpose(y, w), ∂T/∂w = correlate(x, y). A conv
//! node has inputs tagged with a role (x, w or y) and outputs of the form
//!   out = Σ_pairs ∂T/∂role(a, b)    (a, b two inputs with the two other roles),
//! each computed by *one* kernel call over the concatenated pairs. The VJP of a conv node is again one
//! conv node: since ⟨c, ∂T/∂r(a, b)⟩ = T(a, b, c), the cotangent of input a is ∂T/∂role(a)(b, c), summed
//! over every term that uses a. Hence:
//! - `conv2d` is the node y = ∂T/∂y(x, w);
//! - its VJP is the node `conv2d_backward` with outputs dx = conv_transpose(dy, w) (the op
//!   [`Var::conv2d_backward_input`]) and dw = correlate(x, dy) ([`Var::conv2d_backward_weight`]);
//! - the VJP of that, the backward-over-backward, is the node `conv2d_backward_backward`:
//!   dȳ = conv(gx, w) + conv(x, gw) in one pass over the concatenated inputs, x̄ = conv_transpose(dy, gw)
//!   and w̄ = correlate(gx, dy);
//! - third and higher derivatives are conv nodes built by the same rule, so they are exact (not fused
//!   beyond one kernel call per output), never an error.
//!
//! Only outputs for tracked inputs are computed. The tape records one output tensor per op, so outputs
//! that must meet again in the next derivative (those sharing a tracked input, such as dx and dw when
//! dy is tracked: both feed dȳ) are recorded as one node whose outputs are packed into one flat tensor
//! and read back with the differentiable `narrow` and `reshape` (whose VJPs zero-pad and sum the
//! pieces' cotangents back into one packed cotangent). Other outputs are recorded as nodes of their
//! own, which saves the packing copies; a node with one output returns it in its own shape. Average pooling is a linear map.

use super::linear::{linear, LinearMap};
use crate::backend::spec::{ConvMode, ConvShape, WindowOp};
use crate::backend::Storage;
use crate::error::{invalid, shape_err, Error, Result};
use crate::{is_grad_enabled, Shape, Tensor, Var};
use std::rc::Rc;

/// Geometry of a 2-D window sweep (convolution or pooling) over [N, C, H, W].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOpts {
    /// Step between windows (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding added on each side (rows, columns).
    pub padding: (usize, usize),
    /// Spacing between window taps (rows, columns).
    pub dilation: (usize, usize),
}

impl Default for Conv2dOpts {
    fn default() -> Self {
        Conv2dOpts { stride: (1, 1), padding: (0, 0), dilation: (1, 1) }
    }
}

impl Conv2dOpts {
    /// Stride s and padding p in both directions, dilation 1.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dOpts { stride: (stride, stride), padding: (padding, padding), dilation: (1, 1) }
    }
}

/// The window sweep of one conv/pool: input [n, c, h, w], kernel kh×kw, output ho×wo.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    o: Conv2dOpts,
}

impl Geometry {
    fn new(op: &'static str, x: &[usize], kh: usize, kw: usize, o: Conv2dOpts) -> Result<Geometry> {
        let &[n, c, h, w] = x else {
            return shape_err(op, format!("input {x:?} must be [N, C, H, W]"));
        };
        if o.stride.0 == 0 || o.stride.1 == 0 || o.dilation.0 == 0 || o.dilation.1 == 0 || kh == 0 || kw == 0 {
            return invalid(op, format!("kernel {kh}x{kw}, stride {:?} and dilation {:?} must be positive", o.stride, o.dilation));
        }
        // Checked arithmetic: absurd padding or dilation is an error, not a wrapped size.
        let span = |k: usize, d: usize| d.checked_mul(k - 1).and_then(|s| s.checked_add(1));
        let padded = |n: usize, p: usize| p.checked_mul(2).and_then(|p| p.checked_add(n));
        let sizes = (padded(h, o.padding.0), padded(w, o.padding.1), span(kh, o.dilation.0), span(kw, o.dilation.1));
        let (Some(hp), Some(wp), Some(sh), Some(sw)) = sizes else {
            return shape_err(
                op,
                format!("input {x:?} with padding {:?} and a {kh}x{kw} kernel with dilation {:?} overflows usize", o.padding, o.dilation),
            );
        };
        if hp < sh || wp < sw {
            return shape_err(
                op,
                format!("padded input {hp}x{wp} is smaller than the dilated {kh}x{kw} kernel (dilation {:?})", o.dilation),
            );
        }
        let (ho, wo) = ((hp - sh) / o.stride.0 + 1, (wp - sw) / o.stride.1 + 1);
        // Every buffer size the kernels compute is a sub-product of these (zeros aside).
        if [n, c, kh, kw, ho, wo].iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(1))).is_none() {
            return shape_err(op, format!("input {x:?} with a {kh}x{kw} kernel gives a {ho}x{wo} output: too many elements"));
        }
        Ok(Geometry { n, c, h, w, kh, kw, ho, wo, o })
    }
}

/// A window map of the geometry, with output shape `out`.
fn window(op: &'static str, x: &Tensor, w: WindowOp, g: &Geometry, out: &[usize]) -> Result<Tensor> {
    super::compute(op, x)?;
    Tensor::new(op, x.storage().window(op, w, &g.conv(0))?, out.to_vec())
}

/// x [N, C, H, W] → columns [C·kh·kw, N·Ho·Wo]: row (c, ki, kj), column (n, oh, ow).
struct Im2col(Geometry);

impl LinearMap for Im2col {
    fn names(&self) -> (&'static str, &'static str) {
        ("im2col", "col2im")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.0;
        window("im2col", x, WindowOp::Im2col, &g, &[g.c * g.kh * g.kw, g.n * g.ho * g.wo])
    }
    fn apply_adjoint(&self, cols: &Tensor) -> Result<Tensor> {
        let g = self.0;
        window("col2im", cols, WindowOp::Col2im, &g, &[g.n, g.c, g.h, g.w])
    }
}

/// Average over kh×kw windows (padding counts as zeros in the average: divisor kh·kw).
struct AvgPool(Geometry);

impl LinearMap for AvgPool {
    fn names(&self) -> (&'static str, &'static str) {
        ("avg_pool2d", "avg_pool2d_adjoint")
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.0;
        window("avg_pool2d", x, WindowOp::AvgPool, &g, &[g.n, g.c, g.ho, g.wo])
    }
    fn apply_adjoint(&self, gt: &Tensor) -> Result<Tensor> {
        let g = self.0;
        window("avg_pool2d_adjoint", gt, WindowOp::AvgPoolAdjoint, &g, &[g.n, g.c, g.h, g.w])
    }
}

/// The role of a tensor in the trilinear form T(x, w, y) = Σ y ∘ conv(x, w). Ordered X < W < Y: the
/// two arguments of each partial derivative are stored in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    X,
    W,
    Y,
}

/// One output of a conv node: Σ over `pairs` of ∂T/∂`role` at two of the node's inputs (indices, with
/// the roles other than `role`, in role order).
#[derive(Clone, Debug)]
struct Term {
    role: Role,
    pairs: Vec<(usize, usize)>,
}

impl Geometry {
    /// The kernels' shape for `o` output channels.
    fn conv(&self, o: usize) -> ConvShape {
        ConvShape {
            n: self.n,
            c: self.c,
            h: self.h,
            w: self.w,
            o,
            kh: self.kh,
            kw: self.kw,
            ho: self.ho,
            wo: self.wo,
            stride: self.o.stride,
            padding: self.o.padding,
            dilation: self.o.dilation,
        }
    }
}

fn role_shape(s: &ConvShape, r: Role) -> Shape {
    Shape::new(match r {
        Role::X => [s.n, s.c, s.h, s.w],
        Role::W => [s.o, s.c, s.kh, s.kw],
        Role::Y => [s.n, s.o, s.ho, s.wo],
    })
}

/// The name of the node that a VJP of node `name` records.
fn vjp_name(name: &str) -> &'static str {
    match name {
        "conv2d" => "conv2d_backward",
        "conv2d_backward" | "conv2d_backward_input" | "conv2d_backward_weight" => "conv2d_backward_backward",
        _ => "conv2d_higher_derivative",
    }
}

/// Records a conv node: `inputs` with `roles`, one output per term (see the module docs). Returns the
/// outputs in their own shapes.
fn conv_node(name: &'static str, s: ConvShape, inputs: &[&Var], roles: Vec<Role>, terms: Vec<Term>) -> Result<Vec<Var>> {
    if let Some(first) = inputs.first() {
        for v in inputs {
            super::same_dtype(name, first, v)?;
        }
    }
    let val = |i: usize| {
        inputs
            .get(i)
            .map(|v| v.value().storage())
            .ok_or_else(|| Error::Autodiff { msg: format!("{name}: a term refers to input {i} of a node with {} inputs", inputs.len()) })
    };
    let mut parts = Vec::with_capacity(terms.len());
    for t in &terms {
        // The pairs of each role, in the order the kernels take them: (x, w), (y, w) and (x, y); the
        // pairs of an X term are stored in role order (w, y), so they are swapped.
        let (mode, swap) = match t.role {
            Role::Y => (ConvMode::Forward, false),
            Role::X => (ConvMode::InputGrad, true),
            Role::W => (ConvMode::WeightGrad, false),
        };
        let pairs = t
            .pairs
            .iter()
            .map(|&(a, b)| Ok(if swap { (val(b)?, val(a)?) } else { (val(a)?, val(b)?) }))
            .collect::<Result<Vec<(&Storage, &Storage)>>>()?;
        parts.push(Tensor::new(name, Storage::conv(name, mode, &s, &pairs)?, role_shape(&s, t.role))?);
    }
    // Outputs that share a tracked input go in one node, so that the next derivative sees all their
    // cotangents at once and fuses their contributions to that input; the others get nodes of their
    // own, which saves the packing copies (and all of them when nothing is recorded).
    let mut group: Vec<usize> = (0..terms.len()).collect();
    if is_grad_enabled() {
        for (i, _) in inputs.iter().enumerate().filter(|(_, v)| v.is_tracked()) {
            // Merge the groups of the terms that use input i into the group of the first of them.
            let users: Vec<usize> =
                group.iter().zip(&terms).filter(|(_, t)| t.pairs.iter().any(|&(a, b)| a == i || b == i)).map(|(&g, _)| g).collect();
            if let Some(&to) = users.first() {
                group.iter_mut().filter(|g| users.contains(g)).for_each(|g| *g = to);
            }
        }
    }
    let mut outs: Vec<Option<Var>> = vec![None; terms.len()];
    for g in 0..terms.len() {
        let (sub_terms, sub_parts): (Vec<Term>, Vec<Tensor>) =
            terms.iter().zip(&parts).zip(&group).filter(|(_, &gk)| gk == g).map(|((t, p), _)| (t.clone(), p.clone())).unzip();
        if sub_terms.is_empty() {
            continue;
        }
        let mut recorded = record_node(name, s, inputs, &roles, sub_terms, &sub_parts)?.into_iter();
        for (out, _) in outs.iter_mut().zip(&group).filter(|(_, &gk)| gk == g) {
            *out = recorded.next();
        }
    }
    outs.into_iter().collect::<Option<Vec<Var>>>().ok_or_else(|| Error::Autodiff { msg: format!("{name}: an output was not recorded") })
}

/// Records one node computing `terms` (already evaluated as `parts`) from `inputs`, with the conv-node
/// VJP, and returns its outputs (read back from the packed tensor when there are several).
fn record_node(name: &'static str, s: ConvShape, inputs: &[&Var], roles: &[Role], terms: Vec<Term>, parts: &[Tensor]) -> Result<Vec<Var>> {
    let value = match parts {
        [one] => one.clone(),
        _ => {
            let flat = parts.iter().map(|p| p.reshape([p.numel()])).collect::<Result<Vec<_>>>()?;
            Tensor::concat(&flat.iter().collect::<Vec<_>>(), 0)?
        }
    };
    let shapes: Vec<Shape> = terms.iter().map(|t| role_shape(&s, t.role)).collect();
    let (roles_vjp, terms_vjp) = (roles.to_vec(), terms.clone());
    let packed = Var::record(name, value, inputs, move |xs, _, g| {
        let cots = unpack(g, &shapes)?;
        let n = xs.len();
        let mut roles2 = roles_vjp.clone();
        roles2.extend(terms_vjp.iter().map(|t| t.role));
        let role = |u: usize| {
            roles_vjp
                .get(u)
                .copied()
                .ok_or_else(|| Error::Autodiff { msg: format!("{name}: a term refers to input {u} of a node with {n} inputs") })
        };
        // The cotangent of input i: ∂T/∂role(i) at (the other argument, the output's cotangent), for
        // every term that uses i.
        let (mut terms2, mut which) = (Vec::new(), Vec::new());
        for (i, (x, &role_i)) in xs.iter().zip(&roles_vjp).enumerate() {
            if !x.is_tracked() {
                continue;
            }
            let mut pairs = Vec::new();
            for (k, t) in terms_vjp.iter().enumerate() {
                for &(a, b) in &t.pairs {
                    for (me, other) in [(a, b), (b, a)] {
                        // Input n + k, the cotangent of output k, has the role of term k.
                        if me == i {
                            pairs.push(if role(other)? < t.role { (other, n + k) } else { (n + k, other) });
                        }
                    }
                }
            }
            if !pairs.is_empty() {
                terms2.push(Term { role: role_i, pairs });
                which.push(i);
            }
        }
        let mut grads = vec![None; n];
        if which.is_empty() {
            return Ok(grads);
        }
        let mut inputs2: Vec<&Var> = xs.iter().collect();
        inputs2.extend(cots.iter());
        for (i, gi) in which.into_iter().zip(conv_node(vjp_name(name), s, &inputs2, roles2.clone(), terms2)?) {
            if let Some(slot) = grads.get_mut(i) {
                *slot = Some(gi); // i < n: `which` holds indices of xs
            }
        }
        Ok(grads)
    })?;
    unpack(&packed, &terms.iter().map(|t| role_shape(&s, t.role)).collect::<Vec<_>>())
}

/// The pieces of a packed node output (or the output itself when there is one piece).
fn unpack(v: &Var, shapes: &[Shape]) -> Result<Vec<Var>> {
    if let [one] = shapes {
        return Ok(vec![v.reshape(one.clone())?]);
    }
    let mut off = 0;
    let mut out = Vec::with_capacity(shapes.len());
    for sh in shapes {
        out.push(v.narrow(0, off, sh.numel())?.reshape(sh.clone())?);
        off += sh.numel();
    }
    Ok(out)
}

/// The single output of a one-term conv node.
fn one(outs: Vec<Var>) -> Result<Var> {
    outs.into_iter().next().ok_or_else(|| Error::Autodiff { msg: "a conv node returned no output".into() })
}

/// Checks x [N, C, H, W] against weights [O, C, kh, kw] (and the bias's dtype) and returns the geometry
/// and O.
fn check_conv(op: &'static str, x: &Var, weight: &Var, bias: Option<&Var>, opts: Conv2dOpts) -> Result<(Geometry, usize)> {
    super::same_dtype(op, x, weight)?;
    if let Some(b) = bias {
        super::same_dtype(op, x, b)?;
    }
    match (x.dims(), weight.dims()) {
        (&[_, c, _, _], &[o, wc, kh, kw]) if wc == c => Ok((Geometry::new(op, x.dims(), kh, kw, opts)?, o)),
        _ => shape_err(op, format!("input {} and weight {} must be [N, C, H, W] and [O, C, kh, kw]", x.shape(), weight.shape())),
    }
}

fn add_bias(op: &'static str, y: Var, bias: Option<&Var>, o: usize) -> Result<Var> {
    match bias {
        None => Ok(y),
        Some(b) => {
            if b.dims() != [o] {
                return shape_err(op, format!("bias {} must have shape [{o}]", b.shape()));
            }
            y.add(&b.reshape([1, o, 1, 1])?)
        }
    }
}

/// Checks that `dy` is [N, O, Ho, Wo] for the geometry `g`.
fn check_dy(op: &'static str, dy: &Var, g: &Geometry) -> Result<usize> {
    match *dy.dims() {
        [n, o, ho, wo] if n == g.n && ho == g.ho && wo == g.wo => Ok(o),
        _ => shape_err(
            op,
            format!(
                "output gradient {} must be [{}, O, {}, {}] for input [{}, {}, {}, {}]",
                dy.shape(),
                g.n,
                g.ho,
                g.wo,
                g.n,
                g.c,
                g.h,
                g.w
            ),
        ),
    }
}

impl Var {
    /// 2-D convolution (cross-correlation, as in PyTorch) of x [N, C, H, W] with weights [O, C, kh, kw]
    /// and an optional bias `[O]`; groups = 1. Output [N, O, Ho, Wo].
    ///
    /// Fused: direct convolution kernels whose backward and backward-over-backward are fused kernels too
    /// (see the module docs); every derivative order is exact. [`Var::conv2d_composite`] is the same map
    /// through im2col + matmul.
    ///
    /// On a CUDA device the same nodes run implicit-GEMM kernels (`kernels/gemm.cu`).
    pub fn conv2d(&self, weight: &Var, bias: Option<&Var>, opts: Conv2dOpts) -> Result<Var> {
        let (g, o) = check_conv("conv2d", self, weight, bias, opts)?;
        let y = conv_node("conv2d", g.conv(o), &[self, weight], vec![Role::X, Role::W], vec![Term { role: Role::Y, pairs: vec![(0, 1)] }])?;
        add_bias("conv2d", one(y)?, bias, o)
    }

    /// The reference convolution through im2col (a linear map) and matmul; same arguments and result as
    /// [`Var::conv2d`].
    pub fn conv2d_composite(&self, weight: &Var, bias: Option<&Var>, opts: Conv2dOpts) -> Result<Var> {
        let (g, o) = check_conv("conv2d_composite", self, weight, bias, opts)?;
        let cols = linear(self, Rc::new(Im2col(g)), false)?;
        let y = weight.reshape([o, g.c * g.kh * g.kw])?.matmul(&cols)?; // [O, N·Ho·Wo]
        let y = y.reshape([o, g.n, g.ho, g.wo])?.permute(&[1, 0, 2, 3])?;
        add_bias("conv2d_composite", y, bias, o)
    }

    /// The input gradient of [`Var::conv2d`]: dx = conv_transpose(dy, w) for an output gradient `dy`
    /// [N, O, Ho, Wo], weights [O, C, kh, kw] and an input of `input_hw` = (H, W) (needed because several
    /// input sizes give the same output size when the stride exceeds 1). Output [N, C, H, W].
    pub fn conv2d_backward_input(dy: &Var, weight: &Var, input_hw: (usize, usize), opts: Conv2dOpts) -> Result<Var> {
        const OP: &str = "conv2d_backward_input";
        super::same_dtype(OP, dy, weight)?;
        let (n, o, c, kh, kw) = match (dy.dims(), weight.dims()) {
            (&[n, o, _, _], &[wo, c, kh, kw]) if wo == o => (n, o, c, kh, kw),
            _ => {
                return shape_err(
                    OP,
                    format!("output gradient {} and weight {} must be [N, O, Ho, Wo] and [O, C, kh, kw]", dy.shape(), weight.shape()),
                )
            }
        };
        let g = Geometry::new(OP, &[n, c, input_hw.0, input_hw.1], kh, kw, opts)?;
        check_dy(OP, dy, &g)?;
        let y = conv_node(OP, g.conv(o), &[weight, dy], vec![Role::W, Role::Y], vec![Term { role: Role::X, pairs: vec![(0, 1)] }])?;
        one(y)
    }

    /// The weight gradient of [`Var::conv2d`]: dw = correlate(x, dy) for an input x [N, C, H, W], an
    /// output gradient `dy` [N, O, Ho, Wo] and a kernel of `kernel` = (kh, kw). Output [O, C, kh, kw].
    pub fn conv2d_backward_weight(x: &Var, dy: &Var, kernel: (usize, usize), opts: Conv2dOpts) -> Result<Var> {
        const OP: &str = "conv2d_backward_weight";
        super::same_dtype(OP, x, dy)?;
        if x.shape().rank() != 4 {
            return shape_err(OP, format!("input {} must be [N, C, H, W]", x.shape()));
        }
        let g = Geometry::new(OP, x.dims(), kernel.0, kernel.1, opts)?;
        let o = check_dy(OP, dy, &g)?;
        let y = conv_node(OP, g.conv(o), &[x, dy], vec![Role::X, Role::Y], vec![Term { role: Role::W, pairs: vec![(0, 1)] }])?;
        one(y)
    }

    /// Average pooling over kernel×kernel windows of x [N, C, H, W]. Padding counts as zeros in the
    /// average (the divisor is always kernel²).
    pub fn avg_pool2d(&self, kernel: (usize, usize), opts: Conv2dOpts) -> Result<Var> {
        let g = Geometry::new("avg_pool2d", self.dims(), kernel.0, kernel.1, opts)?;
        linear(self, Rc::new(AvgPool(g)), false)
    }
}
