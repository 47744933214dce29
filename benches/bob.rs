//! Criterion benchmarks of forward, backward and backward-over-backward (BoB) on MLPs.
//!
//! `cargo bench --bench bob` (add a filter such as `-- bob/` to run one group). Definitions match
//! `examples/bob_throughput.rs`:
//! - forward: the loss on a fresh tape (recording on);
//! - backward: `grad(loss, params, false)` after a taped forward (the forward is set-up, not timed);
//! - bob: the HVP of the loss along a fixed direction (`grad` with `create_graph`, then the gradient of
//!   ⟨g, v⟩), after a taped forward (not timed).
//!
//! Sample counts and times are kept small so the whole run takes about a minute.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use metagrad::{grad, hvp, DType, Result, Tape, Tensor, Var};
use std::time::Duration;

struct Mlp {
    name: &'static str,
    params: Vec<Tensor>,
    dirs: Vec<Tensor>,
    x: Var,
    labels: Vec<usize>,
}

impl Mlp {
    /// tanh MLP with the given widths and batch, f32; weights randn/√fan_in, biases zero, seeded.
    fn new(name: &'static str, widths: &[usize], batch: usize) -> Mlp {
        let mut params = Vec::new();
        for (l, w) in widths.windows(2).enumerate() {
            let s = 1.0 / (w[0] as f64).sqrt();
            let v: Vec<f32> =
                Tensor::randn([w[0], w[1]], DType::F64, 2 * l as u64 + 1).to_vec_f64().iter().map(|x| (x * s) as f32).collect();
            params.push(Tensor::from_vec(v, [w[0], w[1]]).unwrap());
            params.push(Tensor::zeros([w[1]], DType::F32));
        }
        let dirs = params.iter().enumerate().map(|(i, p)| Tensor::randn(p.shape().clone(), DType::F32, 7000 + i as u64)).collect();
        let classes = *widths.last().unwrap();
        Mlp {
            name,
            params,
            dirs,
            x: Var::constant(Tensor::randn([batch, widths[0]], DType::F32, 1000)),
            labels: (0..batch).map(|i| (i * 7 + 3) % classes).collect(),
        }
    }

    fn loss(&self, p: &[Var]) -> Result<Var> {
        let layers = p.len() / 2;
        let mut h = self.x.clone();
        for l in 0..layers {
            h = h.matmul(&p[2 * l])?.add(&p[2 * l + 1])?;
            if l + 1 < layers {
                h = h.tanh()?;
            }
        }
        h.cross_entropy(&self.labels, None)
    }

    /// A taped forward: the parameters as leaves of a fresh tape, and the loss.
    fn taped(&self) -> (Vec<Var>, Var) {
        let tape = Tape::new();
        let vars: Vec<Var> = self.params.iter().map(|t| tape.var(t.clone())).collect();
        let loss = self.loss(&vars).unwrap();
        (vars, loss)
    }
}

fn workloads() -> Vec<Mlp> {
    vec![Mlp::new("mlp_64_128_128_10_b64", &[64, 128, 128, 10], 64), Mlp::new("mlp_784_512_512_10_b512", &[784, 512, 512, 10], 512)]
}

/// A group timing `f(workload, params, loss)` after a taped forward (set-up, not timed).
fn after_forward<R>(c: &mut Criterion, name: &str, secs: u64, ws: &[Mlp], f: impl Fn(&Mlp, &[&Var], &Var) -> R) {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(secs));
    for w in ws {
        g.bench_function(w.name, |b| {
            b.iter_batched(|| w.taped(), |(vars, loss)| f(w, &vars.iter().collect::<Vec<_>>(), &loss), BatchSize::PerIteration)
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let ws = workloads();
    let mut g = c.benchmark_group("forward");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for w in &ws {
        g.bench_function(w.name, |b| b.iter(|| w.taped()));
    }
    g.finish();
    after_forward(c, "backward", 2, &ws, |_, vars, loss| grad(loss, vars, false).unwrap());
    after_forward(c, "bob", 3, &ws, |w, vars, loss| hvp(loss, vars, &w.dirs).unwrap());
}

criterion_group!(benches, bench);
criterion_main!(benches);
