//! Tape-based reverse-mode autodiff whose backward pass is itself recorded.
//!
//! A [`Tape`] is a Wengert list: every op on tracked [`Var`]s appends a node holding its inputs' values,
//! its output and its vector-Jacobian product (VJP). Each VJP is written with the same differentiable
//! ops as the forward pass, so when [`grad`] runs with `create_graph = true` the backward pass appends
//! new nodes to the same tape and the gradients it returns are tracked variables: differentiate them
//! again for Hessian-vector products, backward-over-backward, or metagradients (see [`hvp`], [`jvp`]).
//! With `create_graph = false` the VJPs run in no-grad mode (no recording at all), and the nodes the
//! backward pass walked release their saved tensors.
//!
//! Nodes never hold a [`Var`] (which points back at the tape): they hold plain tensors and node ids, and
//! the backward pass rebuilds `Var`s from them, so the tape has no reference cycles and is freed when
//! the last `Var` and `Tape` handle are dropped.
//!
//! Gradients are accumulated in node order (descending ids), so they are deterministic.

mod functional;
pub use functional::{hvp, jvp, vjp};

mod custom;
pub use custom::CustomOp;

use crate::error::{Error, Result};
use crate::{mode, DType, Shape, Tensor};
use std::cell::RefCell;
use std::rc::Rc;

/// The VJP of one node: (input values as vars, output as var, output cotangent) → input cotangents
/// (`None` for inputs that need none, such as masks or untracked inputs).
pub type BackwardFn = dyn Fn(&[Var], &Var, &Var) -> Result<Vec<Option<Var>>>;

struct Node {
    op: &'static str,
    /// Input values and, for tracked inputs, their node ids on this tape.
    inputs: Vec<(Tensor, Option<usize>)>,
    output: Tensor,
    /// `None` for leaves.
    backward: Option<Rc<BackwardFn>>,
    /// Set when a backward without `create_graph` released this node's saved tensors.
    freed: bool,
}

#[derive(Default)]
struct TapeInner {
    nodes: Vec<Node>,
}

/// A recording of operations on variables. Cheap to clone (a shared handle).
#[derive(Clone, Default)]
pub struct Tape(Rc<RefCell<TapeInner>>);

impl Tape {
    /// A new, empty tape.
    pub fn new() -> Tape {
        Tape::default()
    }

    /// A leaf variable on this tape: gradients can be taken with respect to it.
    pub fn var(&self, value: Tensor) -> Var {
        let id = self.push(Node { op: "leaf", inputs: vec![], output: value.clone(), backward: None, freed: false });
        Var { value, node: Some((self.clone(), id)) }
    }

    /// Number of nodes recorded so far (leaves included).
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, node: Node) -> usize {
        let mut t = self.0.borrow_mut();
        t.nodes.push(node);
        t.nodes.len() - 1
    }

    fn same(&self, other: &Tape) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tape({} nodes)", self.len())
    }
}

/// A tensor value, optionally tracked on a [`Tape`]. All differentiable ops are methods on `Var`.
///
/// A `Var` made with [`Var::constant`] (or produced in [`no_grad`] mode, or from constants only) is not
/// tracked: ops on it record nothing and cost nothing beyond the kernel.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    node: Option<(Tape, usize)>,
}

impl Var {
    /// An untracked variable: a constant as far as differentiation is concerned.
    pub fn constant(value: Tensor) -> Var {
        Var { value, node: None }
    }
    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }
    /// The shape of the value.
    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }
    /// The dimensions of the value.
    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }
    /// The dtype of the value.
    pub fn dtype(&self) -> DType {
        self.value.dtype()
    }
    /// Whether ops on this variable are recorded.
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }
    /// The tape this variable is recorded on, if tracked.
    pub fn tape(&self) -> Option<&Tape> {
        self.node.as_ref().map(|(t, _)| t)
    }
    /// The same value as an untracked constant (gradients stop here).
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    /// Records an op: `value` is its output, computed from the values of `inputs`, and `backward` its
    /// vector-Jacobian product. This is how every op of the crate is defined, and the extension point for
    /// new ones (see also [`CustomOp`]).
    ///
    /// `backward(inputs, output, cotangent)` receives the inputs and the output as variables on the tape
    /// and the output's cotangent, and returns one cotangent per input, shaped like it (`None` where none
    /// is needed: an input that is not tracked, or a mask). Write it with `Var` ops: when the backward
    /// pass runs with `create_graph`, those ops are recorded too, so the op differentiates again to any
    /// order (Hessian-vector products, REPLAY's metagradients) with no further code.
    ///
    /// Returns a constant when recording is off ([`no_grad`]) or no input is tracked. All tracked inputs
    /// must share one tape ([`Error::Autodiff`] otherwise).
    pub fn record(
        op: &'static str,
        value: Tensor,
        inputs: &[&Var],
        backward: impl Fn(&[Var], &Var, &Var) -> Result<Vec<Option<Var>>> + 'static,
    ) -> Result<Var> {
        if !is_grad_enabled() {
            return Ok(Var::constant(value));
        }
        let mut tape: Option<&Tape> = None;
        for v in inputs {
            if let Some((t, _)) = &v.node {
                match tape {
                    None => tape = Some(t),
                    Some(t0) if !t0.same(t) => {
                        return Err(Error::Autodiff { msg: format!("{op}: inputs are recorded on two different tapes") })
                    }
                    _ => {}
                }
            }
        }
        let Some(tape) = tape.cloned() else { return Ok(Var::constant(value)) };
        let node = Node {
            op,
            inputs: inputs.iter().map(|v| (v.value.clone(), v.node.as_ref().map(|(_, i)| *i))).collect(),
            output: value.clone(),
            backward: Some(Rc::new(backward)),
            freed: false,
        };
        let id = tape.push(node);
        Ok(Var { value, node: Some((tape, id)) })
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some((_, id)) => write!(f, "Var(#{id}, {:?})", self.value),
            None => write!(f, "Var(const, {:?})", self.value),
        }
    }
}

/// Whether ops on tracked variables are being recorded on this thread.
pub fn is_grad_enabled() -> bool {
    mode::enabled()
}

/// Runs `f` with recording switched on or off on this thread, restoring the previous mode afterwards
/// (also when `f` panics).
pub fn with_grad_mode<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    let _restore = mode::set(enabled);
    f()
}

/// Runs `f` with no recording: ops compute their values and nothing else (REPLAY trains this way).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_grad_mode(false, f)
}

/// Options for [`grad_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GradOptions {
    /// Record the backward pass so the returned gradients can be differentiated again.
    pub create_graph: bool,
    /// Keep the walked nodes' saved tensors after a backward without `create_graph` (implied by it).
    pub retain_graph: bool,
}

/// Gradients of the scalar `output` with respect to each of `wrt`.
///
/// With `create_graph` the results are tracked variables on the same tape (differentiable again);
/// otherwise they are constants and the nodes the backward pass walked are released. A tracked
/// variable that `output` does not depend on gets a zero gradient; an untracked one (a constant, which
/// has no gradient) is an [`Error::Autodiff`], since asking for it is almost always a mistake (check
/// [`Var::is_tracked`] first where a constant may legitimately appear).
pub fn grad(output: &Var, wrt: &[&Var], create_graph: bool) -> Result<Vec<Var>> {
    if output.value.numel() != 1 {
        return Err(Error::Autodiff {
            msg: format!("grad needs a scalar output, got shape {}; use vjp (or grad_with) with an explicit cotangent", output.shape()),
        });
    }
    let seed = Var::constant(Tensor::full_on(1.0, output.shape().clone(), output.dtype(), output.value().device())?);
    grad_with(output, wrt, &seed, GradOptions { create_graph, retain_graph: false })
}

/// The vector-Jacobian product `cotangentᵀ · ∂output/∂wrt` for each of `wrt`; `cotangent` has the
/// output's shape and may itself be a tracked variable (the result is then differentiable in it too).
pub fn grad_with(output: &Var, wrt: &[&Var], cotangent: &Var, opts: GradOptions) -> Result<Vec<Var>> {
    vjp_many(&[output], &[cotangent], wrt, opts)
}

/// The vector-Jacobian product of several outputs at once: `Σᵢ cotangentᵢᵀ · ∂outputᵢ/∂wrt` for each
/// of `wrt` (one backward pass), as [`grad_with`] of `Σᵢ ⟨outputᵢ, cotangentᵢ⟩` would give it, without
/// recording that sum. Outputs may share nodes; untracked outputs contribute nothing.
pub fn vjp_many(outputs: &[&Var], cotangents: &[&Var], wrt: &[&Var], opts: GradOptions) -> Result<Vec<Var>> {
    if outputs.len() != cotangents.len() {
        return Err(Error::Autodiff { msg: format!("{} outputs but {} cotangents", outputs.len(), cotangents.len()) });
    }
    for (output, cotangent) in outputs.iter().zip(cotangents) {
        if cotangent.shape() != output.shape() || cotangent.dtype() != output.dtype() {
            return Err(Error::Autodiff {
                msg: format!(
                    "cotangent of shape {} {} does not match output of shape {} {}",
                    cotangent.shape(),
                    cotangent.dtype(),
                    output.shape(),
                    output.dtype()
                ),
            });
        }
    }
    let zeros = |v: &Var| Tensor::full_on(0.0, v.shape().clone(), v.dtype(), v.value().device()).map(Var::constant);
    if let Some((i, v)) = wrt.iter().enumerate().find(|(_, v)| !v.is_tracked()) {
        return Err(Error::Autodiff {
            msg: format!(
                "grad with respect to variable {i} ({} {}), which is not tracked (a constant has no gradient): make it with Tape::var",
                v.shape(),
                v.dtype()
            ),
        });
    }
    let seeds: Vec<(&Tape, usize, &Var)> =
        outputs.iter().zip(cotangents).filter_map(|(o, c)| o.node.as_ref().map(|(t, id)| (t, *id, *c))).collect();
    let Some(&(tape, out_id, _)) = seeds.iter().max_by_key(|s| s.1) else {
        return wrt.iter().map(|v| zeros(v)).collect();
    };
    let tape = tape.clone();
    if seeds.iter().any(|s| !s.0.same(&tape)) {
        return Err(Error::Autodiff { msg: "vjp: the outputs are on different tapes".into() });
    }
    let mut want: Vec<Option<usize>> = Vec::with_capacity(wrt.len());
    for v in wrt {
        match &v.node {
            Some((t, id)) if t.same(&tape) => want.push(Some(*id)),
            Some(_) => return Err(Error::Autodiff { msg: "grad: a wrt variable is on another tape than the output".into() }),
            None => want.push(None),
        }
    }
    let lowest = want.iter().flatten().copied().min().unwrap_or(out_id + 1);
    let mut grads: Vec<Option<Var>> = vec![None; out_id + 1];
    let mut found: Vec<Option<Var>> = vec![None; wrt.len()];
    let keep = opts.create_graph || opts.retain_graph;
    with_grad_mode(opts.create_graph, || -> Result<()> {
        for &(_, id, c) in &seeds {
            accumulate(&mut grads, id, c.clone())?;
        }
        for id in (lowest..=out_id).rev() {
            let Some(g) = grads.get_mut(id).and_then(Option::take) else { continue };
            for (w, f) in want.iter().zip(found.iter_mut()) {
                if *w == Some(id) {
                    *f = Some(g.clone());
                }
            }
            if id == lowest {
                break;
            }
            let (op, backward, inputs, output) = {
                let mut t = tape.0.borrow_mut();
                let nodes = t.nodes.len();
                let node = t
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| Error::Autodiff { msg: format!("internal: node #{id} is past the tape's {nodes} nodes") })?;
                if node.freed {
                    return Err(Error::Autodiff {
                        msg: format!(
                            "node #{id} ({}) was released by an earlier backward; pass create_graph or retain_graph to backward through it twice",
                            node.op
                        ),
                    });
                }
                let Some(b) = node.backward.clone() else { continue };
                let inputs: Vec<Var> =
                    node.inputs.iter().map(|(v, i)| Var { value: v.clone(), node: i.map(|i| (tape.clone(), i)) }).collect();
                let output = Var { value: node.output.clone(), node: Some((tape.clone(), id)) };
                if !keep {
                    node.freed = true;
                }
                (node.op, b, inputs, output)
            };
            let gin = backward(&inputs, &output, &g)?;
            if gin.len() != inputs.len() {
                return Err(Error::Autodiff { msg: format!("{op}: VJP returned {} cotangents for {} inputs", gin.len(), inputs.len()) });
            }
            for (x, gi) in inputs.iter().zip(gin) {
                let (Some((_, pid)), Some(gi)) = (&x.node, gi) else { continue };
                if gi.shape() != x.shape() {
                    return Err(Error::Autodiff {
                        msg: format!("{op}: VJP produced a cotangent of shape {} for an input of shape {}", gi.shape(), x.shape()),
                    });
                }
                accumulate(&mut grads, *pid, gi)?;
            }
            if !keep {
                if let Some(node) = tape.0.borrow_mut().nodes.get_mut(id) {
                    node.inputs.clear();
                    node.backward = None;
                    node.output = Tensor::zeros((), node.output.dtype());
                }
            }
        }
        Ok(())
    })?;
    found.into_iter().zip(wrt).map(|(g, v)| g.map_or_else(|| zeros(v), Ok)).collect()
}

/// Adds the cotangent `g` to what node `id` has accumulated. Ids come from the tape and are at most
/// the output's, which sizes `grads` (inputs are recorded before the nodes that use them).
fn accumulate(grads: &mut [Option<Var>], id: usize, g: Var) -> Result<()> {
    let n = grads.len();
    let acc =
        grads.get_mut(id).ok_or_else(|| Error::Autodiff { msg: format!("internal: node #{id} is past the {n} nodes of this backward") })?;
    *acc = Some(match acc.take() {
        None => g,
        Some(prev) => prev.add(&g)?,
    });
    Ok(())
}
