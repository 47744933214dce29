//! Data selection for a target task by metagradient descent (paper §4.1–4.2), in miniature on the
//! GPT of `examples/gpt`: the training pool mixes passages from two sources — Shakespeare, and
//! Shakespeare read backwards (the same characters and frequencies, a different language) — and the
//! target is held-out forward Shakespeare. MGD learns one weight per pool passage from exact REPLAY
//! metagradients of the target loss; then a model is trained from scratch on the top-weighted half
//! and its target loss compared with models trained on random halves (mean ± sd over seeds).
//!
//! ```sh
//! cargo run --release --example data_selection             # a few minutes on 2 CPU cores
//! cargo run --release --example data_selection -- --quick  # about a minute
//! cargo run --release --example data_selection -- --json   # one summary object on stdout
//! ```
//! Writes `OUT/selection_mgd.csv` (target loss per MGD iteration), `OUT/selection_weights.csv` (each
//! passage's source and learned weight), `OUT/selection_halves.csv` (the target loss of each
//! half) and `OUT/data_selection.svg`.

mod common;
#[path = "gpt/model.rs"]
mod model;

use clap::Parser;
use common::mnist_cnn::permutation;
use common::plot::{self, Mark, Panel, Series};
use metagrad::replay::{evaluate, metagradient, ScheduleKind};
use metagrad::{DType, Result, Tensor};
use model::{Config, Gpt, Hyper, Run, Vocab};
use std::time::Instant;

/// Select half of a mixed training pool for a target task by MGD on per-passage weights.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// --quick, --json, --out.
    #[command(flatten)]
    pub opts: common::mgd::Opts,
    /// Pool passages (half from each source; default 1024; 512 with --quick).
    #[arg(long)]
    pub pool: Option<usize>,
    /// AdamW steps per training run (default 300; 150 with --quick).
    #[arg(long)]
    pub steps: Option<usize>,
    /// MGD iterations (default 6; 2 with --quick).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Random halves to compare with (at least 5 for the mean ± sd).
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Model width.
    #[arg(long, default_value_t = 32)]
    pub d: usize,
    /// Context (passage length − 1).
    #[arg(long, default_value_t = 32)]
    pub ctx: usize,
}

/// The measured outcome.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Target loss of a model trained on the MGD-selected half.
    pub mgd_target_loss: f64,
    /// Mean target loss over random halves.
    pub random_target_loss_mean: f64,
    /// Their sample standard deviation.
    pub random_target_loss_sd: f64,
    /// Target loss of a model trained on the forward passages only (the oracle half).
    pub oracle_target_loss: f64,
    /// Fraction of the selected half from the target's source.
    pub selected_from_target_source: f64,
    /// Target loss (weighted training) per MGD iteration.
    pub mgd_losses: Vec<f64>,
    /// Seconds in all.
    pub seconds: f64,
}

/// MGD on the weights, then the from-scratch comparison.
pub fn run(args: &Args) -> Result<Summary> {
    let t0 = Instant::now();
    let o = &args.opts;
    let (n_pool, steps, iters) = (o.size(args.pool, 1024, 512) & !1, o.size(args.steps, 300, 150), o.size(args.iters, 6, 2));
    let ctx = args.ctx;
    if n_pool < 4 || ctx == 0 {
        return Err(metagrad::Error::Invalid {
            op: "data_selection",
            msg: format!("--pool {n_pool} must be at least 4 and --ctx {ctx} at least 1"),
        });
    }

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/shakespeare/shakespeare8.txt");
    let bytes = std::fs::read(path).map_err(|e| metagrad::Error::Invalid { op: "data_selection", msg: format!("{path}: {e}") })?;
    let vocab = Vocab::of(&bytes);
    let ids = vocab.encode(&bytes)?;
    let (text, held_out) = ids.split_at(ids.len() * 9 / 10);
    let target = &held_out[..held_out.len().min(20_000)];
    // The pool: n_pool passages of ctx + 1 characters at evenly spaced places in the training text,
    // every other one (in a seeded order) reversed. `source[i]` is true for a forward passage.
    let w = ctx + 1;
    let stride = (text.len() - w) / n_pool;
    let flip = permutation(n_pool, 11);
    let mut pool_text = Vec::with_capacity(n_pool * w);
    let mut source = vec![false; n_pool];
    for i in 0..n_pool {
        let p = &text[i * stride..i * stride + w];
        source[i] = flip[i].is_multiple_of(2);
        if source[i] {
            pool_text.extend_from_slice(p);
        } else {
            pool_text.extend(p.iter().rev());
        }
    }
    let gpt = Gpt::new(Config { d: args.d, heads: 4, blocks: 2, ctx, dtype: DType::F32, seed: 1 }, vocab.len())?;
    let hyper = Hyper { steps, batch: 16, lr: 3e-3, warmup: steps / 10, clip: 1.0, weight_decay: 0.01, seed: 2, t0: 0 };
    let starts: Vec<usize> = (0..n_pool).map(|i| i * w).collect();
    o.say(&format!(
        "data selection: {n_pool} passages of {w} characters (half Shakespeare, half Shakespeare reversed), target: held-out Shakespeare; GPT d {} ctx {ctx} ({} parameters), {steps} AdamW steps of batch 16, {iters} MGD iterations",
        args.d,
        gpt.n_params()
    ));

    // The weighted run over the whole pool; φ = target loss.
    let mut weighted = Run::new(&gpt, &gpt.params, hyper, &pool_text, target, 64, true)?;
    weighted.pool = Some(starts.clone());
    let z = |w: &[f64]| -> Result<Vec<Tensor>> { Ok(vec![Tensor::from_vec(w.iter().map(|&v| v as f32).collect::<Vec<_>>(), [n_pool])?]) };
    let ones = vec![1.0f64; n_pool];
    let phi0 = evaluate(&weighted, &z(&ones)?)?;
    let grad = |w: &[f64]| -> Result<Vec<f64>> { Ok(metagradient(&weighted, &z(w)?, ScheduleKind::KAry { k: 4 })?.grads[0].to_vec_f64()) };
    let propose = |w: &[f64], g: &[f64], s: f64| -> Vec<f64> { w.iter().zip(g).map(|(w, g)| (w + s * g).clamp(0.0, 4.0)).collect() };
    let (wts, losses) = common::mgd::descend(o, "target loss", iters, false, ones, phi0, grad, propose, |w| evaluate(&weighted, &z(w)?))?;

    // Train from scratch (unweighted) on halves of the pool: MGD's top half, random halves, and the
    // forward half (what a perfect selector would pick).
    let half = n_pool / 2;
    let target_loss = |subset: &[usize]| -> Result<f64> {
        let mut r = Run::new(&gpt, &gpt.params, hyper, &pool_text, target, 64, false)?;
        r.pool = Some(subset.iter().map(|&i| starts[i]).collect());
        evaluate(&r, &[])
    };
    let mut by_weight: Vec<usize> = (0..n_pool).collect();
    by_weight.sort_by(|&a, &b| wts[b].total_cmp(&wts[a]).then(a.cmp(&b)));
    let top = &by_weight[..half];
    let selected_from_target_source = top.iter().filter(|&&i| source[i]).count() as f64 / half as f64;
    let seeds = args.seeds.max(2);
    let bar = plot::progress(seeds + 2, "training from scratch", o.json);
    let mgd_target_loss = target_loss(top)?;
    bar.inc(1);
    let forward: Vec<usize> = (0..n_pool).filter(|&i| source[i]).collect();
    let oracle_target_loss = target_loss(&forward)?;
    bar.inc(1);
    let mut random = Vec::new();
    for s in 0..seeds {
        random.push(target_loss(&permutation(n_pool, 100 + s)[..half])?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (random_target_loss_mean, random_target_loss_sd) = common::mean_sd(&random);

    let out = o.out_dir("data_selection_out")?;
    plot::csv(&out.join("selection_mgd.csv"), "iteration,target_loss", losses.iter().enumerate().map(|(i, l)| format!("{i},{l}")))?;
    plot::csv(
        &out.join("selection_weights.csv"),
        "passage,source,weight,selected",
        (0..n_pool).map(|i| format!("{i},{},{},{}", if source[i] { "forward" } else { "reversed" }, wts[i], top.contains(&i))),
    )?;
    let halves = std::iter::once(format!("mgd,{mgd_target_loss}"))
        .chain(std::iter::once(format!("forward_only,{oracle_target_loss}")))
        .chain(random.iter().enumerate().map(|(s, l)| format!("random_{s},{l}")));
    plot::csv(&out.join("selection_halves.csv"), "half,target_loss", halves)?;
    let mut hist = Panel::lines("learned weight of each pool passage", "passage index", "data weight", Vec::new());
    hist.mark = Mark::Points;
    hist.series = vec![
        Series::new("Shakespeare (target source)", (0..n_pool).filter(|&i| source[i]).map(|i| (i as f64, wts[i])).collect()),
        Series::new("Shakespeare reversed", (0..n_pool).filter(|&i| !source[i]).map(|i| (i as f64, wts[i])).collect()),
    ];
    let mut cmp = Panel::lines(
        "target loss after training from scratch on a half",
        "half (0 MGD, 1 forward only, 2.. random)",
        "target cross-entropy (nats/char)",
        Vec::new(),
    );
    cmp.mark = Mark::Points;
    cmp.series = vec![
        Series::new("MGD top half", vec![(0.0, mgd_target_loss)]),
        Series::new("forward passages only", vec![(1.0, oracle_target_loss)]),
        Series::new("random halves", random.iter().enumerate().map(|(s, &l)| (2.0 + s as f64, l)).collect()),
    ];
    plot::svg(
        &out.join("data_selection.svg"),
        &[
            Panel::lines(
                "target loss of the weighted training (MGD)",
                "MGD iteration",
                "target cross-entropy (nats/char)",
                vec![Series::indexed("MGD", &losses)],
            ),
            hist,
            cmp,
        ],
    )?;
    let s = Summary {
        mgd_target_loss,
        random_target_loss_mean,
        random_target_loss_sd,
        oracle_target_loss,
        selected_from_target_source,
        mgd_losses: losses,
        seconds: t0.elapsed().as_secs_f64(),
    };
    o.say(&format!(
        "target loss after training on half the pool: MGD-selected {:.4} ({:.0}% of it Shakespeare forward), random halves {:.4} ± {:.4} (n = {seeds}), forward only {:.4}; {:.0} s; wrote {}/selection_mgd.csv, selection_weights.csv, selection_halves.csv, data_selection.svg",
        s.mgd_target_loss,
        100.0 * s.selected_from_target_source,
        s.random_target_loss_mean,
        s.random_target_loss_sd,
        s.oracle_target_loss,
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
            "mgd_target_loss": s.mgd_target_loss, "random_target_loss_mean": s.random_target_loss_mean,
            "random_target_loss_sd": s.random_target_loss_sd, "oracle_target_loss": s.oracle_target_loss,
            "selected_from_target_source": s.selected_from_target_source, "mgd_target_losses": s.mgd_losses,
            "seconds": s.seconds, "machine": common::Machine::measure().line(),
        });
        println!("{j}");
    }
    Ok(())
}
