//! Attention throughput, fused beside composite: forward, backward and backward-over-backward.
//!
//! Workload `attention_b1_h4_n512_d64`: Q, K, V of shape [1, 4, 512, 64], f32, CPU, non-causal,
//! scale 1/√64, loss = Σ attention(Q, K, V)∘R for a fixed random R. Per path, the medians of
//! - `forward_ms`: O from constant inputs (nothing recorded);
//! - `backward_ms`: the gradient of the loss w.r.t. (Q, K, V), the taped forward not counted;
//! - `bob_ms`: the Hessian-vector product of the loss w.r.t. (Q, K, V), reverse over reverse, from
//!   the inputs (taped forward, backward with `create_graph`, then backward of ⟨∇loss, v⟩), which runs
//!   `attention_backward_backward` on the fused path;
//!
//! and `bob_gflops` = heads·24·N²·d flops / bob time (a nominal count, the same for both paths).
//!
//! ```sh
//! cargo run --release --example attention_bench -- [reps] [n] [d]
//! ```
//! prints one JSON object, with the machine (CPU model, threads, ISA level, measured f32 FMA peak).
//! `benches/jax_attention_hvp.py` times the same workload in JAX.

mod common;
use common::{median, Machine};
use metagrad::{grad, hvp, no_grad, DType, Result, Tape, Tensor, Var};
use std::time::Instant;

/// The median of `reps` timings (ms) of `f`, after two warm-up runs.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(ts))
}

struct Workload {
    x: [Tensor; 3],
    r: Tensor,
    dir: [Tensor; 3],
    scale: f64,
}

fn attn(fused: bool, q: &Var, k: &Var, v: &Var, scale: f64) -> Result<Var> {
    if fused {
        q.attention(k, v, scale, false)
    } else {
        q.attention_composite(k, v, scale, false)
    }
}

/// (forward_ms, backward_ms, bob_ms) for one path.
fn measure(w: &Workload, fused: bool, reps: usize) -> Result<[f64; 3]> {
    let fwd = time(reps, || {
        no_grad(|| {
            let [q, k, v] = w.x.clone().map(Var::constant);
            attn(fused, &q, &k, &v, w.scale).map(|_| ())
        })
    })?;
    let mut bwd = Vec::with_capacity(reps + 2);
    for _ in 0..reps + 2 {
        let tape = Tape::new();
        let [q, k, v] = w.x.clone().map(|t| tape.var(t));
        let loss = attn(fused, &q, &k, &v, w.scale)?.mul(&Var::constant(w.r.clone()))?.sum_all()?;
        let t = Instant::now();
        grad(&loss, &[&q, &k, &v], false)?;
        bwd.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let bwd = median(bwd.split_off(2));
    let bob = time(reps, || {
        let tape = Tape::new();
        let [q, k, v] = w.x.clone().map(|t| tape.var(t));
        let loss = attn(fused, &q, &k, &v, w.scale)?.mul(&Var::constant(w.r.clone()))?.sum_all()?;
        hvp(&loss, &[&q, &k, &v], &w.dir).map(|_| ())
    })?;
    Ok([fwd, bwd, bob])
}

fn main() -> Result<()> {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread()?;
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("usage: attention_bench [reps] [n] [d]")).collect();
    let (reps, n, d) = (args.first().copied().unwrap_or(15), args.get(1).copied().unwrap_or(512), args.get(2).copied().unwrap_or(64));
    let (b, h) = (1, 4);
    let shape = [b, h, n, d];
    let t = |seed| Tensor::randn(shape, DType::F32, seed);
    let w = Workload { x: [t(1), t(2), t(3)], r: t(4), dir: [t(5), t(6), t(7)], scale: 1.0 / (d as f64).sqrt() };
    let fused = measure(&w, true, reps)?;
    let composite = measure(&w, false, reps)?;
    let flops = (b * h) as f64 * 24.0 * (n * n * d) as f64;
    let gflops = |ms: f64| flops / (ms * 1e-3) / 1e9;
    let path = |m: [f64; 3]| {
        format!(
            "{{\"forward_ms\": {:.3}, \"backward_ms\": {:.3}, \"bob_ms\": {:.3}, \"bob_gflops\": {:.2}}}",
            m[0],
            m[1],
            m[2],
            gflops(m[2])
        )
    };
    println!(
        "{{\"workload\": \"attention_b{b}_h{h}_n{n}_d{d}\", \"dtype\": \"f32\", \"threads\": {}, \"reps\": {reps}, \"fused\": {}, \"composite\": {}, \"bob_speedup_vs_composite\": {:.2}, \"machine\": {{{}}}}}",
        rayon::current_num_threads(),
        path(fused),
        path(composite),
        composite[2] / fused[2],
        Machine::measure().json_fields()
    );
    Ok(())
}
