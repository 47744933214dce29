//! An accuracy-degrading data poisoning attack by metagradient ascent (paper §4.3), in miniature on
//! MNIST: perturb the pixels of a fixed ε = 3% of the training images (each pixel kept in [0, 1])
//! to *raise* the validation loss of the model trained on them, with exact metagradients of the
//! whole training run from REPLAY; then train from scratch on the poisoned set and report the clean
//! test accuracy before and after, against baselines with the same budget (the same images replaced
//! by uniform noise, or given a wrong label).
//!
//! ```sh
//! cargo run --release --example poisoning             # a few minutes on 2 CPU cores
//! cargo run --release --example poisoning -- --quick  # about a minute
//! cargo run --release --example poisoning -- --json   # one summary object on stdout
//! ```
//! Writes `OUT/poisoning.csv` (validation loss per MGD iteration) and `OUT/poisoning.svg` (that curve
//! and the test accuracies), `OUT/poisons.csv` (the poisoned pixels). The "from scratch" trainings
//! use initialization and batch-order seeds the attack never saw (`--eval-seeds`), so the reported
//! drop is a property of the poisoned data, not of one training run.

mod common;

use clap::Parser;
use common::mnist_cnn::{permutation, schedules, Arch, Cnn, Digits, Lr};
use common::plot::{self, Mark, Panel, Series};
use metagrad::replay::{evaluate, metagradient, train, ScheduleKind};
use metagrad::{Result, Tensor};
use std::time::Instant;

/// Poison 3% of MNIST's training images by metagradient ascent on the validation loss.
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
    /// MGD iterations (default 16; 5 with --quick).
    #[arg(long)]
    pub iters: Option<usize>,
    /// The poisoned fraction of the training set.
    #[arg(long, default_value_t = 0.03)]
    pub eps: f64,
    /// Fresh training seeds for the from-scratch evaluations (1..=N; the attack never sees them).
    #[arg(long, default_value_t = 3)]
    pub eval_seeds: u64,
    /// Training seeds the attack averages its validation loss over (0, 1000, 2000, ...).
    #[arg(long, default_value_t = 1)]
    pub attack_seeds: u64,
}

/// The measured outcome.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Mean test accuracy of models trained on the clean set.
    pub clean_acc: f64,
    /// Mean test accuracy of models trained on the MGD-poisoned set.
    pub poisoned_acc: f64,
    /// Test accuracy of the training run the attack optimized against (seed 0), poisoned.
    pub attack_seed_acc: f64,
    /// The lower of the two baselines' mean test accuracies.
    pub baseline_acc: f64,
    /// Uniform-noise images in the poisoned slots.
    pub noise_acc: f64,
    /// Wrong labels on the poisoned images.
    pub label_flip_acc: f64,
    /// Validation loss (φ) per MGD iteration, starting from the clean set.
    pub val_losses: Vec<f64>,
    /// Poisoned images.
    pub poisoned: usize,
    /// Training images.
    pub n_train: usize,
    /// Seconds in all.
    pub seconds: f64,
}

const BATCH: usize = 64;

/// Mean test accuracy over training seeds 1..=`seeds` with training images `x` and labels `y`.
fn from_scratch(base: &Cnn<'_>, x: &Tensor, y: &[usize], seeds: u64, bar: &indicatif::ProgressBar) -> Result<f64> {
    let mut acc = 0.0;
    for seed in 1..=seeds {
        let mut run = Cnn::new(base.digits, base.arch, base.steps, base.batch, seed, base.lr.clone());
        run.x_train = x.clone();
        run.y_train = y.to_vec();
        acc += run.test(&train(&run, &[])?)?.1;
        bar.inc(1);
    }
    Ok(acc / seeds as f64)
}

/// The attack and its evaluation.
pub fn run(args: &Args) -> Result<Summary> {
    let t0 = Instant::now();
    let device = common::device(&args.device)?;
    let o = &args.opts;
    let (n, steps, iters) = (o.size(args.train, 2048, 1024), o.size(args.steps, 320, 160), o.size(args.iters, 16, 5));
    if !(args.eps > 0.0 && args.eps <= 0.5) {
        return Err(metagrad::Error::Invalid { op: "poisoning", msg: format!("--eps {} must be in (0, 0.5]", args.eps) });
    }
    let digits = Digits::load(n, 256, 2000, device)?;
    let m = ((args.eps * n as f64).round() as usize).clamp(1, n);
    let attacked: Vec<Cnn<'_>> = (0..args.attack_seeds.max(1))
        .map(|s| {
            let mut c = Cnn::new(&digits, Arch::SMOOTH, steps, BATCH, 1000 * s, Lr::Fixed(schedules::cosine(0.1, steps)));
            c.perturbed = m;
            c
        })
        .collect();
    let cnn = &attacked[0];
    let x0 = cnn.x_train.narrow(0, n - m, m)?.to_vec_f64();
    o.say(&format!(
        "poisoning {m} of {n} training digits ({:.1}%), T = {steps} SGD steps of batch {BATCH}, {iters} MGD iterations, device {device}",
        100.0 * m as f64 / n as f64
    ));

    // Metagradient ascent on φ over the perturbation δ, keeping x0 + δ in [0, 1].
    let shape = [m, 1, 28, 28];
    let to_z = |d: &[f64]| -> Result<Vec<Tensor>> { Ok(vec![Tensor::from_vec(d.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape)?]) };
    // φ of the attack: the validation loss averaged over the attacked training seeds.
    let phi_of =
        |d: &[f64]| -> Result<f64> { Ok(attacked.iter().map(|c| evaluate(c, &to_z(d)?)).sum::<Result<f64>>()? / attacked.len() as f64) };
    let grad = |d: &[f64]| -> Result<Vec<f64>> {
        let mut g = vec![0.0f64; d.len()];
        for c in &attacked {
            let mg = metagradient(c, &to_z(d)?, ScheduleKind::KAry { k: 4 })?;
            g.iter_mut().zip(mg.grads[0].to_vec_f64()).for_each(|(a, b)| *a += b);
        }
        Ok(g)
    };
    let propose = |d: &[f64], g: &[f64], s: f64| -> Vec<f64> {
        d.iter().zip(g).zip(&x0).map(|((d, g), x)| (x + d + s * g).clamp(0.0, 1.0) - x).collect()
    };
    let zero = vec![0.0f64; x0.len()];
    let phi0 = phi_of(&zero)?;
    let (delta, losses) = common::mgd::descend(o, "validation loss", iters, true, zero, phi0, grad, propose, phi_of)?;

    // The poisoned, noised and label-flipped training sets, each trained from scratch.
    let x_clean = digits.x_train.clone();
    let head = x_clean.narrow(0, 0, n - m)?;
    let poisons: Vec<f32> = x0.iter().zip(&delta).map(|(x, d)| (x + d) as f32).collect();
    let x_poison = Tensor::concat(&[&head, &Tensor::from_vec(poisons.clone(), shape)?.to_device(device)?], 0)?;
    let noise: Vec<f32> = (0..x0.len()).map(|i| common::mgdata::uniform(77, i as u64) as f32).collect();
    let x_noise = Tensor::concat(&[&head, &Tensor::from_vec(noise, shape)?.to_device(device)?], 0)?;
    let flip = permutation(9, 5);
    let y_flip: Vec<usize> =
        digits.y_train.iter().enumerate().map(|(i, &l)| if i >= n - m { (l + 1 + flip[i % 9]) % 10 } else { l }).collect();
    let seeds = args.eval_seeds.max(1);
    let bar = plot::progress(4 * seeds, "training from scratch", o.json);
    let clean_acc = from_scratch(cnn, &x_clean, &digits.y_train, seeds, &bar)?;
    let poisoned_acc = from_scratch(cnn, &x_poison, &digits.y_train, seeds, &bar)?;
    let noise_acc = from_scratch(cnn, &x_noise, &digits.y_train, seeds, &bar)?;
    let label_flip_acc = from_scratch(cnn, &x_clean, &y_flip, seeds, &bar)?;
    bar.finish_and_clear();
    let baseline_acc = noise_acc.min(label_flip_acc);
    let attack_seed_acc = cnn.test(&train(cnn, &to_z(&delta)?)?)?.1;

    let out = o.out_dir("poisoning_out")?;
    plot::csv(&out.join("poisoning.csv"), "iteration,validation_loss", losses.iter().enumerate().map(|(i, l)| format!("{i},{l}")))?;
    plot::csv(
        &out.join("poisons.csv"),
        "image,pixel,clean,poisoned",
        poisons.iter().enumerate().map(|(i, p)| format!("{},{},{},{p}", i / 784, i % 784, x0[i])),
    )?;
    let accs = [("clean", clean_acc), ("noise", noise_acc), ("label flip", label_flip_acc), ("MGD poison", poisoned_acc)];
    let mut bars = Panel::lines(
        "test accuracy after training from scratch",
        "training set (0 clean, 1 noise, 2 flip, 3 MGD)",
        "test accuracy (fraction)",
        Vec::new(),
    );
    bars.mark = Mark::Points;
    bars.series = accs.iter().enumerate().map(|(i, (name, a))| Series::new(*name, vec![(i as f64, *a)])).collect();
    bars.annotations = accs.iter().enumerate().map(|(i, (_, a))| (i as f64, *a, format!(" {:.1}%", 100.0 * a))).collect();
    plot::svg(
        &out.join("poisoning.svg"),
        &[
            Panel::lines(
                "validation loss during the attack (MGD ascent)",
                "MGD iteration",
                "validation cross-entropy (nats)",
                vec![Series::indexed("φ", &losses)],
            ),
            bars,
        ],
    )?;
    let s = Summary {
        clean_acc,
        poisoned_acc,
        attack_seed_acc,
        baseline_acc,
        noise_acc,
        label_flip_acc,
        val_losses: losses,
        poisoned: m,
        n_train: n,
        seconds: t0.elapsed().as_secs_f64(),
    };
    o.say(&format!(
        "test accuracy (mean of {seeds} fresh training seeds): clean {:.2}%, MGD-poisoned {:.2}% (drop {:.2} points; {:.2}% for the training seed attacked), noise {:.2}%, label flip {:.2}% (best baseline drop {:.2} points); {:.0} s; wrote {}/poisoning.csv, poisons.csv, poisoning.svg",
        100.0 * s.clean_acc,
        100.0 * s.poisoned_acc,
        100.0 * (s.clean_acc - s.poisoned_acc),
        100.0 * s.attack_seed_acc,
        100.0 * s.noise_acc,
        100.0 * s.label_flip_acc,
        100.0 * (s.clean_acc - s.baseline_acc),
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
            "clean_acc": s.clean_acc, "poisoned_acc": s.poisoned_acc, "baseline_acc": s.baseline_acc,
            "attack_seed_acc": s.attack_seed_acc,
            "noise_acc": s.noise_acc, "label_flip_acc": s.label_flip_acc, "poisoned": s.poisoned,
            "n_train": s.n_train, "val_losses": s.val_losses, "seconds": s.seconds,
            "machine": common::Machine::measure().line(),
        });
        println!("{j}");
    }
    Ok(())
}
