//! Training-step speed against JAX's jit and PyTorch eager: whole training runs, REPLAY
//! metagradients, and a small transformer's step and HVP, on the specs of the peer scripts
//! (`benches/peers/jax_step_mlp.py`, `jax_gpt.py`, `torch_gpt.py`; data from `mgdata.py`, rebuilt here
//! bit for bit in `common/mgdata.rs`).
//!
//! ```sh
//! cargo run --release --example step_speed                 # MLP: a table
//! cargo run --release --example step_speed -- --json       # one JSON object {"b64": .., "b512": .., "machine": ..}
//! cargo run --release --example step_speed -- --gpt        # the GPT ({"gpt": .., "machine": ..} with --json)
//! cargo run --release --example step_speed -- --gpt --gpt-size example   # at examples/gpt's size
//! python3 benches/compare.py step   # ratios against the peers in one run (also: gpt, gpt-example)
//! ```
//!
//! **MLP** (`step_mlp`): 784-128-10 with tanh, f32; 2,048 training and 512 validation examples; T = 200
//! steps of SGD with heavy-ball momentum 0.9; step t's batch is examples (B·t + j) mod 2048, B = 64 and
//! 512; metaparameters a per-step learning rate [T] (0.05) and a per-example weight [2048] (1.0), loss
//! Σ wᵢ·CEᵢ / B; φ = mean validation cross-entropy. `train_ms`: one run of [`train`];
//! `metagrad_kary8_ms` / `metagrad_store_all_ms`: the exact metagradient with REPLAY's k = 8 tree and
//! with every state stored (JAX's reverse mode stores every step's residuals).
//!
//! **GPT** (`gpt`): vocabulary 65, context 32, width 32, 4 heads, 2 pre-LN blocks with causal attention
//! (the fused kernel) and a GELU MLP of 128, tied head, batch 16, AdamW (lr 1e-3, wd 0.01); 28,576
//! parameters. `step_ms`: one training step (forward, gradient, AdamW) on a fresh batch; `forward_ms`,
//! `grad_ms`, `fwd_hvp_ms` (loss and the HVP along v, reverse over reverse) at the initial parameters.
//! `--gpt-size example` runs the same spec at `examples/gpt`'s size (vocabulary 76, context 64, width
//! 64, MLP 256; 109,056 parameters; the peers' `--size example`).
//!
//! Both print the checks the peers print (φ, metagradient norms; losses after 0 and 50 steps, gradient
//! and HVP norms), so the numbers can be compared, not only the times.

mod common;
use common::mgdata;
use common::{median, Machine};
use metagrad::optim::{scalar, Adam, Sgd};
use metagrad::replay::{metagradient, train, ScheduleKind, StepCtx, Training};
use metagrad::{grad, hvp, no_grad, DType, Result, Tape, Tensor, Var};
use std::time::Instant;

const N_TRAIN: usize = 2048;
const N_VAL: usize = 512;
const D_IN: usize = 784;
const D_HID: usize = 128;
const D_OUT: usize = 10;
const T: usize = 200;

/// The `step_mlp` workload at one batch size.
struct StepMlp {
    batch: usize,
    x: Tensor,
    y: Vec<usize>,
    xv: Tensor,
    yv: Vec<usize>,
    params0: Vec<Tensor>,
}

impl StepMlp {
    fn new(batch: usize) -> Result<StepMlp> {
        let scaled = |stream: u64, r: usize, c: usize| -> Result<Tensor> {
            let s = (r as f32).sqrt();
            Tensor::from_vec(mgdata::normal(stream, r * c).iter().map(|v| v / s).collect::<Vec<f32>>(), [r, c])
        };
        let params0 =
            vec![scaled(5, D_IN, D_HID)?, Tensor::zeros([D_HID], DType::F32), scaled(6, D_HID, D_OUT)?, Tensor::zeros([D_OUT], DType::F32)];
        Ok(StepMlp {
            batch,
            x: Tensor::from_vec(mgdata::normal(1, N_TRAIN * D_IN), [N_TRAIN, D_IN])?,
            y: mgdata::labels(2, N_TRAIN, D_OUT),
            xv: Tensor::from_vec(mgdata::normal(3, N_VAL * D_IN), [N_VAL, D_IN])?,
            yv: mgdata::labels(4, N_VAL, D_OUT),
            params0,
        })
    }

    fn logits(x: &Var, p: &[Var]) -> Result<Var> {
        x.matmul(&p[0])?.add(&p[1])?.tanh()?.matmul(&p[2])?.add(&p[3])
    }

    fn meta(&self) -> Vec<Tensor> {
        vec![Tensor::full(0.05, [T], DType::F32), Tensor::full(1.0, [N_TRAIN], DType::F32)]
    }
}

impl Training for StepMlp {
    fn steps(&self) -> usize {
        T
    }

    fn initial_state(&self) -> Result<Vec<Tensor>> {
        let mut s = self.params0.clone();
        s.extend(self.params0.iter().map(|p| Tensor::zeros(p.shape().clone(), DType::F32)));
        Ok(s)
    }

    fn step(&self, ctx: &StepCtx, t: usize, state: &[Var], meta: &[Var]) -> Result<Vec<Var>> {
        let idx: Vec<usize> = (0..self.batch).map(|j| (self.batch * t + j) % N_TRAIN).collect();
        let labels: Vec<usize> = idx.iter().map(|&i| self.y[i]).collect();
        let x = Var::constant(self.x.index_select(0, &idx)?);
        let w = meta[1].index_select(0, &idx)?;
        let params = &state[..4];
        let loss = Self::logits(&x, params)?.cross_entropy(&labels, Some(&w))?;
        let g = ctx.grad(&loss, &params.iter().collect::<Vec<_>>())?;
        let p0 = &state[0];
        let opt = Sgd {
            lr: meta[0].narrow(0, t, 1)?.reshape(())?,
            momentum: Some(scalar(0.9, p0)),
            weight_decay: scalar(0.0, p0),
            nesterov: false,
        };
        let (p, v) = opt.step(params, &g, &state[4..8])?;
        Ok(p.into_iter().chain(v).collect())
    }

    fn output(&self, state: &[Var]) -> Result<Var> {
        Self::logits(&Var::constant(self.xv.clone()), &state[..4])?.cross_entropy(&self.yv, None)
    }
}

/// (median ms, min ms, last result) of `reps` calls after one warm-up.
fn timed<R>(reps: usize, mut f: impl FnMut() -> Result<R>) -> Result<(f64, f64, R)> {
    if reps == 0 {
        return Err(metagrad::Error::Invalid { op: "step_speed", msg: "--reps must be at least 1".into() });
    }
    let mut out = f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        out = f()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((median(times), min, out))
}

fn norm(ts: &[Tensor]) -> f64 {
    ts.iter().flat_map(|t| t.to_vec_f64()).map(|v| v * v).sum::<f64>().sqrt()
}

fn first3(t: &Tensor) -> String {
    let v = t.to_vec_f64();
    format!("[{}]", v.iter().take(3).map(|x| format!("{x:e}")).collect::<Vec<_>>().join(", "))
}

fn run_mlp(batch: usize, reps: usize, train_only: bool) -> Result<String> {
    let p = StepMlp::new(batch)?;
    let meta = p.meta();
    let (train_ms, train_min, _) = timed(reps, || train(&p, &meta))?;
    let mut fields = vec![format!("\"batch\": {batch}, \"steps\": {T}, \"train_ms\": {train_ms:.3}, \"train_min_ms\": {train_min:.3}")];
    let mut check = String::new();
    let kinds = if train_only { vec![] } else { vec![("kary8", ScheduleKind::KAry { k: 8 }), ("store_all", ScheduleKind::StoreAll)] };
    for (name, kind) in kinds {
        let (ms, min, mg) = timed(reps, || metagradient(&p, &meta, kind))?;
        fields.push(format!(
            "\"metagrad_{name}_ms\": {ms:.3}, \"metagrad_{name}_min_ms\": {min:.3}, \"metagrad_{name}_peak_states\": {}, \"metagrad_{name}_arena_bytes\": {}, \"metagrad_{name}_replayed_steps\": {}, \"metagrad_{name}_replay_ms\": {:.3}, \"metagrad_{name}_taped_ms\": {:.3}",
            mg.stats.arena.peak_slots,
            mg.stats.arena.total_bytes,
            mg.stats.replayed_steps,
            mg.stats.replay_seconds * 1e3,
            mg.stats.taped_seconds * 1e3
        ));
        if check.is_empty() {
            let s = |t: &Tensor| t.to_vec_f64().iter().sum::<f64>();
            check = format!(
                "\"phi\": {:e}, \"d_lr_first3\": {}, \"d_w_first3\": {}, \"d_lr_norm\": {:e}, \"d_w_norm\": {:e}, \"d_lr_sum\": {:e}, \"d_w_sum\": {:e}",
                mg.phi,
                first3(&mg.grads[0]),
                first3(&mg.grads[1]),
                norm(&mg.grads[..1]),
                norm(&mg.grads[1..]),
                s(&mg.grads[0]),
                s(&mg.grads[1])
            );
        }
    }
    if !check.is_empty() {
        fields.push(check);
    }
    Ok(format!("{{{}}}", fields.join(", ")))
}

// ---- GPT (the spec of benches/peers/jax_gpt.py) ----

const BLOCKS: usize = 2;
const B: usize = 16;

/// The GPT's sizes: `--gpt-size small` (the default; the spec above) or `example` (the model of
/// `examples/gpt`: vocabulary 76, context 64, width 64, 4 heads, MLP 256; 109,056 parameters).
#[derive(Clone, Copy)]
struct Size {
    v: usize,
    l: usize,
    d: usize,
    h: usize,
    mlp: usize,
}

impl Size {
    /// Head width.
    fn hd(self) -> usize {
        self.d / self.h
    }
}

fn size() -> Size {
    static S: std::sync::OnceLock<Size> = std::sync::OnceLock::new();
    *S.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        let example = args.windows(2).any(|w| w[0] == "--gpt-size" && w[1] == "example");
        let (v, l, d) = if example { (76, 64, 64) } else { (65, 32, 32) };
        Size { v, l, d, h: 4, mlp: 4 * d }
    })
}

/// How a parameter starts: 0.02·normal(stream), or a constant.
enum Init {
    Normal(u64),
    Const(f64),
}
use Init::{Const, Normal};

/// The parameters in the spec's order: (shape, init).
fn gpt_specs() -> Vec<(Vec<usize>, Init)> {
    let z = size();
    let mut s = vec![(vec![z.v, z.d], Normal(100)), (vec![z.l, z.d], Normal(101))];
    for l in 0..BLOCKS as u64 {
        s.extend([
            (vec![z.d], Const(1.0)),
            (vec![z.d], Const(0.0)),
            (vec![z.d, 3 * z.d], Normal(102 + 4 * l)),
            (vec![3 * z.d], Const(0.0)),
            (vec![z.d, z.d], Normal(103 + 4 * l)),
            (vec![z.d], Const(0.0)),
            (vec![z.d], Const(1.0)),
            (vec![z.d], Const(0.0)),
            (vec![z.d, z.mlp], Normal(104 + 4 * l)),
            (vec![z.mlp], Const(0.0)),
            (vec![z.mlp, z.d], Normal(105 + 4 * l)),
            (vec![z.d], Const(0.0)),
        ]);
    }
    s.extend([(vec![z.d], Const(1.0)), (vec![z.d], Const(0.0))]);
    s
}

fn gpt_params() -> Result<Vec<Tensor>> {
    gpt_specs()
        .into_iter()
        .map(|(shape, init)| {
            let n: usize = shape.iter().product();
            match init {
                Normal(stream) => Tensor::from_vec(mgdata::normal(stream, n).iter().map(|v| v * 0.02).collect::<Vec<f32>>(), shape),
                Const(c) => Ok(Tensor::full(c, shape, DType::F32)),
            }
        })
        .collect()
}

/// tokens[b, t] = floor(uniform(1000 + s, b·(L + 1) + t)·V), [B, L + 1] row-major.
fn tokens_of_step(s: usize) -> Vec<usize> {
    let z = size();
    (0..(B * (z.l + 1)) as u64).map(|i| ((mgdata::uniform(1000 + s as u64, i) * z.v as f64).floor() as usize).min(z.v - 1)).collect()
}

/// `--composite`: attention from its composite ops (matmuls, masked softmax) instead of the fused kernel.
fn composite() -> bool {
    static C: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *C.get_or_init(|| std::env::args().any(|a| a == "--composite"))
}

/// Mean next-token cross-entropy of the GPT with parameters `p` on `tokens`.
fn gpt_loss(p: &[Var], tokens: &[usize]) -> Result<Var> {
    let z = size();
    let inputs: Vec<usize> = (0..B).flat_map(|b| (0..z.l).map(move |t| tokens[b * (z.l + 1) + t])).collect();
    let targets: Vec<usize> = (0..B).flat_map(|b| (0..z.l).map(move |t| tokens[b * (z.l + 1) + t + 1])).collect();
    let mut h = p[0].index_select(0, &inputs)?.reshape([B, z.l, z.d])?.add(&p[1])?;
    for l in 0..BLOCKS {
        let q = &p[2 + 12 * l..14 + 12 * l];
        let qkv = h.layer_norm(Some(&q[0]), Some(&q[1]), 1e-5)?.matmul(&q[2])?.add(&q[3])?;
        let head = |i: usize| qkv.narrow(-1, i * z.d, z.d)?.reshape([B, z.l, z.h, z.hd()])?.permute(&[0, 2, 1, 3]);
        let (qh, kh, vh, scale) = (head(0)?, head(1)?, head(2)?, 1.0 / (z.hd() as f64).sqrt());
        let o = if composite() { qh.attention_composite(&kh, &vh, scale, true)? } else { qh.attention(&kh, &vh, scale, true)? };
        let o = o.permute(&[0, 2, 1, 3])?.reshape([B, z.l, z.d])?;
        h = h.add(&o.matmul(&q[4])?.add(&q[5])?)?;
        let m = h.layer_norm(Some(&q[6]), Some(&q[7]), 1e-5)?.matmul(&q[8])?.add(&q[9])?.gelu()?.matmul(&q[10])?.add(&q[11])?;
        h = h.add(&m)?;
    }
    let n = p.len();
    let logits = h.layer_norm(Some(&p[n - 2]), Some(&p[n - 1]), 1e-5)?.reshape([B * z.l, z.d])?.matmul_t(&p[0], false, true)?;
    logits.cross_entropy(&targets, None)
}

fn adamw(p0: &Var) -> Adam {
    Adam {
        lr: scalar(1e-3, p0),
        beta1: scalar(0.9, p0),
        beta2: scalar(0.999, p0),
        eps: 1e-8,
        eps_root: 0.0,
        weight_decay: scalar(0.01, p0),
        decoupled: true,
    }
}

/// One AdamW training step at step index t: (params, m, v) → the new ones and the loss.
fn gpt_step(t: usize, state: &[Vec<Tensor>; 3], tokens: &[usize]) -> Result<([Vec<Tensor>; 3], f64)> {
    let tape = Tape::new();
    let p: Vec<Var> = state[0].iter().map(|x| tape.var(x.clone())).collect();
    let loss = gpt_loss(&p, tokens)?;
    let g = grad(&loss, &p.iter().collect::<Vec<_>>(), false)?;
    let cst = |ts: &[Tensor]| ts.iter().map(|x| Var::constant(x.clone())).collect::<Vec<_>>();
    let (np, nm, nv) = adamw(&p[0]).step(t, &cst(&state[0]), &g, &cst(&state[1]), &cst(&state[2]))?;
    let val = |vs: Vec<Var>| vs.into_iter().map(|v| v.value().clone()).collect::<Vec<_>>();
    Ok(([val(np), val(nm), val(nv)], loss.value().to_vec_f64()[0]))
}

fn run_gpt(reps: usize) -> Result<String> {
    let params0 = gpt_params()?;
    let n_params: usize = params0.iter().map(|t| t.numel()).sum();
    let dir: Vec<Tensor> = params0
        .iter()
        .enumerate()
        .map(|(i, t)| Tensor::from_vec(mgdata::normal(2000 + i as u64, t.numel()), t.shape().clone()))
        .collect::<Result<_>>()?;
    let tok0 = tokens_of_step(0);
    let leaves = |tape: &Tape| params0.iter().map(|x| tape.var(x.clone())).collect::<Vec<Var>>();
    let (forward_ms, forward_min, loss0) =
        timed(reps, || no_grad(|| gpt_loss(&params0.iter().map(|x| Var::constant(x.clone())).collect::<Vec<_>>(), &tok0)))?;
    let (grad_ms, grad_min, g0) = timed(reps, || {
        let tape = Tape::new();
        let p = leaves(&tape);
        let loss = gpt_loss(&p, &tok0)?;
        grad(&loss, &p.iter().collect::<Vec<_>>(), false)
    })?;
    let (hvp_ms, hvp_min, hv) = timed(reps, || {
        let tape = Tape::new();
        let p = leaves(&tape);
        let loss = gpt_loss(&p, &tok0)?;
        hvp(&loss, &p.iter().collect::<Vec<_>>(), &dir)
    })?;
    let g0: Vec<Tensor> = g0.iter().map(|v| v.value().clone()).collect();
    let v_hvp: f64 = dir.iter().zip(&hv).map(|(a, b)| a.to_vec_f64().iter().zip(b.to_vec_f64()).map(|(x, y)| x * y).sum::<f64>()).sum();
    // The check: 51 deterministic AdamW steps from the initial parameters.
    let zeros = || params0.iter().map(|p| Tensor::zeros(p.shape().clone(), DType::F32)).collect::<Vec<_>>();
    let mut state = [params0.clone(), zeros(), zeros()];
    let mut losses = Vec::new();
    for t in 0..=50 {
        let (s, loss) = gpt_step(t, &state, &tokens_of_step(t))?;
        state = s;
        losses.push(loss);
    }
    let param_norm = norm(&state[0]);
    // step_ms: go on training, a fresh batch every call (batches made beforehand, as the peers do).
    let batches: Vec<Vec<usize>> = (0..reps + 1).map(|i| tokens_of_step(51 + i)).collect();
    let mut t = 51;
    let (step_ms, step_min, _) = timed(reps, || {
        let (s, loss) = gpt_step(t, &state, &batches[t - 51])?;
        state = s;
        t += 1;
        Ok(loss)
    })?;
    Ok(format!(
        "{{\"n_params\": {n_params}, \"step_ms\": {step_ms:.3}, \"step_min_ms\": {step_min:.3}, \"forward_ms\": {forward_ms:.3}, \"forward_min_ms\": {forward_min:.3}, \
         \"grad_ms\": {grad_ms:.3}, \"grad_min_ms\": {grad_min:.3}, \"fwd_hvp_ms\": {hvp_ms:.3}, \"fwd_hvp_min_ms\": {hvp_min:.3}, \
         \"loss_init\": {:e}, \"grad_norm\": {:e}, \"hvp_norm\": {:e}, \"v_hvp\": {v_hvp:e}, \"hvp_first3_tok_emb\": {}, \
         \"loss_step0\": {:e}, \"loss_step50\": {:e}, \"param_norm_after_51_steps\": {param_norm:e}}}",
        loss0.value().to_vec_f64()[0],
        norm(&g0),
        norm(&hv),
        first3(&hv[0]),
        losses[0],
        losses[50]
    ))
}

fn main() {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread().expect("rayon is not used before main");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<usize>().ok());
    if flag("--help") || flag("-h") {
        println!(
            "usage: step_speed [--json] [--gpt [--composite] [--gpt-size small|example]] [--reps N] [--batches 64,512] [--train-only]"
        );
        return;
    }
    if let Some(s) = args.iter().position(|a| a == "--gpt-size").map(|i| args.get(i + 1)) {
        if !matches!(s.map(String::as_str), Some("small" | "example")) {
            eprintln!("step_speed: --gpt-size takes small or example, not {}", s.map_or("nothing", String::as_str));
            std::process::exit(2);
        }
    }
    let machine = Machine::measure();
    let run = || -> Result<String> {
        if flag("--gpt") {
            let reps = value("--reps").unwrap_or(20);
            return Ok(format!("{{\"gpt\": {}, \"machine\": {{{}}}}}", run_gpt(reps)?, machine.json_fields()));
        }
        let reps = value("--reps").unwrap_or(5);
        let batches: Vec<usize> = args
            .iter()
            .position(|a| a == "--batches")
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| vec![64, 512], |s| s.split(',').filter_map(|b| b.parse().ok()).collect());
        let mut parts = Vec::new();
        for b in batches {
            parts.push(format!("\"b{b}\": {}", run_mlp(b, reps, flag("--train-only"))?));
        }
        Ok(format!("{{{}, \"machine\": {{{}}}}}", parts.join(", "), machine.json_fields()))
    };
    match run() {
        Ok(json) if flag("--json") => println!("{json}"),
        Ok(json) => {
            println!("{}\n", machine.line());
            println!("{json}");
        }
        Err(e) => {
            eprintln!("step_speed: {e}");
            std::process::exit(1);
        }
    }
}
