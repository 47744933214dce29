//! Metasmoothness (paper definition 2, figure 4) of the MNIST CNN over configurations: width, batch
//! norm before or after the activation, and the output scale. For each configuration: train once for
//! its test accuracy, and measure the empirical (h, v)-metasmoothness `replay::metasmoothness` at
//! z = 0 where z perturbs the pixels of `--images` training images and v ~ N(0, 1) (averaged over
//! `--directions` directions) — three trainings per direction, no metagradient needed. Then, as the
//! paper's figure 4 (right) asks whether smoothness predicts the metagradient's usefulness, one exact
//! REPLAY metagradient g of the validation loss in z and one ascent step z₁ = s·g/‖g‖∞: the realized
//! rise of the loss over the rise g·z₁ that g predicts (1: the metagradient describes the loss over
//! the step). Two scatter plots (smoothness against accuracy, and against that ratio) and a CSV table
//! come out.
//!
//! ```sh
//! cargo run --release --example metasmoothness             # a few minutes on 2 CPU cores
//! cargo run --release --example metasmoothness -- --quick  # about a minute
//! cargo run --release --example metasmoothness -- --json   # one summary object on stdout
//! ```
//! Writes `OUT/metasmoothness.csv` and `OUT/metasmoothness.svg`.

mod common;

use clap::Parser;
use common::mnist_cnn::{schedules, Arch, BnPlace, Cnn, Digits, Lr};
use common::plot::{self, Mark, Panel, Series};
use metagrad::replay::{evaluate, metagradient, metasmoothness, train, ScheduleKind};
use metagrad::{DType, Result, Tensor};
use std::time::Instant;

/// Measure the metasmoothness and accuracy of MNIST CNN configurations.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// --quick, --json, --out.
    #[command(flatten)]
    pub opts: common::mgd::Opts,
    /// cpu, cuda or auto (CUDA device 0 when one opens, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Training digits (default 1024; 512 with --quick).
    #[arg(long)]
    pub train: Option<usize>,
    /// SGD steps per training run (default 240; 120 with --quick).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Random directions v per configuration (default 3; 1 with --quick).
    #[arg(long)]
    pub directions: Option<u64>,
    /// Training images whose pixels z perturbs.
    #[arg(long, default_value_t = 100)]
    pub images: usize,
    /// The finite-difference step h.
    #[arg(long, default_value_t = 0.5)]
    pub h: f64,
    /// The metagradient ascent step (∞-norm, in pixel units) of the utility column.
    #[arg(long, default_value_t = 0.5)]
    pub ascent: f64,
}

/// One configuration's row.
#[derive(Debug, Clone)]
pub struct Row {
    /// Convolution channels.
    pub width: usize,
    /// Batch norm placement.
    pub bn: BnPlace,
    /// Logit scale.
    pub out_scale: f64,
    /// Mean metasmoothness over the directions.
    pub smoothness: f64,
    /// Their sample standard deviation.
    pub smoothness_sd: f64,
    /// Test accuracy at z = 0.
    pub accuracy: f64,
    /// Metagradient utility (after the paper's figure 4, right): after one metagradient ascent step
    /// z₁ = s·g/‖g‖∞ (s = `--ascent`), the realized rise of the validation loss over the rise the
    /// metagradient predicts, (φ(z₁) − φ(0)) / (g·z₁): 1 where the metagradient describes the loss
    /// over the step, near 0 or negative where it does not.
    pub prediction_ratio: f64,
}

impl Row {
    /// "w8 bn-before ×0.2".
    pub fn name(&self) -> String {
        format!("w{} bn-{} x{}", self.width, if self.bn == BnPlace::Before { "before" } else { "after" }, self.out_scale)
    }
}

/// The table.
pub fn run(args: &Args) -> Result<Vec<Row>> {
    let t0 = Instant::now();
    let device = common::device(&args.device)?;
    let o = &args.opts;
    let (n, steps, dirs) = (o.size(args.train, 1024, 512), o.size(args.steps, 240, 120), o.size(args.directions, 3, 1).max(1));
    let digits = Digits::load(n, 256, 2000, device)?;
    let m = args.images.clamp(1, n);
    o.say(&format!(
        "metasmoothness at z = 0 (pixels of {m} of {n} training digits), h = {}, {dirs} direction(s), T = {steps}, device {device}",
        args.h
    ));
    let mut configs = Vec::new();
    for width in [4, 16] {
        for bn in [BnPlace::After, BnPlace::Before] {
            for out_scale in [1.0, 0.2] {
                configs.push(Arch { width, bn, out_scale });
            }
        }
    }
    let bar = plot::progress((configs.len() as u64) * (3 * dirs + 2), "trainings", o.json);
    let mut rows = Vec::new();
    for arch in configs {
        let mut cnn = Cnn::new(&digits, arch, steps, 64, 0, Lr::Fixed(schedules::cosine(0.1, steps)));
        cnn.perturbed = m;
        let zero = vec![Tensor::zeros([m, 1, 28, 28], DType::F32).to_device(device)?];
        // θ₀ = A(0) once: its accuracy, and the first of metasmoothness' three trainings for every
        // direction (A is deterministic, so a retraining would give the same bits).
        let theta0: Vec<Tensor> = train(&cnn, &zero)?.into_iter().take(Arch::PARAMS).collect();
        let accuracy = cnn.test(&theta0)?.1;
        let mut s = Vec::new();
        for d in 0..dirs {
            let v = vec![Tensor::randn([m, 1, 28, 28], DType::F32, 1000 + d).to_device(device)?];
            let a = |z: &[Tensor]| -> Result<Vec<Tensor>> {
                bar.inc(1);
                if z.iter().zip(&zero).all(|(a, b)| a.bit_eq(b)) {
                    return Ok(theta0.clone());
                }
                Ok(train(&cnn, z)?.into_iter().take(Arch::PARAMS).collect())
            };
            s.push(metasmoothness(a, &zero, &v, args.h)?);
        }
        let (smoothness, smoothness_sd) = common::mean_sd(&s);
        // One exact metagradient (REPLAY) of the validation loss in z, and one ascent step along it.
        let mg = metagradient(&cnn, &zero, ScheduleKind::KAry { k: 4 })?;
        let g = mg.grads[0].to_vec_f64();
        let gmax = g.iter().fold(1e-30f64, |a, v| a.max(v.abs()));
        let z1: Vec<f32> = g.iter().map(|v| (args.ascent * v / gmax) as f32).collect();
        let phi1 = evaluate(&cnn, &[Tensor::from_vec(z1, [m, 1, 28, 28])?.to_device(device)?])?;
        let predicted: f64 = g.iter().map(|v| args.ascent * v * v / gmax).sum();
        let prediction_ratio = (phi1 - mg.phi) / predicted;
        bar.inc(2);
        let row = Row { width: arch.width, bn: arch.bn, out_scale: arch.out_scale, smoothness, smoothness_sd, accuracy, prediction_ratio };
        bar.suspend(|| {
            o.say(&format!(
                "{:<22} metasmoothness {smoothness:.3} ± {smoothness_sd:.3}   test accuracy {:.2}%   realized/predicted loss rise {:.3} after one ascent step",
                row.name(),
                100.0 * accuracy,
                prediction_ratio
            ))
        });
        rows.push(row);
    }
    bar.finish_and_clear();

    let out = o.out_dir("metasmoothness_out")?;
    plot::csv(
        &out.join("metasmoothness.csv"),
        "width,batch_norm,out_scale,metasmoothness,metasmoothness_sd,test_accuracy,prediction_ratio",
        rows.iter().map(|r| {
            format!(
                "{},{},{},{},{},{},{}",
                r.width,
                if r.bn == BnPlace::Before { "before" } else { "after" },
                r.out_scale,
                r.smoothness,
                r.smoothness_sd,
                r.accuracy,
                r.prediction_ratio
            )
        }),
    )?;
    // Two scatter panels over the same configurations: smoothness against accuracy (figure 4, left)
    // and against the metagradient's utility (figure 4, right).
    let scatter = |title: &'static str, y_label: &'static str, y: fn(&Row) -> f64| -> Panel<'static> {
        let mut panel = Panel::lines(title, "empirical metasmoothness at z = 0", y_label, Vec::new());
        panel.mark = Mark::Points;
        for bn in [BnPlace::After, BnPlace::Before] {
            let pts = rows.iter().filter(|r| r.bn == bn).map(|r| (r.smoothness, y(r))).collect();
            panel.series.push(Series::new(if bn == BnPlace::Before { "batch norm before GELU" } else { "batch norm after GELU" }, pts));
        }
        panel.annotations = rows.iter().map(|r| (r.smoothness, y(r), format!(" w{} x{}", r.width, r.out_scale))).collect();
        panel
    };
    plot::svg(
        &out.join("metasmoothness.svg"),
        &[
            scatter("metasmoothness (definition 2) against test accuracy", "test accuracy (fraction)", |r| r.accuracy),
            scatter("metasmoothness against metagradient utility", "realized / predicted loss rise, one ascent step", |r| {
                r.prediction_ratio
            }),
        ],
    )?;
    o.say(&format!(
        "{} configurations in {:.0} s; wrote {}/metasmoothness.csv, metasmoothness.svg",
        rows.len(),
        t0.elapsed().as_secs_f64(),
        out.display()
    ));
    Ok(rows)
}

fn main() -> Result<()> {
    metagrad::use_calling_thread()?;
    let args = Args::parse();
    let rows = run(&args)?;
    if args.opts.json {
        let table: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "width": r.width, "batch_norm": if r.bn == BnPlace::Before { "before" } else { "after" },
                    "out_scale": r.out_scale, "metasmoothness": r.smoothness, "metasmoothness_sd": r.smoothness_sd,
                    "test_accuracy": r.accuracy, "prediction_ratio": r.prediction_ratio,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "configurations": table, "machine": common::Machine::measure().line() }));
    }
    Ok(())
}
