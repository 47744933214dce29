//! A character-level GPT trained on Shakespeare, built from `metagrad::nn`'s public layers, with an
//! exact REPLAY metagradient checked against finite differences.
//!
//! ```text
//! cargo run --release --example gpt                       # 200 steps, batch 16, on data/shakespeare
//! cargo run --release --example gpt -- --steps 1000 --json
//! cargo run --release --example gpt -- --help
//! ```
//!
//! The text (`data/shakespeare/shakespeare8.txt`, 1,091,703 bytes of eight public-domain plays; see
//! its README) is split into training (the first 90%) and validation (the last 10%) characters. The
//! model: byte-level vocabulary (76 characters), token and position embeddings, `--blocks` pre-norm
//! transformer blocks (`nn::Block`: causal multi-head attention, GELU MLP of width 4d) of width `--d`
//! with `--heads` heads, a final layer norm and the tied output head; context `--ctx`. Training:
//! AdamW (`optim::Adam` with `decoupled: true`, β = (0.9, 0.95), weight decay 0.01), gradients clipped
//! to norm 1 (`nn::clip_grad_norm`), learning rate `nn::warmup_cosine` (warmup 10% of the steps, down
//! to a tenth), batches of `--batch` windows drawn from a counter-based generator keyed by the step
//! index (so each step is a pure function of its index, as REPLAY needs). It is a
//! `replay::Training`, run by `replay::train_with`.
//!
//! It prints the training loss every `--eval-every` steps with the validation loss (mean over 64 fixed,
//! evenly spaced validation windows), writes `OUT/losses.csv` (`step,train_loss,val_loss`, the
//! validation column empty between evaluations), prints a sample of `--sample` characters continuing
//! `--prompt` (temperature `--temperature`, 0 for greedy), writes a safetensors checkpoint (`--save`),
//! reloads it and checks the reloaded parameters give bitwise the same validation loss.
//!
//! Then the metagradient: the trained state (parameters and AdamW moments) converted to f64 trains
//! `--meta-steps` more AdamW steps on batches of `--meta-batch` sequences, each training sequence's
//! loss scaled by its own data weight w (all 1). REPLAY (`replay::metagradient`) gives the exact ∂(validation loss after those
//! steps)/∂w; three of its components (the first, the last and the largest) are checked against
//! central finite differences of `replay::evaluate` (step 1e-4), printed with their relative errors.
//! `--json` prints one JSON summary object on stdout (progress then goes to stderr).

#[path = "../common/mod.rs"]
mod common;
mod model;

use metagrad::replay::{train_with, StepInfo};
use metagrad::{DType, Result};
use model::{Config, Gpt, Hyper, Run, Vocab};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Progress goes to stdout, or to stderr under `--json` (stdout then holds only the summary object).
macro_rules! say {
    ($json:expr, $($t:tt)*) => {
        if $json { eprintln!($($t)*) } else { println!($($t)*) }
    };
}

const HELP: &str = "\
gpt: a character-level GPT on metagrad::nn, trained with AdamW, with a REPLAY metagradient check.

USAGE: cargo run --release --example gpt -- [FLAGS]

  --data PATH         text to train on (default data/shakespeare/shakespeare8.txt)
  --steps N           training steps (default 200)
  --batch N           sequences per step (default 16)
  --ctx N             context length (default 64)
  --d N               width (default 64)
  --heads N           attention heads (default 4)
  --blocks N          transformer blocks (default 2)
  --lr X              peak learning rate (default 3e-3)
  --eval-every N      validation loss every N steps (default 25)
  --seed N            initialization, batch and sampling seed (default 1)
  --out DIR           output directory for losses.csv (default gpt_out)
  --save PATH         checkpoint (default OUT/gpt.safetensors)
  --prompt TEXT       generation prompt (default \"ROMEO.\\n\")
  --sample N          characters to generate (default 300)
  --temperature X     sampling temperature, 0 for greedy (default 0.8)
  --meta-steps N      steps of the metagradient run (default 6)
  --meta-batch N      sequences per step in the metagradient run (default 4)
  --json              print one JSON summary object on stdout (progress to stderr)
  --help              this text
";

struct Args {
    data: PathBuf,
    steps: usize,
    batch: usize,
    ctx: usize,
    d: usize,
    heads: usize,
    blocks: usize,
    lr: f64,
    eval_every: usize,
    seed: u64,
    out: PathBuf,
    save: Option<PathBuf>,
    prompt: String,
    sample: usize,
    temperature: f64,
    meta_steps: usize,
    meta_batch: usize,
    json: bool,
}

fn parse() -> std::result::Result<Option<Args>, String> {
    let mut a = Args {
        data: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare/shakespeare8.txt"),
        steps: 200,
        batch: 16,
        ctx: 64,
        d: 64,
        heads: 4,
        blocks: 2,
        lr: 3e-3,
        eval_every: 25,
        seed: 1,
        out: PathBuf::from("gpt_out"),
        save: None,
        prompt: "ROMEO.\n".into(),
        sample: 300,
        temperature: 0.8,
        meta_steps: 6,
        meta_batch: 4,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        if flag == "--json" {
            a.json = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value (see --help)"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        let real = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--data" => a.data = v.into(),
            "--steps" => a.steps = num(&v)?,
            "--batch" => a.batch = num(&v)?,
            "--ctx" => a.ctx = num(&v)?,
            "--d" => a.d = num(&v)?,
            "--heads" => a.heads = num(&v)?,
            "--blocks" => a.blocks = num(&v)?,
            "--lr" => a.lr = real(&v)?,
            "--eval-every" => a.eval_every = num(&v)?.max(1),
            "--seed" => a.seed = num(&v)? as u64,
            "--out" => a.out = v.into(),
            "--save" => a.save = Some(v.into()),
            "--prompt" => a.prompt = v,
            "--sample" => a.sample = num(&v)?,
            "--temperature" => a.temperature = real(&v)?,
            "--meta-steps" => a.meta_steps = num(&v)?,
            "--meta-batch" => a.meta_batch = num(&v)?,
            _ => return Err(format!("unknown flag {flag} (see --help)")),
        }
    }
    if a.steps < 2 || a.meta_steps < 2 {
        return Err("--steps and --meta-steps must be at least 2".into());
    }
    Ok(Some(a))
}

fn main() {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread().expect("rayon is not used before main");
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return;
        }
        Err(e) => {
            eprintln!("gpt: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("gpt: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read(&a.data).map_err(|e| {
        format!(
            "cannot read the training text {}: {e}\n(the bundled text is data/shakespeare/shakespeare8.txt; see data/shakespeare/README.md, or pass --data PATH)",
            a.data.display()
        )
    })?;
    let machine = common::Machine::measure();
    say!(a.json, "{}\n", machine.line());
    let vocab = Vocab::of(&text);
    let ids = vocab.encode(&text)?;
    let split = ids.len() * 9 / 10;
    let (train, val) = ids.split_at(split);
    let cfg = Config { d: a.d, heads: a.heads, blocks: a.blocks, ctx: a.ctx, dtype: DType::F32, seed: a.seed };
    let gpt = Gpt::new(cfg, vocab.len())?;
    let hyper =
        Hyper { steps: a.steps, batch: a.batch, lr: a.lr, warmup: a.steps / 10, clip: 1.0, weight_decay: 0.01, seed: a.seed, t0: 0 };
    let run = Run::new(&gpt, &gpt.params, hyper, train, val, 64, false)?;
    say!(
        a.json,
        "{}: {} characters ({} distinct), {} training, {} validation; GPT d={} heads={} blocks={} ctx={}, {} parameters; \
         AdamW {} steps, batch {}",
        a.data.display(),
        ids.len(),
        vocab.len(),
        train.len(),
        val.len(),
        a.d,
        a.heads,
        a.blocks,
        a.ctx,
        gpt.n_params(),
        a.steps,
        a.batch
    );

    // Training.
    std::fs::create_dir_all(&a.out)?;
    let mut csv = std::fs::File::create(a.out.join("losses.csv"))?;
    writeln!(csv, "step,train_loss,val_loss")?;
    let val0 = run.val_loss(&gpt.params.to_state())?;
    say!(a.json, "step     0  val {val0:.4}");
    let (mut eval_s, mut last_train, mut last_val) = (0.0, f64::NAN, val0);
    let t0 = Instant::now();
    let state = train_with(&run, &[], |info: &StepInfo<'_>| -> Result<()> {
        let t = info.step + 1;
        let loss = info.loss.as_ref().map(|l| l.to_scalar()).transpose()?.unwrap_or(f64::NAN);
        last_train = loss;
        let e0 = Instant::now();
        let val = if t.is_multiple_of(a.eval_every) || t == a.steps {
            let v = run.val_loss(&info.state[..gpt.params.len()])?;
            last_val = v;
            say!(a.json, "step {t:5}  train {loss:.4}  val {v:.4}");
            Some(v)
        } else {
            None
        };
        eval_s += e0.elapsed().as_secs_f64();
        writeln!(csv, "{t},{loss},{}", val.map(|v| v.to_string()).unwrap_or_default())
            .map_err(|e| metagrad::Error::Invalid { op: "gpt example", msg: format!("losses.csv: {e}") })?;
        Ok(())
    })?;
    let ms_per_step = (t0.elapsed().as_secs_f64() - eval_s) * 1e3 / a.steps as f64;
    say!(a.json, "{ms_per_step:.1} ms per training step; losses in {}", a.out.join("losses.csv").display());
    let trained = run.params_of(&state)?;

    // A sample.
    let prompt = vocab.encode(a.prompt.as_bytes())?;
    let sample = gpt.generate(&trained.to_state(), &prompt, a.sample, a.temperature, a.seed)?;
    let sample = vocab.decode(&sample);
    say!(a.json, "\n--- sample (temperature {}) ---\n{}{}\n---\n", a.temperature, a.prompt, sample);

    // The checkpoint round trip.
    let path = a.save.clone().unwrap_or_else(|| a.out.join("gpt.safetensors"));
    let (v_saved, v_loaded) = model::checkpoint_round_trip(&run, &trained, &path)?;
    let bitwise = v_saved.to_bits() == v_loaded.to_bits();
    say!(
        a.json,
        "checkpoint {} ({} bytes): validation loss {v_saved} before, {v_loaded} after reloading: {}",
        path.display(),
        std::fs::metadata(&path)?.len(),
        if bitwise { "bitwise equal" } else { "DIFFERENT" }
    );
    if !bitwise {
        return Err("the reloaded checkpoint gives a different validation loss".into());
    }

    // The metagradient, in f64, from the trained state.
    // It continues from the whole trained state, AdamW's moments included: from zero moments the
    // first steps move each weight by about ±lr (m/√v = g/|g|), a function of the data weights that
    // is smooth only on a scale far below any finite-difference step.
    let g64 = gpt.in_dtype(DType::F64)?;
    let start = run.state_of(&state)?.to_dtype(DType::F64);
    let mh = Hyper {
        steps: a.meta_steps,
        batch: a.meta_batch,
        lr: 1e-3,
        warmup: 0,
        clip: 1.0,
        weight_decay: 0.01,
        seed: a.seed + 1000,
        t0: a.steps,
    };
    let mrun = Run::new(&g64, &start, mh, train, val, 16, true)?;
    let n = a.meta_steps * a.meta_batch;
    let mr = model::meta_check(&mrun, &[0, n - 1], 1e-4)?;
    say!(
        a.json,
        "metagradient (f64): validation loss on 16 windows after {} AdamW steps of {} sequences = {:.6}; \
         d/dw over {} per-sequence weights by REPLAY in {:.2} s, norm {:.3e}",
        a.meta_steps,
        a.meta_batch,
        mr.phi,
        mr.weights,
        mr.seconds,
        mr.grad_norm
    );
    for c in &mr.checks {
        say!(
            a.json,
            "  w[{:3}] (step {}, sequence {}): REPLAY {:+.9e}  finite difference {:+.9e}  rel. error {:.1e}",
            c.index,
            c.index / a.meta_batch,
            c.index % a.meta_batch,
            c.replay,
            c.finite_difference,
            c.rel_error
        );
    }
    let worst = mr.checks.iter().map(|c| c.rel_error).fold(0.0, f64::max);
    // Central differences with h = 1e-4 in f64 are good to about h²·|φ‴|/|φ′| (1e-8 to 1e-11 here);
    // 1e-5 leaves room for a sharper curvature without letting a wrong metagradient through.
    if worst > 1e-5 {
        return Err(format!("the metagradient disagrees with its finite differences (worst relative error {worst:.1e})").into());
    }

    if a.json {
        let checks: Vec<String> = mr
            .checks
            .iter()
            .map(|c| {
                format!(
                    "{{\"index\": {}, \"replay\": {:e}, \"fd\": {:e}, \"rel_error\": {:e}}}",
                    c.index, c.replay, c.finite_difference, c.rel_error
                )
            })
            .collect();
        println!(
            "{{\"train_loss\": {last_train}, \"val_loss\": {last_val}, \"val_loss_init\": {val0}, \"ms_per_step\": {ms_per_step:.3}, \
             \"params\": {}, \"steps\": {}, \"batch\": {}, \"checkpoint_bitwise\": {bitwise}, \
             \"meta\": {{\"phi\": {}, \"weights\": {}, \"grad_norm\": {:e}, \"seconds\": {:.3}, \"max_rel_error\": {worst:e}, \"checks\": [{}]}}, \
             \"machine\": {{{}}}}}",
            gpt.n_params(),
            a.steps,
            a.batch,
            mr.phi,
            mr.weights,
            mr.grad_norm,
            mr.seconds,
            checks.join(", "),
            machine.json_fields()
        );
    }
    Ok(())
}
