//! safetensors files for [`Params`], through the format's reference implementation (the
//! `safetensors` crate, which Python's `safetensors` package wraps): it writes and validates the
//! header, the offsets and the alignment, so files agree with every other reader and writer.
//!
//! A file holds every tensor of the flat state (parameters, then the optimizer buffers) under its
//! full name, and two `__metadata__` entries that let [`load_safetensors`] rebuild the collection
//! exactly: `metagrad.order` (the full names in state order, one per line; the format itself keeps
//! no order, and the reference writer lays tensors out by dtype, then name) and, when there are
//! buffer groups, `metagrad.buffers` (the group names in order, one per line). A file without them
//! (written by PyTorch, JAX, NumPy, ...) loads as parameters only, in the order of their data in the
//! file (ties, between empty tensors, by name).

use super::Params;
use crate::error::{Error, Result, Source};
use crate::{DType, Tensor};
use ::safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The `__metadata__` key listing the full names in flat state order, one per line.
const ORDER_KEY: &str = "metagrad.order";
/// The `__metadata__` key listing the buffer groups in order, one per line.
const BUFFERS_KEY: &str = "metagrad.buffers";

fn file_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    }
}

fn our_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F64 => Some(DType::F64),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F16 => Some(DType::F16),
        _ => None,
    }
}

/// An [`Error::Io`] about `path`, keeping the safetensors error (or the OS error inside it) as its
/// source.
fn file_err(op: &'static str, path: &Path, what: &str, e: SafeTensorError) -> Error {
    match e {
        SafeTensorError::IoError(io) => Error::io(op, path.display(), io),
        e => Error::Io { op, msg: format!("{} ({what})", path.display()), source: Source::new(e) },
    }
}

/// Writes every tensor of `params` (parameters and optimizer buffers, under their full names) to the
/// safetensors file `path`, replacing it. Tensors on a GPU are downloaded first; every dtype of the
/// crate (f32, f64, bf16, f16) is stored as itself, bit for bit. The reference writer writes a
/// temporary file beside `path` and renames it, so a failed save leaves an existing file as it was.
/// A failure to write is an [`Error::Io`] naming the path, with the OS's (or the safetensors
/// crate's) error as its source; a failed download is the device's error.
pub fn save_safetensors(path: impl AsRef<Path>, params: &Params) -> Result<()> {
    const OP: &str = "save_safetensors";
    let path = path.as_ref();
    let named: Vec<(String, &Tensor)> = params.named_state().collect();
    let bytes: Vec<Cow<'_, [u8]>> = named.iter().map(|(_, t)| t.to_bytes()).collect::<Result<_>>()?;
    let views = named
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            let view = TensorView::new(file_dtype(t.dtype()), t.dims().to_vec(), b)
                .map_err(|e| file_err(OP, path, &format!("tensor `{name}`"), e))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    let order: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    meta.insert(ORDER_KEY.to_string(), order.join("\n"));
    let groups: Vec<&str> = params.buffer_groups().collect();
    if !groups.is_empty() {
        meta.insert(BUFFERS_KEY.to_string(), groups.join("\n"));
    }
    ::safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| file_err(OP, path, "writing safetensors", e))
}

/// Reads the safetensors file `path` into a [`Params`] on the CPU (move it with
/// [`Params::to_device`]): names, shapes and bits as stored. A file written by [`save_safetensors`]
/// comes back exactly, order and buffer groups included; any other file loads as parameters only, in
/// the order of their data in the file.
///
/// Errors name the op (`load_safetensors`) and the path: a file that cannot be read is an
/// [`Error::Io`] with the OS error as its source, and a corrupt one (bad header, offsets or sizes) an
/// [`Error::Io`] with the safetensors crate's error as its source; a tensor of a dtype the crate does
/// not hold (integers, bool, f8, ...) is an [`Error::DType`] naming it; inconsistent `metagrad.*`
/// metadata or a name that is not a valid hierarchical name is an [`Error::Invalid`].
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Params> {
    const OP: &str = "load_safetensors";
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(OP, path.display(), e))?;
    let bad = |e| file_err(OP, path, "not a valid safetensors file", e);
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let file = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let invalid = |msg: String| Error::Invalid { op: OP, msg: format!("{}: {msg}", path.display()) };
    let meta = header.metadata().as_ref();
    let names: Vec<String> = match meta.and_then(|m| m.get(ORDER_KEY)) {
        None => {
            // By data offset; empty tensors can share one, so ties go by name (the header is a JSON
            // object, whose order the reader does not keep).
            let mut named: Vec<(String, (usize, usize))> = header.tensors().into_iter().map(|(n, i)| (n, i.data_offsets)).collect();
            named.sort_by(|(a, x), (b, y)| x.cmp(y).then_with(|| a.cmp(b)));
            named.into_iter().map(|(n, _)| n).collect()
        }
        Some(order) => {
            let names: Vec<String> = order.split('\n').filter(|n| !n.is_empty()).map(str::to_string).collect();
            let distinct: HashSet<&String> = names.iter().collect();
            if distinct.len() != names.len() || names.len() != file.len() || names.iter().any(|n| header.info(n).is_none()) {
                return Err(invalid(format!("the `{ORDER_KEY}` metadata does not list the file's {} tensors once each", file.len())));
            }
            names
        }
    };
    let groups: Vec<&str> =
        meta.and_then(|m| m.get(BUFFERS_KEY)).map(|g| g.split('\n').filter(|g| !g.is_empty()).collect()).unwrap_or_default();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let view = file.tensor(&name).map_err(bad)?;
        let dtype = our_dtype(view.dtype()).ok_or_else(|| Error::DType {
            op: OP,
            msg: format!("{}: tensor `{name}` has dtype {:?}; metagrad holds f32, f64, bf16 and f16", path.display(), view.dtype()),
        })?;
        let t = Tensor::from_bytes(view.data(), dtype, view.shape().to_vec())?;
        tensors.push((name, t));
    }
    let per_tensor = groups.len() + 1;
    if !tensors.len().is_multiple_of(per_tensor) {
        return Err(invalid(format!("{} tensors cannot be parameters and {} buffer groups", tensors.len(), groups.len())));
    }
    let n = tensors.len() / per_tensor;
    let mut it = tensors.into_iter();
    let mut params = Params::new();
    for (name, t) in it.by_ref().take(n) {
        params.insert(name, t).map_err(|e| invalid(e.to_string()))?;
    }
    for g in groups {
        let mut bufs = Vec::with_capacity(n);
        for ((name, t), param) in it.by_ref().take(n).zip(params.names()) {
            if name != format!("{g}.{param}") {
                return Err(invalid(format!("tensor `{name}` stands where `{g}.{param}` (group `{g}`'s buffer of `{param}`) should")));
            }
            bufs.push(t);
        }
        params.add_buffers_from(g, bufs).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(params)
}
