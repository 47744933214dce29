//! Learning-rate schedules by metagradient descent against a grid search (paper §4.4), in
//! miniature on MNIST: MGD starts from a flat schedule (k evenly spaced keypoints, linearly
//! interpolated per step) and follows exact REPLAY metagradients of the validation loss; a grid
//! search over constant, step and cosine schedules gets the same compute, counted in training runs'
//! worth of measured seconds. Both select on the validation loss; the test loss is reported beside.
//!
//! ```sh
//! cargo run --release --example lr_schedule             # a few minutes on 2 CPU cores
//! cargo run --release --example lr_schedule -- --quick  # about a minute
//! cargo run --release --example lr_schedule -- --json   # one summary object on stdout
//! ```
//! Writes `OUT/lr_mgd.csv` (validation loss per MGD iteration), `OUT/lr_grid.csv` (every grid
//! point), `OUT/lr_schedules.csv` (the flat, learned and best grid schedules per step) and
//! `OUT/lr_schedule.svg`.

mod common;

use clap::Parser;
use common::mnist_cnn::{schedules, Arch, Cnn, Digits, Lr};
use common::plot::{self, Panel, Series};
use metagrad::replay::reference::keypoint_lr;
use metagrad::replay::{evaluate, metagradient, ScheduleKind};
use metagrad::{Result, Tensor, Var};
use std::time::Instant;

/// Learn an SGD learning-rate schedule by MGD and compare it with a grid search of equal compute.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// --quick, --json, --out.
    #[command(flatten)]
    pub opts: common::mgd::Opts,
    /// cpu, cuda or auto (CUDA device 0 when one opens, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Training digits (default 2048; 1024 with --quick).
    #[arg(long)]
    pub train: Option<usize>,
    /// SGD steps per training run (default 320; 160 with --quick).
    #[arg(long)]
    pub steps: Option<usize>,
    /// MGD iterations (default 10; 4 with --quick).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Schedule keypoints k (at least 2).
    #[arg(long, default_value_t = 8)]
    pub keypoints: usize,
    /// The flat schedule MGD starts from.
    #[arg(long, default_value_t = 0.02)]
    pub lr0: f64,
}

/// The measured outcome.
#[derive(Debug, Clone)]
pub struct Summary {
    /// MGD's final validation loss.
    pub mgd_val_loss: f64,
    /// Its test loss.
    pub mgd_test_loss: f64,
    /// The best grid point's validation loss.
    pub best_grid_val_loss: f64,
    /// Its test loss.
    pub best_grid_test_loss: f64,
    /// The best grid point, e.g. "cosine 0.3".
    pub best_grid: String,
    /// Grid points trained (the compute budget in training runs).
    pub grid_runs: usize,
    /// MGD's cost in training runs' worth of seconds.
    pub mgd_runs: f64,
    /// Validation loss per MGD iteration (from the flat schedule).
    pub mgd_losses: Vec<f64>,
    /// Seconds in all.
    pub seconds: f64,
}

/// A schedule family: its name and (peak rate, steps) → the rate of each step.
type Family = (&'static str, fn(f64, usize) -> Vec<f64>);

/// The learning rate of each step for keypoints `eta`.
fn per_step(eta: &[f64], steps: usize) -> Result<Vec<f64>> {
    let e = Var::constant(Tensor::from_vec(eta.iter().map(|&v| v as f32).collect::<Vec<_>>(), [eta.len()])?);
    (0..steps).map(|t| keypoint_lr(&e, t, steps)?.value().to_scalar()).collect()
}

/// MGD, then the grid search.
pub fn run(args: &Args) -> Result<Summary> {
    let t_start = Instant::now();
    let device = common::device(&args.device)?;
    let o = &args.opts;
    let (n, steps, iters) = (o.size(args.train, 2048, 1024), o.size(args.steps, 320, 160), o.size(args.iters, 10, 4));
    let k = args.keypoints;
    if k < 2 {
        return Err(metagrad::Error::Invalid { op: "lr_schedule", msg: format!("--keypoints {k} must be at least 2") });
    }
    let digits = Digits::load(n, 256, 2000, device)?;
    o.say(&format!("MGD on the learning-rate schedule: {n} training digits, T = {steps} SGD steps of batch 64, {k} keypoints from a flat {}, {iters} iterations, device {device}", args.lr0));
    let fixed = |lr: Vec<f64>| Cnn::new(&digits, Arch::SMOOTH, steps, 64, 0, Lr::Fixed(lr));
    let mgd_run = Cnn::new(&digits, Arch::SMOOTH, steps, 64, 0, Lr::Keypoints);

    // One training run's seconds: the unit of compute for both searches (timed after a first run,
    // which also pays for page faults and the thread pool's start).
    let z = |eta: &[f64]| -> Result<Vec<Tensor>> { Ok(vec![Tensor::from_vec(eta.iter().map(|&v| v as f32).collect::<Vec<_>>(), [k])?]) };
    let flat = vec![args.lr0; k];
    evaluate(&mgd_run, &z(&flat)?)?;
    let t = Instant::now();
    let phi0 = evaluate(&mgd_run, &z(&flat)?)?;
    let run_secs = t.elapsed().as_secs_f64();

    // MGD in log space: the gradient in log η is η∘∂φ/∂η, and a step s moves η to η·exp(s·g).
    let t_mgd = Instant::now();
    let grad = |eta: &[f64]| -> Result<Vec<f64>> {
        let mg = metagradient(&mgd_run, &z(eta)?, ScheduleKind::KAry { k: 4 })?;
        Ok(eta.iter().zip(mg.grads[0].to_vec_f64()).map(|(e, g)| e * g).collect())
    };
    let propose = |eta: &[f64], g: &[f64], s: f64| -> Vec<f64> { eta.iter().zip(g).map(|(e, g)| e * (s * g).exp()).collect() };
    let (eta, losses) =
        common::mgd::descend(o, "validation loss", iters, false, flat, phi0, grad, propose, |eta| evaluate(&mgd_run, &z(eta)?))?;
    let phi = losses.last().copied().unwrap_or(phi0);
    let mgd_secs = t_mgd.elapsed().as_secs_f64() + run_secs;
    let mgd_runs = mgd_secs / run_secs;
    let learned = per_step(&eta, steps)?;
    let (mgd_val_loss, mgd_test_loss) = (phi, mgd_run.test(&metagrad::replay::train(&mgd_run, &z(&eta)?)?)?.0);

    // The grid: the same number of training runs, split over three families, peak rates log-spaced
    // over [0.01, 3].
    let grid_runs = (mgd_runs.round() as usize).max(3);
    let per_family = grid_runs / 3;
    let families: [Family; 3] = [("constant", schedules::constant), ("step", schedules::step), ("cosine", schedules::cosine)];
    let mut grid = Vec::new();
    let bar = plot::progress((3 * per_family) as u64, "grid", o.json);
    for (name, f) in families {
        for i in 0..per_family {
            let peak = 0.01 * 300f64.powf(if per_family > 1 { i as f64 / (per_family - 1) as f64 } else { 0.5 });
            let run = fixed(f(peak, steps));
            // A diverging rate is a grid point with infinite loss, not the end of the search.
            let (val, test) = match metagrad::replay::train(&run, &[]) {
                Ok(state) => (run.val(&state)?.0, run.test(&state)?.0),
                Err(metagrad::Error::NonFinite { .. }) => (f64::INFINITY, f64::INFINITY),
                Err(e) => return Err(e),
            };
            grid.push((name, peak, if val.is_nan() { f64::INFINITY } else { val }, test));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let best =
        grid.iter().filter(|g| g.2.is_finite()).min_by(|a, b| a.2.total_cmp(&b.2)).copied().unwrap_or(("none", 0.0, f64::NAN, f64::NAN));
    let best_fn = families.iter().find(|f| f.0 == best.0).map(|f| f.1).unwrap_or(schedules::constant);
    let best_schedule = best_fn(best.1, steps);

    let out = o.out_dir("lr_schedule_out")?;
    plot::csv(&out.join("lr_mgd.csv"), "iteration,validation_loss", losses.iter().enumerate().map(|(i, l)| format!("{i},{l}")))?;
    plot::csv(
        &out.join("lr_grid.csv"),
        "family,peak_lr,validation_loss,test_loss",
        grid.iter().map(|g| format!("{},{},{},{}", g.0, g.1, g.2, g.3)),
    )?;
    plot::csv(
        &out.join("lr_schedules.csv"),
        "step,flat,mgd,best_grid",
        (0..steps).map(|t| format!("{t},{},{},{}", args.lr0, learned[t], best_schedule[t])),
    )?;
    let steps_axis = |v: &[f64]| v.iter().enumerate().map(|(t, &y)| (t as f64, y)).collect::<Vec<_>>();
    let grid_line = vec![(0.0, best.2), ((losses.len() - 1) as f64, best.2)];
    plot::svg(
        &out.join("lr_schedule.svg"),
        &[
            Panel::lines(
                "validation loss: MGD iterations vs best grid point",
                "MGD iteration",
                "validation cross-entropy (nats)",
                vec![Series::indexed("MGD", &losses), Series::new(format!("best grid ({} {:.3})", best.0, best.1), grid_line)],
            ),
            Panel::lines(
                "learning-rate schedules",
                "SGD step",
                "learning rate",
                vec![
                    Series::new("flat start", steps_axis(&vec![args.lr0; steps])),
                    Series::new("MGD", steps_axis(&learned)),
                    Series::new(format!("best grid ({})", best.0), steps_axis(&best_schedule)),
                ],
            ),
        ],
    )?;
    let s = Summary {
        mgd_val_loss,
        mgd_test_loss,
        best_grid_val_loss: best.2,
        best_grid_test_loss: best.3,
        best_grid: format!("{} {:.4}", best.0, best.1),
        grid_runs: 3 * per_family,
        mgd_runs,
        mgd_losses: losses,
        seconds: t_start.elapsed().as_secs_f64(),
    };
    o.say(&format!(
        "MGD: validation loss {:.4} (test {:.4}) for {:.1} training runs of compute; grid of {} runs: best {} validation {:.4} (test {:.4}); {:.0} s; wrote {}/lr_mgd.csv, lr_grid.csv, lr_schedules.csv, lr_schedule.svg",
        s.mgd_val_loss,
        s.mgd_test_loss,
        s.mgd_runs,
        s.grid_runs,
        s.best_grid,
        s.best_grid_val_loss,
        s.best_grid_test_loss,
        s.seconds,
        out.display()
    ));
    Ok(s)
}

fn main() -> Result<()> {
    metagrad::use_calling_thread()?;
    let args = Args::parse();
    let s = run(&args)?;
    if args.opts.json {
        let j = serde_json::json!({
            "mgd_val_loss": s.mgd_val_loss, "best_grid_val_loss": s.best_grid_val_loss,
            "mgd_test_loss": s.mgd_test_loss, "best_grid_test_loss": s.best_grid_test_loss,
            "best_grid": s.best_grid, "grid_runs": s.grid_runs, "mgd_runs": s.mgd_runs,
            "mgd_val_losses": s.mgd_losses, "seconds": s.seconds,
            "machine": common::Machine::measure().line(),
        });
        println!("{j}");
    }
    Ok(())
}
