//! Metagradient descent (MGD) on real MNIST digits: learn a per-step learning-rate schedule and
//! per-example data weights by gradient descent on the validation loss, with exact metagradients from
//! REPLAY.
//!
//! ```sh
//! cargo run --release --example metagradient_descent             # ~2 minutes on 2 CPU cores
//! cargo run --release --example metagradient_descent -- --iters 4 --steps 60 --out /tmp/mgd
//! cargo run --release --example metagradient_descent -- --device cpu   # or cuda; default: the best
//! ```
//! The device defaults to `Device::best()`: CUDA device 0 when one can be opened, else the CPU.
//! The network follows the paper's metasmooth recipe (section 3, appendix E.2): batch norm *before* the
//! activation, average pooling, and a scaled-down output. Training: T steps of SGD with momentum on
//! 512 digits, 15% of them with a wrong label. Metaparameters: 6 learning-rate keypoints (interpolated
//! per step) and one weight per training example. φ = cross-entropy on 256 held-out digits.
//! Each MGD iteration takes one metagradient (REPLAY, lazy k-ary tree) and a backtracking step, so the
//! validation loss falls at every iteration. It also checks one metagradient coordinate against central
//! finite differences of the whole training run, and writes `schedule.csv`, `loss.csv` and `mgd.svg`.

use metagrad::data::{default_path, Mnist};
use metagrad::optim::{scalar, Sgd};
use metagrad::replay::reference::keypoint_lr;
use metagrad::replay::{evaluate, metagradient, ScheduleKind, StepCtx, Training};
use metagrad::{Conv2dOpts, DType, Device, Result, Tensor, Var};
use std::io::{IsTerminal, Write};
use std::time::Instant;

const N_TRAIN: usize = 512;
const N_VAL: usize = 256;
const BATCH: usize = 64;
const KEYPOINTS: usize = 6;
const CHANNELS: usize = 8;

struct Mgd {
    steps: usize,
    x_train: Tensor, // [512, 1, 28, 28]
    y_train: Vec<usize>,
    x_val: Tensor,
    y_val: Vec<usize>,
    corrupted: Vec<bool>,
    device: Device,
}

/// The metasmooth CNN: pool 28→14, conv 3×3 (1→8), batch norm, GELU, pool 14→7, linear 392→10, ×0.2.
fn logits(x: &Var, p: &[Var]) -> Result<Var> {
    let pool = Conv2dOpts::new(2, 0);
    let h = x.avg_pool2d((2, 2), pool)?.conv2d(&p[0], None, Conv2dOpts::new(1, 1))?;
    let h = h.batch_norm(&p[1], &p[2], 1e-5)?.gelu()?.avg_pool2d((2, 2), pool)?;
    let n = h.dims()[0];
    h.reshape([n, CHANNELS * 49])?.matmul(&p[3])?.add(&p[4])?.mul_scalar(0.2)
}

impl Training for Mgd {
    fn steps(&self) -> usize {
        self.steps
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        let f = |shape: &[usize], seed: u64, fan_in: usize| -> Result<Tensor> {
            let t = Tensor::randn(shape.to_vec(), DType::F32, seed);
            let v: Vec<f32> = t.to_vec::<f32>()?.iter().map(|x| x / (fan_in as f32).sqrt()).collect();
            Tensor::from_vec(v, shape.to_vec())?.to_device(self.device)
        };
        let params = vec![
            f(&[CHANNELS, 1, 3, 3], 1, 9)?,
            Tensor::full_on(1.0, [CHANNELS], DType::F32, self.device)?,
            Tensor::full_on(0.0, [CHANNELS], DType::F32, self.device)?,
            f(&[CHANNELS * 49, 10], 2, CHANNELS * 49)?,
            Tensor::full_on(0.0, [10], DType::F32, self.device)?,
        ];
        let bufs = params.iter().map(|p| Tensor::full_on(0.0, p.shape().clone(), DType::F32, self.device)).collect::<Result<Vec<_>>>()?;
        Ok(params.into_iter().chain(bufs).collect())
    }
    fn step(&self, ctx: &StepCtx, t: usize, s: &[Var], z: &[Var]) -> Result<Vec<Var>> {
        // Batch t: a fixed stride through the (class-interleaved) training set, chosen from t alone.
        let idx: Vec<usize> = (0..BATCH).map(|j| (t * BATCH + j) % N_TRAIN).collect();
        let labels: Vec<usize> = idx.iter().map(|&i| self.y_train[i]).collect();
        let x = Var::constant(self.x_train.clone()).index_select(0, &idx)?;
        let w = z[1].to_device(self.device)?.index_select(0, &idx)?;
        let (params, bufs) = s.split_at(5);
        let loss = logits(&x, params)?.cross_entropy(&labels, Some(&w))?;
        let g = ctx.grad(&loss, &params.iter().collect::<Vec<_>>())?;
        let p0 = &params[0];
        let opt = Sgd {
            lr: keypoint_lr(&z[0], t, self.steps)?,
            momentum: Some(scalar(0.9, p0)),
            weight_decay: scalar(5e-4, p0),
            nesterov: false,
        };
        let (p, v) = opt.step(params, &g, bufs)?;
        Ok(p.into_iter().chain(v).collect())
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        logits(&Var::constant(self.x_val.clone()), &s[..5])?.cross_entropy(&self.y_val, None)
    }
}

fn images(data: &Mnist, idx: &[usize]) -> Result<Tensor> {
    let px: Vec<f32> = data.pixels_f64(idx)?.iter().map(|&v| v as f32).collect();
    Tensor::from_vec(px, [idx.len(), 1, 28, 28])
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bar(done: usize, total: usize) -> String {
    let w = 24;
    let f = done * w / total.max(1);
    format!("[{}{}]", "#".repeat(f), ".".repeat(w - f))
}

/// A minimal SVG: validation loss per MGD iteration (left) and the learned schedule (right).
fn svg(losses: &[f64], lr0: &[f64], lr1: &[f64]) -> String {
    let panel = |x0: f64, title: &str, series: &[(&[f64], &str)]| -> String {
        let all: Vec<f64> = series.iter().flat_map(|(s, _)| s.iter().copied()).collect();
        let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let mut out = format!("<text x='{}' y='20' font-size='14'>{title} ({lo:.4} – {hi:.4})</text>", x0 + 10.0);
        out += &format!("<rect x='{}' y='30' width='360' height='240' fill='none' stroke='#999'/>", x0 + 10.0);
        for (s, color) in series {
            let n = s.len().max(2) - 1;
            let pts: Vec<String> = s
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x0 + 10.0 + 360.0 * i as f64 / n as f64, 270.0 - 240.0 * (v - lo) / span))
                .collect();
            out += &format!("<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>", pts.join(" "));
        }
        out
    };
    format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='780' height='300' font-family='sans-serif'>{}{}</svg>\n",
        panel(0.0, "validation loss per MGD iteration", &[(losses, "#c33")]),
        panel(390.0, "learning rate per step: initial (grey), learned (blue)", &[(lr0, "#999"), (lr1, "#36c")])
    )
}

fn lr_curve(eta: &Tensor, steps: usize) -> Result<Vec<f64>> {
    let e = Var::constant(eta.clone());
    (0..steps).map(|t| keypoint_lr(&e, t, steps)?.value().to_scalar()).collect()
}

fn main() -> Result<()> {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread()?;
    let args: Vec<String> = std::env::args().collect();
    let (iters, steps, k) = (arg(&args, "--iters", 8usize), arg(&args, "--steps", 120usize), arg(&args, "--k", 4usize));
    let out_dir = std::path::PathBuf::from(arg(&args, "--out", "mgd_out".to_string()));
    std::fs::create_dir_all(&out_dir).map_err(|e| metagrad::Error::Invalid { op: "mgd", msg: format!("{}: {e}", out_dir.display()) })?;

    let data = Mnist::load(default_path())?;
    let order = data.balanced_order();
    let (tr, va) = (&order[..N_TRAIN], &order[N_TRAIN..N_TRAIN + N_VAL]);
    // Corrupt 15% of the training labels (a fixed pattern): MGD should learn to down-weight them.
    let corrupted: Vec<bool> = (0..N_TRAIN).map(|i| (i * 7919) % 100 < 15).collect();
    let y_train: Vec<usize> =
        data.labels_of(tr)?.iter().enumerate().map(|(i, &l)| if corrupted[i] { (l + 1 + i % 9) % 10 } else { l }).collect();
    let device = match arg(&args, "--device", "auto".to_string()).as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::cuda(0)?,
        _ => Device::best(),
    };
    let (x_train, x_val) = (images(&data, tr)?.to_device(device)?, images(&data, va)?.to_device(device)?);
    let problem = Mgd { steps, x_train, y_train, x_val, y_val: data.labels_of(va)?, corrupted, device };
    println!(
        "MGD on MNIST: {N_TRAIN} training digits ({} mislabelled), {N_VAL} validation digits, T = {steps} SGD steps of batch {BATCH}, REPLAY k = {k}, device {device}",
        problem.corrupted.iter().filter(|&&c| c).count()
    );

    let mut z = vec![Tensor::full(0.05, [KEYPOINTS], DType::F32), Tensor::ones([N_TRAIN], DType::F32)];
    let lr_initial = lr_curve(&z[0], steps)?;
    let t0 = Instant::now();
    let phi0 = evaluate(&problem, &z)?;
    let train_secs = t0.elapsed().as_secs_f64();
    println!("plain training run: {train_secs:.2} s, validation loss {phi0:.5}");

    // On a terminal the progress line is redrawn in place; in a log, each finished line stands alone.
    let tty = std::io::stdout().is_terminal();
    let clear = if tty { "\r\x1b[2K" } else { "" };
    let mut losses = vec![phi0];
    let mut phi = phi0;
    let (mut step_eta, mut step_w) = (0.5f64, 1.0f64);
    for it in 0..iters {
        let t = Instant::now();
        if tty {
            print!("{clear}{} MGD {}/{iters}: metagradient...", bar(it, iters), it + 1);
            let _ = std::io::stdout().flush();
        }
        let mg = metagradient(&problem, &z, ScheduleKind::KAry { k })?;
        let mg_secs = t.elapsed().as_secs_f64();
        if it == 0 {
            // One coordinate against central differences of the whole training run (f32 training, so
            // the agreement is to a few digits).
            let h = 2e-3f64;
            let shifted = |d: f64| -> Result<f64> {
                let mut v = z[0].to_vec::<f32>()?;
                v[1] += d as f32;
                evaluate(&problem, &[Tensor::from_vec(v, [KEYPOINTS])?, z[1].clone()])
            };
            let fd = (shifted(h)? - shifted(-h)?) / (2.0 * h);
            let a = mg.grads[0].to_vec_f64()[1];
            println!(
                "{clear}check: dphi/d(eta_1) = {a:.6e} (REPLAY) vs {fd:.6e} (finite differences), rel. diff {:.2e}; metagradient {mg_secs:.2} s = {:.1}x a training run; replayed {} steps, {} taped, peak {} states ({} KiB arena)",
                (a - fd).abs() / a.abs().max(fd.abs()),
                mg_secs / train_secs,
                mg.stats.replayed_steps,
                mg.stats.taped_steps,
                mg.stats.arena.peak_slots,
                mg.stats.arena.total_bytes / 1024
            );
        }
        // Normalized steps: learning rates in log space, data weights clamped to [0, 3].
        let ge: Vec<f64> = z[0].to_vec_f64().iter().zip(mg.grads[0].to_vec_f64()).map(|(e, g)| e * g).collect();
        let gw = mg.grads[1].to_vec_f64();
        let inf = |v: &[f64]| v.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
        let (ne, nw) = (inf(&ge), inf(&gw));
        let mut accepted = false;
        for _ in 0..6 {
            let eta: Vec<f32> = z[0].to_vec_f64().iter().zip(&ge).map(|(e, g)| (e * (-step_eta * g / ne).exp()) as f32).collect();
            let w: Vec<f32> = z[1].to_vec_f64().iter().zip(&gw).map(|(w, g)| (w - step_w * g / nw).clamp(0.0, 3.0) as f32).collect();
            let cand = vec![Tensor::from_vec(eta, [KEYPOINTS])?, Tensor::from_vec(w, [N_TRAIN])?];
            let p = evaluate(&problem, &cand)?;
            if p < phi {
                (z, phi, accepted) = (cand, p, true);
                break;
            }
            step_eta *= 0.5;
            step_w *= 0.5;
        }
        losses.push(phi);
        let w = z[1].to_vec_f64();
        let mean = |keep: bool| {
            let v: Vec<f64> = w.iter().zip(&problem.corrupted).filter(|(_, &c)| c == keep).map(|(x, _)| *x).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        println!(
            "{clear}{} MGD {}/{iters}: validation loss {phi:.5}  mean weight clean {:.3} / mislabelled {:.3}  ({:.1} s){}",
            bar(it + 1, iters),
            it + 1,
            mean(false),
            mean(true),
            t.elapsed().as_secs_f64(),
            if accepted { "" } else { "  (no decreasing step found: stopping)" }
        );
        if !accepted {
            break;
        }
    }
    let lr_learned = lr_curve(&z[0], steps)?;
    let io = |e: std::io::Error| metagrad::Error::Invalid { op: "mgd", msg: e.to_string() };
    let mut f = std::fs::File::create(out_dir.join("schedule.csv")).map_err(io)?;
    writeln!(f, "step,lr_initial,lr_learned").map_err(io)?;
    for t in 0..steps {
        writeln!(f, "{t},{},{}", lr_initial[t], lr_learned[t]).map_err(io)?;
    }
    let mut f = std::fs::File::create(out_dir.join("loss.csv")).map_err(io)?;
    writeln!(f, "iteration,validation_loss").map_err(io)?;
    for (i, l) in losses.iter().enumerate() {
        writeln!(f, "{i},{l}").map_err(io)?;
    }
    std::fs::write(out_dir.join("mgd.svg"), svg(&losses, &lr_initial, &lr_learned)).map_err(io)?;
    println!(
        "validation loss {phi0:.5} -> {phi:.5} in {:.1} s; wrote {}/schedule.csv, loss.csv, mgd.svg",
        t0.elapsed().as_secs_f64(),
        out_dir.display()
    );
    Ok(())
}
