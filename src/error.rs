//! The one error type of metagrad.
//!
//! Every public op returns [`Result`]; an error always names the op and the offending shapes, dtypes,
//! devices or step, so that a failure deep inside a metagradient can be traced to its source.
//! User input never panics.

use std::fmt;

/// Everything that can go wrong in metagrad.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Shapes that do not fit the op (mismatch, bad axis, bad broadcast).
    Shape {
        /// The op that rejected its input.
        op: &'static str,
        /// What was wrong, with the shapes involved.
        msg: String,
    },
    /// A dtype the op does not accept, or two operands of different dtypes.
    DType {
        /// The op that rejected its input.
        op: &'static str,
        /// What was wrong, with the dtypes involved.
        msg: String,
    },
    /// Operands on different devices, or a device that is not available.
    Device {
        /// The op that rejected its input.
        op: &'static str,
        /// What was wrong, with the devices involved.
        msg: String,
    },
    /// Any other invalid argument (negative sizes, k < 2, T = 0, ...).
    Invalid {
        /// The op or function that rejected its input.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// Misuse of the tape: variables from two tapes, backward through a freed graph, ...
    Autodiff {
        /// What was wrong.
        msg: String,
    },
    /// A NaN or infinity met while computing a metagradient, with the training step that produced it.
    NonFinite {
        /// The training step t whose backward produced the value.
        step: usize,
        /// Which quantity was not finite.
        msg: String,
    },
    /// The checkpoint arena (or another fixed pool) has no free slot or too little memory.
    OutOfMemory {
        /// The allocator that ran out.
        op: &'static str,
        /// How much was asked for and how much there is.
        msg: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, msg } => write!(f, "{op}: shape error: {msg}"),
            Error::DType { op, msg } => write!(f, "{op}: dtype error: {msg}"),
            Error::Device { op, msg } => write!(f, "{op}: device error: {msg}"),
            Error::Invalid { op, msg } => write!(f, "{op}: invalid argument: {msg}"),
            Error::Autodiff { msg } => write!(f, "autodiff: {msg}"),
            Error::NonFinite { step, msg } => write!(f, "non-finite value at training step {step}: {msg}"),
            Error::OutOfMemory { op, msg } => write!(f, "{op}: out of memory: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// `Result` with metagrad's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for an [`Error::Shape`].
pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, msg: msg.into() })
}

/// Shorthand for an [`Error::Invalid`].
pub(crate) fn invalid<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid { op, msg: msg.into() })
}
