//! Host side of the fused attention kernels (kernels/attention.cu): argument structs, launch grids, and
//! the per-row statistics the passes share.

use super::launch::{blocks_for, kname, launch, launch3, Arg, BLOCK};
use super::memory::Gpu;
use super::storage::CudaStorage;
use crate::backend::spec::{AttnShape, Need};
use crate::error::{shape_err, Error, Result};
use crate::DType;
use std::sync::Arc;

/// The fused attention kernels (kernels/attention.cu) handle widths up to this.
const ATTENTION_MAX_WIDTH: usize = 128;

/// The `Attn` struct of kernels/attention.cu.
struct AttnArgs<'a> {
    g: AttnShape,
    need: Need,
    inputs: [Option<Arg>; 8], // q, k, v, lse, d_o, a, b, e
    stats: [u64; 3],          // D, D̄, ρ
    outs: [u64; 4],           // q, k, v, o
    gpu: &'a Arc<Gpu>,
}

impl AttnArgs<'_> {
    fn words(&self) -> Arg {
        let g = &self.g;
        let mut w = vec![g.heads, g.nq, g.nk, g.d, g.dv].into_iter().map(|v| v as i64).collect::<Vec<_>>();
        w.extend([g.scale.to_bits() as i64, g.causal as i64, self.need.q as i64, self.need.kv as i64, self.need.d_o as i64]);
        for t in &self.inputs {
            w.push(match t {
                Some(Arg::U(p)) => *p as i64,
                _ => 0,
            });
        }
        w.extend(self.stats.iter().chain(&self.outs).map(|&p| p as i64));
        Arg::S(w)
    }

    fn launch(&self, op: &'static str, kernel: &str, dtype: DType, rows: usize) -> Result<()> {
        let grid = [rows.div_ceil(16) as u32, self.g.heads as u32, 1];
        launch3(self.gpu, &kname(op, kernel, dtype)?, grid, [BLOCK, 1, 1], &mut [self.words()])
    }
}

/// D_i = dO_i · O_i for every query row (the backward's row statistic).
fn row_dots(op: &'static str, d_o: &CudaStorage, o: &CudaStorage, rows: usize, width: usize) -> Result<CudaStorage> {
    let b = d_o.like(op, rows)?;
    let args = vec![b.arg(), d_o.arg(), o.arg(), Arg::U(rows as u64), Arg::U(width as u64)];
    launch(d_o.gpu(), &kname(op, "attn_rowdot", d_o.dtype)?, blocks_for(rows), args)?;
    Ok(b)
}

fn check_attention(
    op: &'static str,
    g: &AttnShape,
    qkv: [&CudaStorage; 3],
    o: Option<(&CudaStorage, &CudaStorage, &CudaStorage)>,
) -> Result<()> {
    let [lq, lk, lv, lo] = g.lens().ok_or_else(|| Error::oom(op, "attention", None, qkv[0].gpu().device()))?;
    qkv[0].fits(op, "Q", Some(lq))?;
    qkv[1].fits(op, "K", Some(lk))?;
    qkv[2].fits(op, "V", Some(lv))?;
    if let Some((o, lse, d_o)) = o {
        o.fits(op, "O", Some(lo))?;
        d_o.fits(op, "dO", Some(lo))?;
        lse.fits(op, "the logsumexp", Some(g.heads * g.nq))?;
    }
    if g.heads > 65535 {
        return shape_err(op, format!("the CUDA attention kernels handle at most 65535 heads, got {}", g.heads));
    }
    Ok(())
}

pub(crate) fn supports(g: &AttnShape) -> bool {
    g.d <= ATTENTION_MAX_WIDTH && g.dv <= ATTENTION_MAX_WIDTH && g.heads * g.nq * g.nk > 0 && g.d * g.dv > 0
}

pub(crate) fn forward(
    op: &'static str,
    g: &AttnShape,
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
) -> Result<(CudaStorage, CudaStorage)> {
    check_attention(op, g, [q, k, v], None)?;
    let o = q.like(op, g.heads * g.nq * g.dv)?;
    let lse = q.like(op, g.heads * g.nq)?; // written through the ℓ slot
    let need = Need { q: false, kv: false, d_o: false };
    let inputs = [Some(q.arg()), Some(k.arg()), Some(v.arg()), Some(lse.arg()), None, None, None, None];
    let a = AttnArgs { g: *g, need, inputs, stats: [0; 3], outs: [0, 0, 0, o.buf.ptr], gpu: q.gpu() };
    a.launch(op, "attn_forward", q.dtype, g.nq)?;
    Ok((o, lse))
}

pub(crate) fn backward(
    op: &'static str,
    g: &AttnShape,
    [q, k, v]: [&CudaStorage; 3],
    [o, lse]: [&CudaStorage; 2],
    d_o: &CudaStorage,
    need: Need,
) -> Result<CudaStorage> {
    check_attention(op, g, [q, k, v], Some((o, lse, d_o)))?;
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let t = q.zeros_like(op, nq * g.d + nk * (g.d + g.dv))?;
    let dd = row_dots(op, d_o, o, nq, g.dv)?;
    let sz = q.dtype.size_in_bytes() as u64;
    let off_k = (nq * g.d) as u64 * sz;
    let outs = [t.buf.ptr, t.buf.ptr + off_k, t.buf.ptr + off_k + (nk * g.d) as u64 * sz, 0];
    let inputs = [Some(q.arg()), Some(k.arg()), Some(v.arg()), Some(lse.arg()), Some(d_o.arg()), None, None, None];
    let a = AttnArgs { g: *g, need, inputs, stats: [dd.buf.ptr, 0, 0], outs, gpu: q.gpu() };
    if need.q {
        a.launch(op, "attn_backward_rows", q.dtype, g.nq)?;
    }
    if need.kv {
        a.launch(op, "attn_backward_cols", q.dtype, g.nk)?;
    }
    Ok(t)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_backward(
    op: &'static str,
    g: &AttnShape,
    [q, k, v]: [&CudaStorage; 3],
    [o, lse]: [&CudaStorage; 2],
    d_o: &CudaStorage,
    cot: &CudaStorage,
    need: Need,
) -> Result<CudaStorage> {
    check_attention(op, g, [q, k, v], Some((o, lse, d_o)))?;
    let (lq, lk, lv) = (q.len, k.len, v.len);
    cot.fits(op, "the packed cotangent", Some(lq + lk + lv))?;
    let (nq, nk) = (g.heads * g.nq, g.heads * g.nk);
    let sz = q.dtype.size_in_bytes() as u64;
    let t = q.zeros_like(op, nq * (g.d + g.dv) + nk * (g.d + g.dv))?;
    if !(need.q || need.kv || need.d_o) {
        return Ok(t);
    }
    let dd = row_dots(op, d_o, o, nq, g.dv)?;
    let (dbar, rho) = (q.like(op, nq)?, q.like(op, nq)?);
    let base = t.buf.ptr;
    let off_k = (nq * g.d) as u64 * sz;
    let off_v = off_k + (nk * g.d) as u64 * sz;
    let off_o = off_v + (nk * g.dv) as u64 * sz;
    let outs = [base, base + off_k, base + off_v, base + off_o];
    // The cotangents a, b, e are read in place from the packed buffer.
    let inputs = [
        Some(q.arg()),
        Some(k.arg()),
        Some(v.arg()),
        Some(lse.arg()),
        Some(d_o.arg()),
        Some(cot.arg()),
        Some(cot.arg_at(lq)),
        Some(cot.arg_at(lq + lk)),
    ];
    let args = AttnArgs { g: *g, need, inputs, stats: [dd.buf.ptr, dbar.buf.ptr, rho.buf.ptr], outs, gpu: q.gpu() };
    args.launch(op, "attn_bb_rows", q.dtype, g.nq)?;
    if need.kv {
        args.launch(op, "attn_bb_cols", q.dtype, g.nk)?;
    }
    Ok(t)
}
