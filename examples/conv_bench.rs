//! Forward, backward and backward-over-backward (BoB) times of a two-layer conv net, fused kernels
//! ([`Var::conv2d`]) beside the im2col composite ([`Var::conv2d_composite`]), printed as JSON.
//!
//! ```sh
//! cargo run --release --example conv_bench                 # 10 repetitions
//! cargo run --release --example conv_bench -- --reps 20
//! cargo run --release --example conv_bench -- --only fused   # one path (for profiling)
//! ```
//!
//! Workload `conv_b32_c3_32_32_hw32_k3` (f32): x is 32×3×32×32, w1 is 32×3×3×3, w2 is 32×32×3×3, both
//! convolutions have stride 1 and padding 1, and loss = Σ(conv(tanh(conv(x, w1)), w2) ∘ R) / numel with a
//! fixed random R. Times are medians over the repetitions after one untimed warm-up, the two paths
//! interleaved within each repetition (as in `bob_throughput`):
//! - `forward_ms`: the loss with recording on (a fresh tape, w1 and w2 as leaves);
//! - `backward_ms`: `grad(loss, [w1, w2], false)` after a taped forward (not timed);
//! - `bob_ms`: the Hessian-vector product along a fixed random v by reverse over reverse (`hvp`:
//!   `grad(loss, [w1, w2], true)`, then the gradient of ⟨g, v⟩), after a taped forward (not timed).
//!
//! The JSON ends with the machine (CPU model, threads, ISA level, measured f32 FMA peak).
//! `benches/jax_conv_hvp.py` times the same workload in JAX.

mod common;
use common::{median, Machine};
use metagrad::{grad, hvp, Conv2dOpts, DType, Result, Tape, Tensor, Var};
use std::time::Instant;

const NAME: &str = "conv_b32_c3_32_32_hw32_k3";

fn scaled_randn(shape: [usize; 4], scale: f64, seed: u64) -> Result<Tensor> {
    let t = Tensor::randn(shape, DType::F64, seed);
    Ok(Tensor::from_vec(t.to_vec_f64().iter().map(|v| v * scale).collect::<Vec<_>>(), shape)?.to_dtype(DType::F32))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

struct Problem {
    x: Var,
    r: Var,
    params: Vec<Tensor>,
    dirs: Vec<Tensor>,
}

impl Problem {
    fn new() -> Result<Problem> {
        Ok(Problem {
            x: Var::constant(Tensor::randn([32, 3, 32, 32], DType::F32, 1)),
            r: Var::constant(Tensor::randn([32, 32, 32, 32], DType::F32, 2)),
            params: vec![scaled_randn([32, 3, 3, 3], 1.0 / 27f64.sqrt(), 3)?, scaled_randn([32, 32, 3, 3], 1.0 / 288f64.sqrt(), 4)?],
            dirs: vec![Tensor::randn([32, 3, 3, 3], DType::F32, 5), Tensor::randn([32, 32, 3, 3], DType::F32, 6)],
        })
    }

    fn loss(&self, p: &[Var], fused: bool) -> Result<Var> {
        let o = Conv2dOpts::new(1, 1);
        let conv = |x: &Var, w: &Var| if fused { x.conv2d(w, None, o) } else { x.conv2d_composite(w, None, o) };
        let y = conv(&conv(&self.x, &p[0])?.tanh()?, &p[1])?;
        let n = y.value().numel() as f64;
        y.mul(&self.r)?.sum_all()?.mul_scalar(1.0 / n)
    }

    /// (forward, backward, bob) times in ms for one repetition.
    fn time(&self, fused: bool) -> Result<[f64; 3]> {
        let taped = || -> Result<(Vec<Var>, Var, f64)> {
            let tape = Tape::new();
            let vars: Vec<Var> = self.params.iter().map(|t| tape.var(t.clone())).collect();
            let t0 = Instant::now();
            let loss = self.loss(&vars, fused)?;
            Ok((vars, loss, ms(t0)))
        };
        let (vars, loss, t_f) = taped()?;
        let t0 = Instant::now();
        std::hint::black_box(grad(&loss, &[&vars[0], &vars[1]], false)?);
        let t_b = ms(t0);
        let (vars, loss, _) = taped()?;
        let t0 = Instant::now();
        std::hint::black_box(hvp(&loss, &[&vars[0], &vars[1]], &self.dirs)?);
        Ok([t_f, t_b, ms(t0)])
    }
}

fn main() -> Result<()> {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread()?;
    let (mut reps, mut paths) = (10usize, vec![(0, true), (1, false)]);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--reps", Some(r)) if r.parse().is_ok_and(|r: usize| r > 0) => reps = r.parse().unwrap_or(reps),
            ("--only", Some(p)) if p == "fused" || p == "composite" => paths.retain(|&(_, f)| f == (p == "fused")),
            _ => {
                eprintln!("usage: conv_bench [--reps N] [--only fused|composite]");
                std::process::exit(2);
            }
        }
    }
    let p = Problem::new()?;
    let mut times = [[vec![], vec![], vec![]], [vec![], vec![], vec![]]];
    for rep in 0..=reps {
        for &(path, fused) in &paths {
            let t = p.time(fused)?;
            if rep > 0 {
                for k in 0..3 {
                    times[path][k].push(t[k]);
                }
            }
        }
    }
    let fields = |path: usize| {
        if times[path][0].is_empty() {
            return "null".to_string();
        }
        let [f, b, h] = [0, 1, 2].map(|k| median(times[path][k].clone()));
        format!("{{\"forward_ms\": {f:.3}, \"backward_ms\": {b:.3}, \"bob_ms\": {h:.3}, \"bob_over_forward\": {:.2}}}", h / f)
    };
    let bob = |path: usize| if times[path][2].is_empty() { f64::NAN } else { median(times[path][2].clone()) };
    println!(
        "{{\"workload\": \"{NAME}\", \"dtype\": \"f32\", \"threads\": {}, \"reps\": {reps}, \"fused\": {}, \"composite\": {}, \"composite_bob_over_fused_bob\": {:.2}, \"machine\": {{{}}}}}",
        rayon::current_num_threads(),
        fields(0),
        fields(1),
        bob(1) / bob(0),
        Machine::measure().json_fields()
    );
    Ok(())
}
