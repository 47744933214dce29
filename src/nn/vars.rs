//! Looking layers' variables up by name, and initial values of parameters.

use super::Params;
use crate::error::{invalid, Error, Result};
use crate::random::derive_seed;
use crate::{DType, Tape, Tensor, Var};

/// The variables of a flat slice (REPLAY's state inside [`crate::replay::Training::step`], or
/// [`Params::leaves`]) looked up by the parameter names of a [`Params`]: what a layer's `forward`
/// reads its weights from. Made by [`Params::vars`]; borrows both, copies nothing.
#[derive(Clone, Copy, Debug)]
pub struct NamedVars<'a> {
    params: &'a Params,
    vars: &'a [Var],
}

impl Params {
    /// Names the variables `state`: either one per parameter, in parameter order, or a whole flat
    /// state of [`Params::state_len`] (parameters, then optimizer buffers, as
    /// [`Params::to_state`] lays them out), so a [`crate::replay::Training::step`] can pass its
    /// `state` as it gets it. Each variable must have its parameter's shape and dtype. An
    /// [`Error::Invalid`] for another length, an [`Error::Shape`] naming the parameter otherwise.
    pub fn vars<'a>(&'a self, state: &'a [Var]) -> Result<NamedVars<'a>> {
        const OP: &str = "Params::vars";
        if state.len() != self.len() && state.len() != self.state_len() {
            return invalid(
                OP,
                format!(
                    "{} variables fit neither the {} parameters nor the whole state of {} tensors",
                    state.len(),
                    self.len(),
                    self.state_len()
                ),
            );
        }
        for ((name, p), v) in self.iter().zip(state) {
            if v.shape() != p.shape() || v.dtype() != p.dtype() {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!("variable for `{name}` is {} {} but the parameter is {} {}", v.shape(), v.dtype(), p.shape(), p.dtype()),
                });
            }
        }
        Ok(NamedVars { params: self, vars: state })
    }

    /// Every parameter as a leaf variable of `tape`, in parameter order (to take gradients outside
    /// REPLAY; pass the result to [`Params::vars`]).
    pub fn leaves(&self, tape: &Tape) -> Vec<Var> {
        self.iter().map(|(_, t)| tape.var(t.clone())).collect()
    }

    /// Every parameter as a constant (untracked) variable, in parameter order (for evaluation).
    pub fn constants(&self) -> Vec<Var> {
        self.iter().map(|(_, t)| Var::constant(t.clone())).collect()
    }
}

impl<'a> NamedVars<'a> {
    /// The variable of the parameter (or, when the slice is a whole state, the buffer) called
    /// `name`; an [`Error::Invalid`] naming `layer` and the missing name otherwise.
    pub fn get(&self, layer: &'static str, name: &str) -> Result<&'a Var> {
        self.params.index_of(name).and_then(|i| self.vars.get(i)).ok_or_else(|| Error::Invalid {
            op: layer,
            msg: format!("no parameter `{name}` among the {} names of this collection", self.params.len()),
        })
    }

    /// The variables of the parameters, in parameter order (for [`crate::replay::StepCtx::grad`]).
    pub fn params(&self) -> &'a [Var] {
        self.vars.get(..self.params.len()).unwrap_or(self.vars)
    }

    /// The collection the names come from.
    pub fn names(&self) -> &'a Params {
        self.params
    }
}

/// The distribution a parameter's initial value is drawn from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every element `c`.
    Const(f64),
    /// Uniform on [−bound, bound).
    Uniform(f64),
    /// Normal with mean 0 and standard deviation `std`.
    Normal(f64),
}

/// A stable 64-bit hash of a name (FNV-1a), the stream of its initial values.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl Init {
    /// A tensor of `shape` and `dtype` drawn from this distribution with the counter-based generator
    /// of [`crate::random`], keyed by [`derive_seed`]`(seed, hash(name))`: the value depends on the
    /// seed and the parameter's full name only, not on the order layers are initialized in.
    pub fn tensor(self, name: &str, shape: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
        let key = derive_seed(seed, name_stream(name));
        match self {
            Init::Const(c) => Tensor::try_full(c, shape.to_vec(), dtype),
            Init::Uniform(b) if b.is_finite() && b >= 0.0 => Tensor::try_rand_uniform(shape.to_vec(), -b, b, dtype, key),
            Init::Normal(s) if s.is_finite() && s >= 0.0 => Tensor::try_randn(shape.to_vec(), dtype, key)?.mul_scalar(s),
            other => invalid("nn::Init", format!("{other:?} for `{name}` needs a finite, non-negative scale")),
        }
    }

    /// Inserts `"{prefix}.{leaf}"` drawn from this distribution into `params`; returns the full name.
    pub(crate) fn insert(self, params: &mut Params, prefix: &str, leaf: &str, shape: &[usize], dtype: DType, seed: u64) -> Result<String> {
        let name = format!("{prefix}.{leaf}");
        params.insert(name.clone(), self.tensor(&name, shape, dtype, seed)?)?;
        Ok(name)
    }
}
