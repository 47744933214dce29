//! Metagradient descent (MGD) on real MNIST digits: learn a per-step learning-rate schedule and
//! per-example data weights by gradient descent on the validation loss, with exact metagradients from
//! REPLAY.
//!
//! ```sh
//! cargo run --release --example metagradient_descent             # about 20 s on 2 CPU cores
//! cargo run --release --example metagradient_descent -- --iters 4 --steps 60 --out /tmp/mgd
//! cargo run --release --example metagradient_descent -- --device cpu   # or cuda; default: the best
//! cargo run --release --example metagradient_descent -- --help
//! ```
//! The device defaults to `Device::best()`: CUDA device 0 when one can be opened, else the CPU.
//! The network (`examples/common/mnist_cnn.rs`, shared with the poisoning, lr_schedule and
//! metasmoothness examples) follows the paper's metasmooth recipe (section 3, appendix E.2): batch norm *before* the
//! activation, average pooling, and a scaled-down output. Training: T steps of SGD with momentum on
//! 512 digits, 15% of them with a wrong label. Metaparameters: 6 learning-rate keypoints (interpolated
//! per step) and one weight per training example. φ = cross-entropy on 256 held-out digits.
//! Each MGD iteration takes one metagradient (REPLAY, lazy k-ary tree) and a backtracking step, so the
//! validation loss falls at every iteration. It also checks one metagradient coordinate against central
//! finite differences of the whole training run, and writes `schedule.csv`, `loss.csv` and `mgd.svg`
//! (validation loss per iteration and the initial and learned schedules, with labelled axes).

mod common;

use clap::Parser;
use common::mnist_cnn::{Arch, Cnn, Digits, Lr};
use common::plot::{self, Panel, Series};
use metagrad::replay::reference::keypoint_lr;
use metagrad::replay::{evaluate, metagradient, train, ScheduleKind};
use metagrad::{DType, Result, Tensor, Var};
use std::path::PathBuf;
use std::time::Instant;

const N_TRAIN: usize = 512;
const N_VAL: usize = 256;
const N_TEST: usize = 2000;
const BATCH: usize = 64;
const KEYPOINTS: usize = 6;

/// Metagradient descent on MNIST: a learning-rate schedule and per-example data weights at once.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// MGD iterations.
    #[arg(long, default_value_t = 8)]
    iters: usize,
    /// SGD steps per training run.
    #[arg(long, default_value_t = 120)]
    steps: usize,
    /// REPLAY's tree arity k.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Output directory for the CSV files and the plot.
    #[arg(long, default_value = "mgd_out")]
    out: PathBuf,
    /// cpu, cuda or auto (CUDA device 0 when one opens, else the CPU).
    #[arg(long, default_value = "auto")]
    device: String,
}

fn lr_curve(eta: &Tensor, steps: usize) -> Result<Vec<f64>> {
    let e = Var::constant(eta.clone());
    (0..steps).map(|t| keypoint_lr(&e, t, steps)?.value().to_scalar()).collect()
}

fn main() -> Result<()> {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread()?;
    let args = Args::parse();
    let (iters, steps, k) = (args.iters, args.steps, args.k);
    let device = common::device(&args.device)?;
    let digits = Digits::load(N_TRAIN, N_VAL, N_TEST, device)?;
    let mut problem = Cnn::new(&digits, Arch::SMOOTH, steps, BATCH, 0, Lr::Keypoints);
    problem.weights = true;
    // Corrupt 15% of the training labels (a fixed pattern): MGD should learn to down-weight them.
    let corrupted: Vec<bool> = (0..N_TRAIN).map(|i| (i * 7919) % 100 < 15).collect();
    problem.y_train = digits.y_train.iter().enumerate().map(|(i, &l)| if corrupted[i] { (l + 1 + i % 9) % 10 } else { l }).collect();
    println!(
        "MGD on MNIST: {N_TRAIN} training digits ({} mislabelled), {N_VAL} validation digits, T = {steps} SGD steps of batch {BATCH}, REPLAY k = {k}, device {device}",
        corrupted.iter().filter(|&&c| c).count()
    );

    let mut z = vec![Tensor::full(0.05, [KEYPOINTS], DType::F32), Tensor::ones([N_TRAIN], DType::F32)];
    let lr_initial = lr_curve(&z[0], steps)?;
    // The first run (for the test accuracy) also warms the thread pool and memory, so the second is
    // the one timed.
    let t0 = Instant::now();
    let acc0 = problem.test(&train(&problem, &z)?)?.1;
    let t = Instant::now();
    let phi0 = evaluate(&problem, &z)?;
    let train_secs = t.elapsed().as_secs_f64();
    println!("plain training run: {train_secs:.2} s, validation loss {phi0:.5}, test accuracy {:.2}%", 100.0 * acc0);

    let mut losses = vec![phi0];
    let mut phi = phi0;
    let (mut step_eta, mut step_w) = (0.5f64, 1.0f64);
    let bar = plot::progress(iters as u64, "MGD", false);
    for it in 0..iters {
        let t = Instant::now();
        bar.set_message(format!("validation loss {phi:.5}"));
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
            bar.suspend(|| {
                println!(
                    "check: dphi/d(eta_1) = {a:.6e} (REPLAY) vs {fd:.6e} (finite differences), rel. diff {:.2e}; metagradient {mg_secs:.2} s = {:.1}x a training run; replayed {} steps, {} taped, peak {} states ({} KiB arena)",
                    (a - fd).abs() / a.abs().max(fd.abs()),
                    mg_secs / train_secs,
                    mg.stats.replayed_steps,
                    mg.stats.taped_steps,
                    mg.stats.arena.peak_slots,
                    mg.stats.arena.total_bytes / 1024
                )
            });
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
            let v: Vec<f64> = w.iter().zip(&corrupted).filter(|(_, &c)| c == keep).map(|(x, _)| *x).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        bar.inc(1);
        bar.suspend(|| {
            println!(
                "MGD {}/{iters}: validation loss {phi:.5}  mean weight clean {:.3} / mislabelled {:.3}  ({:.1} s){}",
                it + 1,
                mean(false),
                mean(true),
                t.elapsed().as_secs_f64(),
                if accepted { "" } else { "  (no decreasing step found: stopping)" }
            )
        });
        if !accepted {
            break;
        }
    }
    bar.finish_and_clear();
    let acc1 = problem.test(&train(&problem, &z)?)?.1;
    let lr_learned = lr_curve(&z[0], steps)?;
    plot::out_dir(&args.out)?;
    plot::csv(
        &args.out.join("schedule.csv"),
        "step,lr_initial,lr_learned",
        (0..steps).map(|t| format!("{t},{},{}", lr_initial[t], lr_learned[t])),
    )?;
    plot::csv(&args.out.join("loss.csv"), "iteration,validation_loss", losses.iter().enumerate().map(|(i, l)| format!("{i},{l}")))?;
    let per_step = |v: &[f64]| v.iter().enumerate().map(|(t, &y)| (t as f64, y)).collect::<Vec<_>>();
    plot::svg(
        &args.out.join("mgd.svg"),
        &[
            Panel::lines(
                "validation loss per MGD iteration",
                "MGD iteration",
                "validation cross-entropy (nats)",
                vec![Series::indexed("MGD", &losses)],
            ),
            Panel::lines(
                "learning-rate schedule",
                "SGD step",
                "learning rate",
                vec![Series::new("initial", per_step(&lr_initial)), Series::new("learned", per_step(&lr_learned))],
            ),
        ],
    )?;
    println!(
        "validation loss {phi0:.5} -> {phi:.5}, test accuracy {:.2}% -> {:.2}%, in {:.1} s; wrote {}/schedule.csv, loss.csv, mgd.svg",
        100.0 * acc0,
        100.0 * acc1,
        t0.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
