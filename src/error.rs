//! The one error type of metagrad.
//!
//! Every public op returns [`Result`]; an error always names the op and the offending shapes, dtypes,
//! devices or step, so that a failure deep inside a metagradient can be traced to its source. User
//! input never panics. Failures reported by a library underneath (the CUDA driver, NVRTC, the file
//! system) keep that library's error as the [`std::error::Error::source`] of ours.

use std::fmt;
use std::sync::Arc;

/// An underlying library's error, kept as the source of an [`Error`] (shared, so errors stay `Clone`).
#[derive(Clone)]
pub struct Source(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Source {
    /// Wraps an error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Source {
        Source(Arc::new(e))
    }
    /// The wrapped error.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Two sources are equal when they are the same error object (errors of foreign libraries have no
/// equality of their own).
impl PartialEq for Source {
    fn eq(&self, other: &Source) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

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
    /// Operands on different devices, a device that is not available, or a failure of the device.
    Device {
        /// The op that rejected its input or met the failure.
        op: &'static str,
        /// What was wrong, with the devices involved.
        msg: String,
        /// The driver's (or NVRTC's) own error, when it reported one.
        source: Option<Source>,
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
    /// A NaN or infinity met while training or computing a metagradient, with the training step that
    /// produced it.
    NonFinite {
        /// The training step t that produced the value.
        step: usize,
        /// Which quantity was not finite.
        msg: String,
    },
    /// An allocation failed or its size overflowed (host or device memory, the checkpoint arena, a
    /// memory budget).
    OutOfMemory {
        /// The op or allocator that ran out.
        op: &'static str,
        /// How much was asked for and how much there is.
        msg: String,
    },
    /// Reading or writing a file failed.
    Io {
        /// The function that did the I/O.
        op: &'static str,
        /// What was being read or written (usually a path).
        msg: String,
        /// The operating system's error.
        source: Source,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, msg } => write!(f, "{op}: shape error: {msg}"),
            Error::DType { op, msg } => write!(f, "{op}: dtype error: {msg}"),
            Error::Device { op, msg, source: None } => write!(f, "{op}: device error: {msg}"),
            Error::Device { op, msg, source: Some(s) } => write!(f, "{op}: device error: {msg}: {s}"),
            Error::Invalid { op, msg } => write!(f, "{op}: invalid argument: {msg}"),
            Error::Autodiff { msg } => write!(f, "autodiff: {msg}"),
            Error::NonFinite { step, msg } => write!(f, "non-finite value at training step {step}: {msg}"),
            Error::OutOfMemory { op, msg } => write!(f, "{op}: out of memory: {msg}"),
            Error::Io { op, msg, source } => write!(f, "{op}: I/O error on {msg}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Device { source: Some(s), .. } | Error::Io { source: s, .. } => Some(s.get()),
            _ => None,
        }
    }
}

/// `Result` with metagrad's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Device`] without an underlying error.
    pub fn device(op: &'static str, msg: impl Into<String>) -> Error {
        Error::Device { op, msg: msg.into(), source: None }
    }
    /// An [`Error::Device`] keeping the driver's error `e` as its source.
    pub fn device_from(op: &'static str, msg: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Device { op, msg: msg.into(), source: Some(Source::new(e)) }
    }
    /// An [`Error::Io`] about `what` (usually a path), keeping the OS error.
    pub fn io(op: &'static str, what: impl fmt::Display, e: std::io::Error) -> Error {
        Error::Io { op, msg: what.to_string(), source: Source::new(e) }
    }
    /// An [`Error::OutOfMemory`] for `bytes` bytes (`None`: the size overflowed) of `what` on `on`.
    pub fn oom(op: &'static str, what: &str, bytes: Option<u128>, on: impl fmt::Display) -> Error {
        let size = bytes.map_or_else(|| "a size that overflows usize".to_string(), |b| format!("{b} bytes"));
        Error::OutOfMemory { op, msg: format!("cannot allocate {size} for {what} on {on}") }
    }
}

/// Shorthand for an [`Error::Shape`].
pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, msg: msg.into() })
}

/// Shorthand for an [`Error::Invalid`].
pub(crate) fn invalid<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid { op, msg: msg.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_keep_the_underlying_error_as_their_source() {
        let io = std::fs::read("/nonexistent/metagrad/file").unwrap_err();
        let kind = io.kind();
        let e = Error::io("load", "/nonexistent/metagrad/file", io);
        let src = e.source().expect("an I/O error has a source");
        assert_eq!(src.downcast_ref::<std::io::Error>().map(|x| x.kind()), Some(kind));
        assert!(e.to_string().contains("/nonexistent/metagrad/file"), "{e}");
        let d = Error::device_from("cuda launch", "launching k", std::fmt::Error);
        assert!(d.source().is_some_and(|s| s.is::<std::fmt::Error>()), "{d:?}");
        assert!(Error::device("x", "y").source().is_none());
        // Clones share the source, and compare equal.
        assert_eq!(d.clone(), d);
    }
}
