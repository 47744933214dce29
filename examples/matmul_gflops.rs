//! GFLOP/s of the CPU matmul kernel on the MLP benchmark's shapes and on 2048³, beside the machine's
//! measured FMA peak (`--json` prints one object).
//!
//! ```sh
//! cargo run --release --example matmul_gflops                  # all threads
//! RAYON_NUM_THREADS=2 cargo run --release --example matmul_gflops -- --json
//! cargo run --release --example matmul_gflops -- --only 2048x2048x2048   # one shape
//! ```
//! `benches/compare_cpu.sh` runs this beside PyTorch's `a @ b` (MKL) in one invocation.

mod common;
use common::{median, Machine};
use metagrad::Tensor;
use std::time::Instant;

fn main() {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread().expect("rayon is not used before main");
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    // `--only KEY` times one shape (for profiling), e.g. `--only 2048x2048x2048`.
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let machine = Machine::measure();
    // (key, name, m, k, n, A transposed, B transposed): the MLP benchmark's products, the step_mlp
    // training step's (batch 64), then 2048³.
    let shapes: [(&str, &str, usize, usize, usize, bool, bool); 8] = [
        ("512x784x512", "fwd layer 1      x·W1", 512, 784, 512, false, false),
        ("512x512x512", "fwd layer 2      h·W2", 512, 512, 512, false, false),
        ("512x512x10", "fwd layer 3      h·W3", 512, 512, 10, false, false),
        ("784x512x512", "bwd dW1        xᵀ·g1", 784, 512, 512, true, false),
        ("512x512x512_tb", "bwd dh1       g2·W2ᵀ", 512, 512, 512, false, true),
        ("64x784x128", "step_mlp fwd     x·W1", 64, 784, 128, false, false),
        ("784x64x128", "step_mlp bwd   xᵀ·g1", 784, 64, 128, true, false),
        ("2048x2048x2048", "square           A·B", 2048, 2048, 2048, false, false),
    ];
    if !json {
        println!("{}\n30 runs (5 for 2048³): median and best (the machine may be shared: best is the cleaner)\n", machine.line());
        println!("{:<24} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9} {:>7}", "shape", "m", "k", "n", "ms(med)", "GFLOP/s", "best", "of peak");
    }
    let mut rows = Vec::new();
    for (key, name, m, k, n, ta, tb) in shapes {
        if only.as_ref().is_some_and(|o| o != key) {
            continue;
        }
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32) * 1e-3 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32) * 1e-3 - 0.5).collect();
        let a = Tensor::from_vec(a, if ta { [k, m] } else { [m, k] }).expect("shape");
        let b = Tensor::from_vec(b, if tb { [n, k] } else { [k, n] }).expect("shape");
        let reps = if m >= 2048 {
            if only.is_some() {
                20
            } else {
                5
            }
        } else {
            30
        };
        let mut times = Vec::new();
        for _ in 0..=reps {
            let t0 = Instant::now();
            std::hint::black_box(a.matmul_t(&b, ta, tb).expect("matmul"));
            times.push(t0.elapsed().as_secs_f64());
        }
        times.remove(0);
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let t = median(times);
        let gf = |t: f64| (2 * m * k * n) as f64 / t / 1e9;
        let of_peak = machine.peak_gflops.map_or(f64::NAN, |p| gf(t) / p);
        if !json {
            println!("{name:<24} {m:>5} {k:>5} {n:>5} {:>9.3} {:>9.1} {:>9.1} {:>6.0}%", t * 1e3, gf(t), gf(best), of_peak * 100.0);
        }
        rows.push(format!(
            "\"{key}\": {{\"ms_median\": {:.4}, \"gflops_median\": {:.2}, \"gflops_best\": {:.2}}}",
            t * 1e3,
            gf(t),
            gf(best)
        ));
    }
    if json {
        println!("{{{}, {}}}", machine.json_fields(), rows.join(", "));
    }
}
