//! Throughput of forward, backward and backward-over-backward (BoB) on reference workloads.
//!
//! ```sh
//! cargo run --release --example bob_throughput                 # a table
//! cargo run --release --example bob_throughput -- --json       # one JSON object keyed by workload
//! cargo run --release --example bob_throughput -- --reps 20 --workload mlp_784_512_512_10_b512 --device cpu
//! cargo run --release --example bob_throughput -- --device cuda --json   # on CUDA device 0
//! ```
//!
//! Definitions (every time is the median over `reps` repetitions, after one untimed warm-up; the JSON
//! also gives the fastest repetition as `*_min_ms`, the least disturbed on a shared machine):
//! - `forward_ms`: the loss computed *with recording on* (a fresh tape, parameters as leaves): the
//!   forward pass that backward needs. `forward_nograd_ms` is the same loss under `no_grad`.
//! - `backward_ms`: `grad(loss, params, false)` alone, after a taped forward (not timed).
//! - `bob_ms`: the Hessian-vector product of the loss with respect to all parameters along a fixed
//!   random direction v, by reverse over reverse — `grad(loss, params, true)`, then the gradient of
//!   ⟨g, v⟩ — excluding the forward (that is `metagrad::hvp` after a taped forward, not timed).
//!
//! Workloads: `mlp_784_512_512_10_b512` (the reference), `mlp_64_128_128_10_b64` (small: per-op
//! overhead), `conv_b32_c3_32_32_hw32_k3` (a two-layer conv net on the fused convolution kernels; bob is
//! the HVP w.r.t. both weight tensors) and its `_composite` twin (im2col + matmul),
//! `attention_b1_h4_n512_d64` (softmax attention on the fused kernels; bob is the HVP w.r.t. Q, K and V)
//! and its `_composite` twin (matmul + softmax). With `--device cuda` every workload runs on CUDA device 0
//! (conv2d and attention on their fused CUDA kernels), plus the GPU-sized `mlp_784_4096_4096_10_b4096`,
//! `conv_b128_c64_64_hw32_k3` and `attention_b4_h16_n{512,2048,8192}_d64` (fused and `_composite`); each
//! timed region ends with a device synchronize, and the JSON adds the peak device memory and, for
//! attention, the BoB's effective TFLOP/s (24·N²·d flops per head). A workload that fails (the N×N
//! composite at N = 8192 may run out of memory) is reported with its error; the others still run. Each workload is a
//! name and a function building its parameters and its loss on a device; add new ones to [`workloads`].

mod common;
use common::{median, Machine};
use metagrad::cuda;
use metagrad::{grad, hvp, no_grad, DType, Device, Result, Tape, Tensor, Var};
use std::process::ExitCode;
use std::time::Instant;

/// A loss of the parameters (data captured inside).
type Loss = Box<dyn Fn(&[Var]) -> Result<Var>>;

/// A problem instance: parameters (differentiated) and their loss.
struct Problem {
    params: Vec<Tensor>,
    loss: Loss,
}

/// A named workload.
struct Workload {
    name: &'static str,
    about: &'static str,
    build: fn(Device) -> Result<Problem>,
    /// Only with `--device cuda` (too big for the CPU's routine runs).
    gpu_only: bool,
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "mlp_784_512_512_10_b512",
            about: "MLP 784-512-512-10, tanh, batch 512, mean cross-entropy, f32",
            build: |d| mlp(&[784, 512, 512, 10], 512, DType::F32, 0, d),
            gpu_only: false,
        },
        Workload {
            name: "mlp_784_4096_4096_10_b4096",
            about: "MLP 784-4096-4096-10, tanh, batch 4096, mean cross-entropy, f32 (GPU size)",
            build: |d| mlp(&[784, 4096, 4096, 10], 4096, DType::F32, 0, d),
            gpu_only: true,
        },
        Workload {
            name: "mlp_64_128_128_10_b64",
            about: "MLP 64-128-128-10, tanh, batch 64, mean cross-entropy, f32 (per-op overhead)",
            build: |d| mlp(&[64, 128, 128, 10], 64, DType::F32, 0, d),
            gpu_only: false,
        },
        Workload {
            name: "conv_b32_c3_32_32_hw32_k3",
            about: "conv(tanh(conv(x, w1)), w2) ∘ R / numel, x 32x3x32x32, w1 32x3x3x3, w2 32x32x3x3, pad 1, f32; fused conv",
            build: |d| conv_net(true, [32, 3, 32, 32], 32, d),
            gpu_only: false,
        },
        Workload {
            name: "conv_b32_c3_32_32_hw32_k3_composite",
            about: "the same conv net through the im2col + matmul composite path",
            build: |d| conv_net(false, [32, 3, 32, 32], 32, d),
            gpu_only: false,
        },
        Workload {
            name: "conv_b128_c64_64_hw32_k3",
            about: "the same conv net with x 128x64x32x32, w1 64x64x3x3, w2 64x64x3x3 (GPU size)",
            build: |d| conv_net(true, [128, 64, 32, 32], 64, d),
            gpu_only: true,
        },
        Workload {
            name: "attention_b1_h4_n512_d64",
            about: "Σ attention(Q, K, V) ∘ R, Q, K, V 1x4x512x64, non-causal, scale 1/8, f32; fused attention",
            build: |d| attention(true, [1, 4, 512, 64], d),
            gpu_only: false,
        },
        Workload {
            name: "attention_b1_h4_n512_d64_composite",
            about: "the same attention through the matmul + softmax composite path",
            build: |d| attention(false, [1, 4, 512, 64], d),
            gpu_only: false,
        },
        Workload {
            name: "attention_b1_h4_n2048_d64",
            about: "Σ attention(Q, K, V) ∘ R, Q, K, V 1x4x2048x64, non-causal, scale 1/8, f32; fused attention",
            build: |d| attention(true, [1, 4, 2048, 64], d),
            gpu_only: false,
        },
        Workload {
            name: "attention_b1_h4_n4096_d64",
            about: "Σ attention(Q, K, V) ∘ R, Q, K, V 1x4x4096x64, non-causal, scale 1/8, f32; fused attention",
            build: |d| attention(true, [1, 4, 4096, 64], d),
            gpu_only: false,
        },
        gpu_attention("attention_b4_h16_n512_d64", 512, true),
        gpu_attention("attention_b4_h16_n512_d64_composite", 512, false),
        gpu_attention("attention_b4_h16_n2048_d64", 2048, true),
        gpu_attention("attention_b4_h16_n2048_d64_composite", 2048, false),
        gpu_attention("attention_b4_h16_n8192_d64", 8192, true),
        gpu_attention("attention_b4_h16_n8192_d64_composite", 8192, false),
    ]
}

/// A GPU-sized attention workload, 4×16×n×64, f32 (fused or composite).
fn gpu_attention(name: &'static str, n: usize, fused: bool) -> Workload {
    let build: fn(Device) -> Result<Problem> = match (n, fused) {
        (512, true) => |d| attention(true, [4, 16, 512, 64], d),
        (512, false) => |d| attention(false, [4, 16, 512, 64], d),
        (2048, true) => |d| attention(true, [4, 16, 2048, 64], d),
        (2048, false) => |d| attention(false, [4, 16, 2048, 64], d),
        (_, true) => |d| attention(true, [4, 16, 8192, 64], d),
        (_, false) => |d| attention(false, [4, 16, 8192, 64], d),
    };
    let about = if fused {
        "Σ attention(Q, K, V) ∘ R, 4 batches × 16 heads, d 64, non-causal, f32; fused"
    } else {
        "the same through the composite path (N×N scores)"
    };
    Workload { name, about, build, gpu_only: true }
}

/// loss = Σ attention(Q, K, V) ∘ R over inputs of `shape` (batch, heads, n, 64), non-causal, scale
/// 1/√64; parameters (Q, K, V).
fn attention(fused: bool, shape: [usize; 4], d: Device) -> Result<Problem> {
    let params = (1..=3).map(|s| Tensor::randn(shape, DType::F32, s).to_device(d)).collect::<Result<Vec<_>>>()?;
    let r = Var::constant(Tensor::randn(shape, DType::F32, 4).to_device(d)?);
    let loss = move |p: &[Var]| -> Result<Var> {
        let o = if fused { p[0].attention(&p[1], &p[2], 0.125, false)? } else { p[0].attention_composite(&p[1], &p[2], 0.125, false)? };
        o.mul(&r)?.sum_all()
    };
    Ok(Problem { params, loss: Box::new(loss) })
}

/// loss = Σ(conv(tanh(conv(x, w1)), w2) ∘ R)/numel with padding 1 for x of shape `xs` and `o` output
/// channels per layer; parameters (w1, w2) scaled by 1/√fan_in.
fn conv_net(fused: bool, xs: [usize; 4], o: usize, d: Device) -> Result<Problem> {
    let scaled = |shape: [usize; 4], seed: u64| -> Result<Tensor> {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        let t = Tensor::randn(shape, DType::F64, seed);
        Tensor::from_vec(t.to_vec_f64().iter().map(|v| v / fan_in.sqrt()).collect::<Vec<_>>(), shape)?.to_dtype(DType::F32).to_device(d)
    };
    let params = vec![scaled([o, xs[1], 3, 3], 3)?, scaled([o, o, 3, 3], 4)?];
    let x = Var::constant(Tensor::randn(xs, DType::F32, 1).to_device(d)?);
    let r = Var::constant(Tensor::randn([xs[0], o, xs[2], xs[3]], DType::F32, 2).to_device(d)?);
    let loss = move |p: &[Var]| -> Result<Var> {
        let o = metagrad::Conv2dOpts::new(1, 1);
        let conv = |x: &Var, w: &Var| if fused { x.conv2d(w, None, o) } else { x.conv2d_composite(w, None, o) };
        let y = conv(&conv(&x, &p[0])?.tanh()?, &p[1])?;
        let n = y.value().numel() as f64;
        y.mul(&r)?.sum_all()?.mul_scalar(1.0 / n)
    };
    Ok(Problem { params, loss: Box::new(loss) })
}

/// An MLP with tanh between layers and mean cross-entropy on top. Weights are randn/√fan_in, biases
/// zero, inputs randn, labels uniform over the classes; everything seeded from `seed`.
fn mlp(widths: &[usize], batch: usize, dtype: DType, seed: u64, d: Device) -> Result<Problem> {
    let mut params = Vec::new();
    for (l, w) in widths.windows(2).enumerate() {
        let scale = 1.0 / (w[0] as f64).sqrt();
        let weight = Tensor::randn([w[0], w[1]], DType::F64, seed + 2 * l as u64 + 1);
        let weight = Tensor::from_vec(weight.to_vec_f64().iter().map(|x| x * scale).collect::<Vec<_>>(), [w[0], w[1]])?;
        params.push(weight.to_dtype(dtype).to_device(d)?);
        params.push(Tensor::full_on(0.0, [w[1]], dtype, d)?);
    }
    let x = Var::constant(Tensor::randn([batch, widths[0]], dtype, seed + 1000).to_device(d)?);
    let classes = *widths.last().unwrap();
    let labels: Vec<usize> = Tensor::rand_uniform([batch], 0.0, classes as f64, DType::F64, seed + 1001)
        .to_vec_f64()
        .iter()
        .map(|&u| (u as usize).min(classes - 1))
        .collect();
    let layers = widths.len() - 1;
    let loss = move |p: &[Var]| -> Result<Var> {
        let mut h = x.clone();
        for l in 0..layers {
            h = h.matmul(&p[2 * l])?.add(&p[2 * l + 1])?;
            if l + 1 < layers {
                h = h.tanh()?;
            }
        }
        h.cross_entropy(&labels, None)
    };
    Ok(Problem { params, loss: Box::new(loss) })
}

struct Timing {
    name: &'static str,
    about: &'static str,
    dtype: DType,
    params: usize,
    forward_ms: f64,
    forward_nograd_ms: f64,
    backward_ms: f64,
    bob_ms: f64,
    /// Fastest repetition of forward, backward and BoB: on a shared machine, the least disturbed.
    min_ms: [f64; 3],
    /// Peak device memory during the workload (CUDA only).
    peak_bytes: Option<usize>,
    /// Growth of the peak resident memory during one BoB (CPU only), MiB.
    peak_rss_mib: Option<f64>,
    /// Effective TFLOP/s of the BoB for attention workloads, counting 24·N²·d flops per head.
    bob_tflops: Option<f64>,
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// A field of /proc/self/status in MiB (`VmRSS`, `VmHWM`), if readable.
fn status_mib(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kib| kib / 1024.0)
}

/// The growth of this process's peak resident memory while `f` runs, in MiB: the CPU buffer cache is
/// emptied first (so the baseline is live memory), the high-water mark is reset through
/// /proc/self/clear_refs, and VmHWM is read afterwards. `None` where /proc does not allow it.
fn peak_rss_growth<R>(f: impl FnOnce() -> R) -> (R, Option<f64>) {
    metagrad::release_memory();
    let before = status_mib("VmRSS");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let r = f();
    let peak = status_mib("VmHWM");
    (
        r,
        match (reset, before, peak) {
            (true, Some(b), Some(p)) => Some(p - b),
            _ => None,
        },
    )
}

/// Milliseconds since `t`, after the device's queued work has finished.
fn ms(t: Instant, d: Device) -> Result<f64> {
    if d != Device::Cpu {
        cuda::synchronize(d)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn measure(w: &Workload, reps: usize, d: Device) -> Result<Timing> {
    if d != Device::Cpu {
        cuda::reset_peak_memory(d)?;
    }
    let p = (w.build)(d)?;
    let dirs: Vec<Tensor> = p
        .params
        .iter()
        .enumerate()
        .map(|(i, t)| Tensor::randn(t.shape().clone(), t.dtype(), 7000 + i as u64).to_device(d))
        .collect::<Result<_>>()?;
    let taped = || -> Result<(Vec<Var>, Var, f64)> {
        let tape = Tape::new();
        let vars: Vec<Var> = p.params.iter().map(|t| tape.var(t.clone())).collect();
        let t0 = Instant::now();
        let loss = (p.loss)(&vars)?;
        Ok((vars, loss, ms(t0, d)?))
    };
    let (mut fwd, mut fwd_ng, mut bwd, mut bob) = (vec![], vec![], vec![], vec![]);
    for rep in 0..=reps {
        let consts: Vec<Var> = p.params.iter().map(|t| Var::constant(t.clone())).collect();
        let t0 = Instant::now();
        let l = no_grad(|| (p.loss)(&consts))?;
        let t_ng = ms(t0, d)?;
        std::hint::black_box(l.value());

        let (vars, loss, t_f) = taped()?;
        let refs: Vec<&Var> = vars.iter().collect();
        let t0 = Instant::now();
        let g = grad(&loss, &refs, false)?;
        let t_b = ms(t0, d)?;
        std::hint::black_box(&g);
        drop((g, loss, refs));
        drop(vars);

        let (vars, loss, _) = taped()?;
        let refs: Vec<&Var> = vars.iter().collect();
        let t0 = Instant::now();
        let hv = hvp(&loss, &refs, &dirs)?;
        let t_h = ms(t0, d)?;
        std::hint::black_box(&hv);

        if rep > 0 {
            fwd_ng.push(t_ng);
            fwd.push(t_f);
            bwd.push(t_b);
            bob.push(t_h);
        }
    }
    // Peak host memory of one more BoB, on the CPU (after the timed ones, so the caches are warm).
    let peak_rss_mib = if d == Device::Cpu {
        let (vars, loss, _) = taped()?;
        let refs: Vec<&Var> = vars.iter().collect();
        let (hv, peak) = peak_rss_growth(|| hvp(&loss, &refs, &dirs));
        hv?;
        peak
    } else {
        None
    };
    let bob_ms = median(bob.clone());
    let bob_tflops = w.name.starts_with("attention").then(|| {
        let s = p.params[0].dims();
        let (heads, n, dh) = (s[0] * s[1], s[2], s[3]);
        24.0 * (n * n * dh * heads) as f64 / (bob_ms * 1e-3) / 1e12
    });
    let peak_bytes = if d != Device::Cpu { Some(cuda::memory_stats(d)?.peak_bytes_in_use) } else { None };
    Ok(Timing {
        peak_bytes,
        peak_rss_mib,
        bob_tflops,
        name: w.name,
        about: w.about,
        dtype: p.params[0].dtype(),
        params: p.params.iter().map(|t| t.numel()).sum(),
        min_ms: [min(&fwd), min(&bwd), min(&bob)],
        forward_ms: median(fwd),
        forward_nograd_ms: median(fwd_ng),
        backward_ms: median(bwd),
        bob_ms,
    })
}

struct Args {
    json: bool,
    reps: usize,
    workload: Option<String>,
    cuda: bool,
    /// Only the workloads the peers (benches/peers) also run.
    peer_set: bool,
}

/// The workloads benches/peers/torch_cpu.py and jax_cpu.py run too.
const PEER_SET: &[&str] = &[
    "mlp_784_512_512_10_b512",
    "attention_b1_h4_n512_d64",
    "attention_b1_h4_n2048_d64",
    "attention_b1_h4_n4096_d64",
    "conv_b32_c3_32_32_hw32_k3",
];

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args { json: false, reps: 10, workload: None, cuda: false, peer_set: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--json" => args.json = true,
            "--reps" => {
                let v = value("--reps")?;
                args.reps =
                    v.parse().ok().filter(|&r: &usize| r > 0).ok_or_else(|| format!("--reps needs a positive integer, got '{v}'"))?;
            }
            "--workload" => args.workload = Some(value("--workload")?),
            "--peer-set" => args.peer_set = true,
            "--device" => {
                let d = value("--device")?;
                args.cuda = match d.as_str() {
                    "cpu" => false,
                    "cuda" => true,
                    _ => return Err(format!("unknown device '{d}' (available: cpu, cuda)")),
                };
            }
            "-h" | "--help" => {
                return Err("usage: bob_throughput [--json] [--reps N] [--workload NAME | --peer-set] [--device cpu|cuda]".into());
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread().expect("rayon is not used before main");
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bob_throughput: {e}");
            return ExitCode::from(2);
        }
    };
    let device = if args.cuda {
        match Device::cuda(0) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("bob_throughput: --device cuda: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        Device::Cpu
    };
    let device_name = if args.cuda { cuda::device_name(device).unwrap_or_else(|e| e.to_string()) } else { "cpu".to_string() };
    let all: Vec<Workload> = workloads().into_iter().filter(|w| args.cuda || !w.gpu_only).collect();
    let chosen: Vec<&Workload> = all
        .iter()
        .filter(|w| args.workload.as_deref().is_none_or(|n| n == w.name))
        .filter(|w| !args.peer_set || PEER_SET.contains(&w.name))
        .filter(|w| args.peer_set || args.workload.is_some() || args.cuda || !w.name.contains("n2048") && !w.name.contains("n4096"))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|w| w.name).collect();
        eprintln!("bob_throughput: unknown workload '{}' (available: {})", args.workload.unwrap_or_default(), names.join(", "));
        return ExitCode::from(2);
    }
    let threads = rayon::current_num_threads();
    let machine = Machine::measure();
    // A workload that fails (e.g. the N×N composite attention running out of device memory) is
    // reported as such, and the others still run; the exit status says whether any failed.
    let (mut results, mut failed) = (Vec::new(), Vec::new());
    for w in chosen {
        match measure(w, args.reps, device) {
            Ok(t) => results.push(t),
            Err(e) => {
                eprintln!("bob_throughput: workload {} failed: {e}", w.name);
                failed.push((w.name, e.to_string().replace('"', "'")));
            }
        }
    }
    let extra = |t: &Timing| {
        let mut s = String::new();
        if let Some(b) = t.peak_bytes {
            s += &format!(", \"peak_device_mib\": {:.1}", b as f64 / (1 << 20) as f64);
        }
        if let Some(f) = t.bob_tflops {
            s += &format!(", \"bob_tflops\": {f:.3}");
        }
        if let Some(m) = t.peak_rss_mib {
            s += &format!(", \"peak_rss_mib\": {m:.1}");
        }
        s
    };
    if args.json {
        let mut entries: Vec<String> = results
            .iter()
            .map(|t| {
                format!(
                    "  \"{}\": {{\"forward_ms\": {:.3}, \"backward_ms\": {:.3}, \"bob_ms\": {:.3}, \"forward_nograd_ms\": {:.3}, \
                     \"bob_over_backward\": {:.3}, \"forward_min_ms\": {:.3}, \"backward_min_ms\": {:.3}, \"bob_min_ms\": {:.3}, \"forward_taped\": true, \"reps\": {}, \"threads\": {threads}, \"dtype\": \"{}\", \
                     \"device\": \"{device}\", \"device_name\": \"{device_name}\", \"params\": {}{}}}",
                    t.name,
                    t.forward_ms,
                    t.backward_ms,
                    t.bob_ms,
                    t.forward_nograd_ms,
                    t.bob_ms / t.backward_ms,
                    t.min_ms[0],
                    t.min_ms[1],
                    t.min_ms[2],
                    args.reps,
                    t.dtype,
                    t.params,
                    extra(t)
                )
            })
            .collect();
        entries.extend(failed.iter().map(|(n, e)| format!("  \"{n}\": {{\"error\": \"{e}\"}}")));
        entries.push(format!("  \"machine\": {{{}}}", machine.json_fields()));
        println!("{{\n{}\n}}", entries.join(",\n"));
    } else {
        println!("{}", machine.line());
        println!(
            "device {device} ({device_name}), {threads} CPU threads, medians over {} reps (ms); figures vary across machines\n",
            args.reps
        );
        println!("{:<28} {:>10} {:>10} {:>10} {:>10} {:>8}   min fwd/bwd/bob", "workload", "fwd", "fwd(nograd)", "bwd", "bob", "bob/bwd");
        for t in &results {
            println!(
                "{:<28} {:>10.2} {:>11.2} {:>10.2} {:>10.2} {:>8.2}   {:.2}/{:.2}/{:.2}",
                t.name,
                t.forward_ms,
                t.forward_nograd_ms,
                t.backward_ms,
                t.bob_ms,
                t.bob_ms / t.backward_ms,
                t.min_ms[0],
                t.min_ms[1],
                t.min_ms[2]
            );
        }
        for (n, e) in &failed {
            println!("{n:<28} failed: {e}");
        }
        println!();
        for t in &results {
            println!("{}: {} ({} params, {}{})", t.name, t.about, t.params, t.dtype, extra(t));
        }
        println!(
            "\nfwd: the loss with recording on (the forward backward needs); fwd(nograd): the same under no_grad;\n\
             bwd: grad(loss, params, false) after a taped forward; bob: the HVP by reverse over reverse\n\
             (grad with create_graph, then the gradient of <g, v>), forward excluded. Medians; min: the fastest rep."
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
