//! Kernel launches: argument lists laid out as the kernels' C signatures in `kernels/*.cu` expect
//! (pointers and sizes as 64-bit integers, op codes as `int`, scalars as `double`, geometry as structs
//! of 64-bit integers), grid sizes, and kernel names.

use super::Gpu;
use crate::error::{shape_err, Error, Result};
use crate::DType;
use std::ffi::c_void;

/// One kernel argument, by value.
pub(crate) enum Arg {
    /// A device pointer or a 64-bit size.
    U(u64),
    /// An `int` (op codes, flags).
    I(i32),
    /// A `double` scalar.
    F(f64),
    /// A struct of 64-bit integers (`Strides`, `Geom`).
    S(Vec<i64>),
}

/// Threads per block for element-wise kernels, and the fixed block size of the reductions.
pub(crate) const BLOCK: u32 = 256;
/// The most blocks a grid-stride launch uses (beyond this, threads loop).
const MAX_BLOCKS: u64 = 1 << 16;
/// Most dimensions a strided kernel handles (`MG_MAX_RANK` in kernels/common.cuh).
pub(crate) const MAX_RANK: usize = 8;

/// Launches `name` on `gpu` with a 1-D grid of `blocks` blocks (clamped to [1, MAX_BLOCKS]).
pub(crate) fn launch(gpu: &Gpu, name: &str, blocks: u64, mut args: Vec<Arg>) -> Result<()> {
    launch3(gpu, name, [blocks.clamp(1, MAX_BLOCKS) as u32, 1, 1], [BLOCK, 1, 1], &mut args)
}

/// Launches `name` with a 3-D grid.
pub(crate) fn launch3(gpu: &Gpu, name: &str, grid: [u32; 3], block: [u32; 3], args: &mut [Arg]) -> Result<()> {
    let mut params: Vec<*mut c_void> = args
        .iter_mut()
        .map(|a| match a {
            Arg::U(v) => v as *mut u64 as *mut c_void,
            Arg::I(v) => v as *mut i32 as *mut c_void,
            Arg::F(v) => v as *mut f64 as *mut c_void,
            Arg::S(v) => v.as_mut_ptr() as *mut c_void,
        })
        .collect();
    gpu.driver.launch(name, grid, block, &mut params)
}

/// Blocks for one thread per element.
pub(crate) fn blocks_for(n: usize) -> u64 {
    (n as u64).div_ceil(BLOCK as u64)
}

/// `<base>_f32` or `<base>_f64`.
pub(crate) fn kname(op: &'static str, base: &str, dtype: DType) -> Result<String> {
    match dtype {
        DType::F32 => Ok(format!("{base}_f32")),
        DType::F64 => Ok(format!("{base}_f64")),
        d => Err(Error::DType { op, msg: format!("{d} is a storage-only dtype; convert to f32 or f64 with to_dtype first") }),
    }
}

/// The `Strides` struct of kernels/common.cuh: `dims`, and the strides of two operands.
pub(crate) fn strides(op: &'static str, dims: &[usize], sa: &[usize], sb: &[usize]) -> Result<Arg> {
    if dims.len() > MAX_RANK {
        return shape_err(op, format!("the CUDA backend supports at most {MAX_RANK} dimensions, got shape {dims:?}"));
    }
    // [rank, dims padded to MAX_RANK, strides of a padded, strides of b padded].
    let padded = |xs: &[usize]| xs.iter().map(|&x| x as i64).chain(std::iter::repeat(0)).take(MAX_RANK).collect::<Vec<_>>();
    let w: Vec<i64> = std::iter::once(dims.len() as i64).chain(padded(dims)).chain(padded(sa)).chain(padded(sb)).collect();
    Ok(Arg::S(w))
}

/// Row-major strides of `dims`.
pub(crate) fn contiguous(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    let mut acc = 1usize;
    for (si, &d) in s.iter_mut().zip(dims).rev() {
        *si = acc;
        acc = acc.saturating_mul(d);
    }
    s
}
