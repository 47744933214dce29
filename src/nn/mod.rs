//! Named parameters: the bridge between a model's named tensors and REPLAY's flat state.
//!
//! REPLAY ([`crate::replay`]) and the optimizers ([`crate::optim`]) see a training state as a flat
//! `Vec<Tensor>`: the parameters, then the optimizer's buffers. That is the right shape for
//! checkpointing and for differentiating through training, but a flat list has no names, so an error
//! says "state tensor 7" and a checkpoint file could not say which tensor is which. [`Params`] keeps
//! the names beside the tensors, in a fixed order, and maps both ways:
//!
//! - [`Params::to_state`] gives REPLAY's flat state and [`Params::from_state`] puts a flat state (s_T
//!   after [`crate::replay::train`], say) back under the names;
//! - [`Params::name_of`] names the tensor at a flat state index (a parameter or an optimizer buffer),
//!   [`Params::index_of`] goes the other way, and [`Params::annotate_error`] adds those names to the
//!   crate's errors that say "state tensor N" or "parameter N";
//! - [`Params::split_state`] cuts a state slice (of `Var`s inside [`crate::replay::Training::step`])
//!   into the parameters and one slice per buffer group, the arguments the optimizers take;
//! - [`save_safetensors`] and [`load_safetensors`] write and read the collection as a
//!   [safetensors](https://github.com/huggingface/safetensors) file, readable by PyTorch, JAX and
//!   NumPy through Python's `safetensors` package.
//!
//! # Layers
//!
//! [`Linear`], [`Conv2d`], [`BatchNorm2d`], [`LayerNorm`], [`RmsNorm`], [`Embedding`], [`Dropout`],
//! [`MultiHeadAttention`], [`Mlp`] and the pre-norm transformer [`Block`] are plain data (sizes and
//! the full names of their parameters). `init` inserts a layer's parameters into a `Params` under a
//! prefix; `forward` reads them by name from [`Params::vars`], a view of a flat slice of `Var`s (the
//! leaves of a tape, or the `state` of a [`crate::replay::Training::step`] as it arrives). With
//! [`clip_grad_norm`], [`warmup_cosine`] and [`piecewise_linear`], a whole taped training step is
//! differentiable in its metaparameters.
//!
//! ```
//! use metagrad::nn::{Block, Params};
//! use metagrad::{grad, DType, Tape, Tensor, Var};
//! # fn main() -> metagrad::Result<()> {
//! let mut p = Params::new();
//! let block = Block::init(&mut p, "blocks.0", 8, 2, 32, 0.02, DType::F64, 7)?;
//! assert_eq!(p.names().next(), Some("blocks.0.ln1.weight"));
//! let tape = Tape::new();
//! let leaves = p.leaves(&tape);
//! let x = Var::constant(Tensor::randn([2, 5, 8], DType::F64, 1));
//! let y = block.forward(&p.vars(&leaves)?, &x)?; // [2, 5, 8]
//! let g = grad(&y.square()?.sum_all()?, &leaves.iter().collect::<Vec<_>>(), false)?;
//! assert_eq!(g.len(), p.len());
//! # Ok(()) }
//! ```
//!
//! A `Params` is plain data (names and tensor handles, which are cheap to clone): no global
//! registry, no interior mutability.
//!
//! # Names
//!
//! Names are hierarchical, `.`-separated paths such as `blocks.0.attn.wq` (the convention of PyTorch
//! state dicts): non-empty segments, no control characters, and unique within a collection.
//! [`Params::insert_prefixed`] nests one collection in another (`blocks.0` + `attn.wq`).
//!
//! # State layout
//!
//! With `n` parameters and buffer groups `g_0, g_1, ...` (added in that order with
//! [`Params::add_buffers`]), the flat state is
//!
//! ```text
//! index:  0 .. n-1          n .. 2n-1                    2n .. 3n-1                   ...
//! tensor: θ_0 .. θ_{n-1}    g_0's buffer of θ_0 .. θ_{n-1}   g_1's buffer of θ_0 .. θ_{n-1}   ...
//! name:   <param>           <g_0>.<param>                <g_1>.<param>
//! ```
//!
//! so state index `n·(1 + g) + j` is group `g`'s buffer of parameter `j`, named
//! `"{group}.{param}"`. Each group holds one buffer per parameter, of its shape and dtype. The groups
//! the crate's optimizers need, by convention: [`crate::optim::Sgd`] with momentum, one group
//! (`sgd.momentum`); [`crate::optim::Adam`], two (`adam.m`, `adam.v`, or `adamw.m`, `adamw.v` for
//! AdamW), passed in that order. Parameters are all inserted before the first buffer group.
//!
//! ```
//! use metagrad::nn::Params;
//! use metagrad::{DType, Tensor};
//! # fn main() -> metagrad::Result<()> {
//! let mut p = Params::new();
//! p.insert("fc.w", Tensor::zeros([3, 2], DType::F32))?;
//! p.insert("fc.b", Tensor::zeros([2], DType::F32))?;
//! p.add_buffers("adamw.m")?; // zeros like each parameter
//! p.add_buffers("adamw.v")?;
//! let state = p.to_state(); // [fc.w, fc.b, adamw.m.fc.w, adamw.m.fc.b, adamw.v.fc.w, adamw.v.fc.b]
//! assert_eq!(state.len(), 6);
//! assert_eq!(p.name_of(3).as_deref(), Some("adamw.m.fc.b"));
//! assert_eq!(p.index_of("adamw.v.fc.w"), Some(4));
//! let (params, bufs) = p.split_state(&state)?;
//! assert_eq!((params.len(), bufs.len()), (2, 2));
//! # Ok(()) }
//! ```

mod checkpoint;
mod layers;
mod schedule;
mod transformer;
mod vars;

pub use checkpoint::{load_safetensors, save_safetensors};
pub use layers::{BatchNorm2d, Conv2d, Dropout, Embedding, LayerNorm, Linear, RmsNorm};
pub use schedule::{clip_grad_norm, piecewise_linear, warmup_cosine};
pub use transformer::{Block, Mlp, MultiHeadAttention};
pub use vars::{Init, NamedVars};

use crate::error::{invalid, Error, Result};
use crate::{DType, Device, Tensor};
use std::collections::HashMap;
use std::fmt;

/// An ordered collection of named tensors (a model's parameters) and, optionally, groups of optimizer
/// buffers, one buffer per parameter in each group. See the [module docs](self) for the names and the
/// flat state layout.
#[derive(Clone, Default)]
pub struct Params {
    /// Parameter names, in insertion order.
    names: Vec<String>,
    /// The parameters, in the same order.
    tensors: Vec<Tensor>,
    /// Buffer groups, in the order added: (group name, one tensor per parameter).
    groups: Vec<(String, Vec<Tensor>)>,
    /// Every full name (parameters and `group.param` buffers) to its flat state index.
    index: HashMap<String, usize>,
}

/// Every tensor of the state by full name, as `shape dtype device` (not the values).
impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, t) in self.named_state() {
            m.entry(&name, &format_args!("{} {} {}", t.shape(), t.dtype(), t.device()));
        }
        m.finish()
    }
}

/// Checks that `name` is a hierarchical name: non-empty `.`-separated segments without control
/// characters.
fn check_name(op: &'static str, what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return invalid(op, format!("{what} name `{name}` must be non-empty `.`-separated segments (like `blocks.0.attn.wq`)"));
    }
    if name == "__metadata__" {
        return invalid(op, "`__metadata__` is reserved (the safetensors header's metadata entry)");
    }
    if name.chars().any(char::is_control) {
        return invalid(op, format!("{what} name {name:?} contains a control character"));
    }
    Ok(())
}

impl Params {
    /// An empty collection.
    pub fn new() -> Params {
        Params::default()
    }

    /// Appends the parameter `tensor` under `name`. An [`Error::Invalid`] naming it if the name is
    /// taken (by a parameter or a buffer), is not a valid hierarchical name, or buffer groups exist
    /// already (parameters come first in the state).
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<()> {
        let name = name.into();
        check_name("Params::insert", "parameter", &name)?;
        if let Some((g, _)) = self.groups.first() {
            return invalid(
                "Params::insert",
                format!("cannot add parameter `{name}` after the buffer group `{g}`: insert every parameter before adding buffers"),
            );
        }
        if self.index.contains_key(&name) {
            return invalid("Params::insert", format!("duplicate name `{name}`"));
        }
        self.index.insert(name.clone(), self.names.len());
        self.names.push(name);
        self.tensors.push(tensor);
        Ok(())
    }

    /// Appends every parameter of `other` under `"{prefix}.{name}"`, in `other`'s order (to nest a
    /// block's parameters in a model's). `other`'s buffer groups are not copied. Errors as
    /// [`Params::insert`]; on an error nothing has been added.
    pub fn insert_prefixed(&mut self, prefix: &str, other: &Params) -> Result<()> {
        check_name("Params::insert_prefixed", "prefix", prefix)?;
        let mut next = self.clone();
        for (name, t) in other.iter() {
            next.insert(format!("{prefix}.{name}"), t.clone())?;
        }
        *self = next;
        Ok(())
    }

    /// Adds the optimizer buffer group `group` with a zero buffer per parameter (its shape, dtype and
    /// device), named `"{group}.{param}"`. An [`Error::Invalid`] if the group exists or a buffer's name
    /// is taken; [`Error::OutOfMemory`] if the zeros do not fit.
    pub fn add_buffers(&mut self, group: &str) -> Result<()> {
        let zeros = self.tensors.iter().map(|t| Tensor::full_on(0.0, t.shape().clone(), t.dtype(), t.device())).collect::<Result<_>>()?;
        self.add_buffers_from(group, zeros)
    }

    /// Adds the optimizer buffer group `group` holding `buffers`, one per parameter in parameter order,
    /// each of its parameter's shape and dtype (an [`Error::Shape`] naming the parameter otherwise; an
    /// [`Error::Invalid`] for a wrong count, an existing group or a taken name).
    pub fn add_buffers_from(&mut self, group: &str, buffers: Vec<Tensor>) -> Result<()> {
        const OP: &str = "Params::add_buffers";
        check_name(OP, "buffer group", group)?;
        if self.groups.iter().any(|(g, _)| g == group) {
            return invalid(OP, format!("duplicate buffer group `{group}`"));
        }
        if buffers.len() != self.tensors.len() {
            return invalid(OP, format!("buffer group `{group}` has {} tensors for {} parameters", buffers.len(), self.tensors.len()));
        }
        let base = self.state_len();
        let mut index = self.index.clone();
        for (j, ((name, p), b)) in self.names.iter().zip(&self.tensors).zip(&buffers).enumerate() {
            if b.shape() != p.shape() || b.dtype() != p.dtype() {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!("`{group}.{name}` is {} {} but parameter `{name}` is {} {}", b.shape(), b.dtype(), p.shape(), p.dtype()),
                });
            }
            let full = format!("{group}.{name}");
            if index.contains_key(&full) {
                return invalid(OP, format!("duplicate name `{full}` (buffer of `{name}` in group `{group}`)"));
            }
            index.insert(full, base + j);
        }
        self.index = index;
        self.groups.push((group.to_string(), buffers));
        Ok(())
    }

    /// The number of parameters (buffers not counted).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The total element count of the parameters (buffers not counted), saturating at `usize::MAX`.
    pub fn numel(&self) -> usize {
        self.tensors.iter().fold(0usize, |n, t| n.saturating_add(t.numel()))
    }

    /// The parameter (or buffer, by its full name `"{group}.{param}"`) called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).and_then(|&i| self.state_tensor(i))
    }

    /// Group `group`'s buffer of parameter `param`.
    pub fn buffer(&self, group: &str, param: &str) -> Option<&Tensor> {
        let j = *self.index.get(param).filter(|&&j| j < self.len())?;
        self.groups.iter().find(|(g, _)| g == group).and_then(|(_, b)| b.get(j))
    }

    /// The parameters' names and tensors, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + '_ {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    /// The parameters' names, in insertion order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.names.iter().map(String::as_str)
    }

    /// The buffer groups' names, in the order they were added.
    pub fn buffer_groups(&self) -> impl Iterator<Item = &str> + '_ {
        self.groups.iter().map(|(g, _)| g.as_str())
    }

    /// Every tensor of the flat state with its full name, in state order: the parameters, then each
    /// group's buffers (see the [module docs](self)).
    pub fn named_state(&self) -> impl Iterator<Item = (String, &Tensor)> + '_ {
        let params = self.iter().map(|(n, t)| (n.to_string(), t));
        let bufs = self.groups.iter().flat_map(move |(g, b)| self.names.iter().zip(b).map(move |(n, t)| (format!("{g}.{n}"), t)));
        params.chain(bufs)
    }

    /// The length of the flat state: parameters times one plus the number of buffer groups.
    pub fn state_len(&self) -> usize {
        self.len().saturating_mul(self.groups.len().saturating_add(1))
    }

    /// The flat state REPLAY works on: the parameters in order, then each buffer group's tensors in
    /// parameter order (handle copies, no data).
    pub fn to_state(&self) -> Vec<Tensor> {
        self.tensors.iter().chain(self.groups.iter().flat_map(|(_, b)| b)).cloned().collect()
    }

    /// The tensors of the flat state `state` under `like`'s names and buffer groups (to read s_T
    /// after training by name, or save it). `state` must have `like`'s layout: its length (an
    /// [`Error::Invalid`]), and each tensor the shape and dtype of the one it replaces (an
    /// [`Error::Shape`] naming the tensor). Devices may differ.
    pub fn from_state(like: &Params, state: &[Tensor]) -> Result<Params> {
        const OP: &str = "Params::from_state";
        if state.len() != like.state_len() {
            return invalid(
                OP,
                format!(
                    "a state of {} tensors does not fit {} parameters and {} buffer groups ({} tensors)",
                    state.len(),
                    like.len(),
                    like.groups.len(),
                    like.state_len()
                ),
            );
        }
        for (i, (old, new)) in like.to_state().iter().zip(state).enumerate() {
            if old.shape() != new.shape() || old.dtype() != new.dtype() {
                let name = like.name_of(i).unwrap_or_default();
                return Err(Error::Shape {
                    op: OP,
                    msg: format!(
                        "state tensor {i} (`{name}`) is {} {} but should be {} {}",
                        new.shape(),
                        new.dtype(),
                        old.shape(),
                        old.dtype()
                    ),
                });
            }
        }
        let n = like.len();
        // The length is n·(1 + groups), checked above; with n = 0 the state is empty and so is every chunk.
        let mut chunks = state.chunks(n.max(1));
        let mut next = || chunks.next().map(<[Tensor]>::to_vec).unwrap_or_default();
        let mut out = like.clone();
        out.tensors = next();
        for (_, b) in out.groups.iter_mut() {
            *b = next();
        }
        Ok(out)
    }

    /// Splits a flat state slice (tensors, or the `Var`s a [`crate::replay::Training::step`] gets)
    /// into the parameters and one slice per buffer group, in group order: the arguments of
    /// [`crate::optim::Sgd::step`] and [`crate::optim::Adam::step`]. An [`Error::Invalid`] if the
    /// length is not [`Params::state_len`].
    pub fn split_state<'a, T>(&self, state: &'a [T]) -> Result<(&'a [T], Vec<&'a [T]>)> {
        if state.len() != self.state_len() {
            return invalid(
                "Params::split_state",
                format!(
                    "a state of {} tensors does not fit {} parameters and {} buffer groups",
                    state.len(),
                    self.len(),
                    self.groups.len()
                ),
            );
        }
        let (params, rest) = state.split_at(self.len());
        let groups = if self.is_empty() { vec![rest; self.groups.len()] } else { rest.chunks(self.len()).collect() };
        Ok((params, groups))
    }

    /// The flat state index of the parameter or buffer (`"{group}.{param}"`) called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The name of the tensor at flat state index `index`: a parameter's name, or `"{group}.{param}"`
    /// for an optimizer buffer; `None` past the end of the state.
    pub fn name_of(&self, index: usize) -> Option<String> {
        let n = self.len();
        if index < n {
            return self.names.get(index).cloned();
        }
        let (g, j) = ((index - n) / n.max(1), (index - n) % n.max(1));
        let (group, _) = self.groups.get(g)?;
        self.names.get(j).map(|name| format!("{group}.{name}"))
    }

    /// The tensor at flat state index `index`.
    fn state_tensor(&self, index: usize) -> Option<&Tensor> {
        let n = self.len();
        if index < n {
            return self.tensors.get(index);
        }
        let (g, j) = ((index - n) / n.max(1), (index - n) % n.max(1));
        self.groups.get(g).and_then(|(_, b)| b.get(j))
    }

    /// A copy with every tensor (parameters and buffers) on `device` (see [`Tensor::to_device`]).
    pub fn to_device(&self, device: Device) -> Result<Params> {
        let mut out = self.clone();
        for t in out.tensors.iter_mut().chain(out.groups.iter_mut().flat_map(|(_, b)| b.iter_mut())) {
            *t = t.to_device(device)?;
        }
        Ok(out)
    }

    /// A copy with every tensor (parameters and buffers) converted to `dtype` (see
    /// [`Tensor::to_dtype`]): e.g. an f32 training state in f64 for a metagradient check.
    pub fn to_dtype(&self, dtype: DType) -> Params {
        let mut out = self.clone();
        for t in out.tensors.iter_mut().chain(out.groups.iter_mut().flat_map(|(_, b)| b.iter_mut())) {
            *t = t.to_dtype(dtype);
        }
        out
    }

    /// `e` with the names of this collection added where its message refers to a flat state index or
    /// a parameter index: `state tensor 3` (REPLAY's non-finite and purity errors) becomes
    /// ``state tensor 3 (`adamw.m.fc.b`)``, and `parameter 1` (the optimizers' shape errors, whose
    /// index counts the parameters passed to them) becomes ``parameter 1 (`fc.b`)``. Indices this
    /// collection has no name for, already annotated ones, and [`Error::Io`] are left as they are.
    ///
    /// ```
    /// # use metagrad::{nn::Params, DType, Error, Tensor};
    /// # fn main() -> metagrad::Result<()> {
    /// let mut p = Params::new();
    /// p.insert("fc.w", Tensor::zeros([2], DType::F64))?;
    /// let e = Error::NonFinite { step: 4, msg: "training produced a non-finite state tensor 0 (shape [2])".into() };
    /// assert!(p.annotate_error(e).to_string().contains("state tensor 0 (`fc.w`)"));
    /// # Ok(()) }
    /// ```
    pub fn annotate_error(&self, e: Error) -> Error {
        let fix = |msg: String| {
            let msg = self.annotate_indices(&msg, "state tensor ", self.state_len());
            self.annotate_indices(&msg, "parameter ", self.len())
        };
        match e {
            Error::Shape { op, msg } => Error::Shape { op, msg: fix(msg) },
            Error::DType { op, msg } => Error::DType { op, msg: fix(msg) },
            Error::Device { op, msg, source } => Error::Device { op, msg: fix(msg), source },
            Error::Invalid { op, msg } => Error::Invalid { op, msg: fix(msg) },
            Error::Autodiff { msg } => Error::Autodiff { msg: fix(msg) },
            Error::NonFinite { step, msg } => Error::NonFinite { step, msg: fix(msg) },
            Error::OutOfMemory { op, msg } => Error::OutOfMemory { op, msg: fix(msg) },
            other => other,
        }
    }

    /// `msg` with `` (`name`)`` after each `{marker}{index}` whose index is below `limit`.
    fn annotate_indices(&self, msg: &str, marker: &str, limit: usize) -> String {
        let mut out = String::with_capacity(msg.len());
        let mut rest = msg;
        while let Some(at) = rest.find(marker) {
            let (before, tail) = rest.split_at(at + marker.len());
            out.push_str(before);
            let digits = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (num, after) = tail.split_at(digits);
            out.push_str(num);
            // A whole number (not the start of a longer word) that has no annotation yet.
            let whole = !after.starts_with(|c: char| c.is_alphanumeric() || c == '_');
            let name = num.parse::<usize>().ok().filter(|&i| i < limit && whole && !after.starts_with(" (`")).and_then(|i| self.name_of(i));
            if let Some(name) = name {
                out.push_str(&format!(" (`{name}`)"));
            }
            rest = after;
        }
        out.push_str(rest);
        out
    }
}
