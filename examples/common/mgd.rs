//! The application examples' shared pieces: their common command-line options (`--quick`,
//! `--json`, `--out`), and the metagradient descent loop — one metagradient per iteration, then a
//! backtracking step on the ∞-norm-scaled metagradient that is accepted only if φ improves, so φ
//! improves at every iteration (the step grows ×1.5 after an accepted step and halves after a
//! rejected one; the loop stops when five halvings find no improvement).

use super::plot;
use metagrad::Result;
use std::path::PathBuf;

/// Options every application example takes.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// A reduced run of under a minute (fewer examples, steps and iterations).
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON summary object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Output directory for the CSV files and the plot [default: <example>_out].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl Opts {
    /// A progress line: stdout, or stderr under `--json` (stdout then carries only the summary).
    pub fn say(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }

    /// The output directory (`default` unless `--out` was given), created.
    pub fn out_dir(&self, default: &str) -> Result<PathBuf> {
        let dir = self.out.clone().unwrap_or_else(|| PathBuf::from(default));
        plot::out_dir(&dir)?;
        Ok(dir)
    }

    /// `full` normally, `quick` under `--quick`, unless `given`.
    pub fn size<T>(&self, given: Option<T>, full: T, quick: T) -> T {
        given.unwrap_or(if self.quick { quick } else { full })
    }
}

/// Metagradient descent (`ascend`: ascent) on a flat metaparameter vector for `iters` iterations
/// from `z` (where φ = `phi0`). `grad(z)` is the metagradient (or any preconditioned form of it);
/// `propose(z, g, s)` is the candidate for the step `s` along the scaled gradient `g` = grad/‖grad‖∞
/// (with any projection applied); `phi(z)` evaluates a candidate. Returns the final z and φ before
/// the first and after each iteration. `what` names φ in the progress lines.
#[allow(clippy::too_many_arguments)]
pub fn descend(
    opts: &Opts,
    what: &str,
    iters: usize,
    ascend: bool,
    mut z: Vec<f64>,
    phi0: f64,
    mut grad: impl FnMut(&[f64]) -> Result<Vec<f64>>,
    propose: impl Fn(&[f64], &[f64], f64) -> Vec<f64>,
    mut phi: impl FnMut(&[f64]) -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut losses = vec![phi0];
    let mut cur = phi0;
    let mut step = 0.5f64;
    let bar = plot::progress(iters as u64, "MGD", opts.json);
    for it in 0..iters {
        bar.set_message(format!("{what} {cur:.4}"));
        let mut g = grad(&z)?;
        let gmax = g.iter().fold(1e-30f64, |a, v| a.max(v.abs()));
        g.iter_mut().for_each(|v| *v /= gmax);
        let mut accepted = false;
        for _ in 0..5 {
            let cand = propose(&z, &g, if ascend { step } else { -step });
            let p = phi(&cand)?;
            if (ascend && p > cur) || (!ascend && p < cur) {
                (z, cur, accepted) = (cand, p, true);
                step *= 1.5;
                break;
            }
            step *= 0.5;
        }
        losses.push(cur);
        bar.inc(1);
        let note = if accepted { "" } else { " (no improving step found: stopping)" };
        bar.suspend(|| opts.say(&format!("MGD {}/{iters}: {what} {cur:.4}{note}", it + 1)));
        if !accepted {
            break;
        }
    }
    bar.finish_and_clear();
    Ok((z, losses))
}
