//! The character-level GPT of `examples/gpt` on `metagrad::nn`'s layers: the vocabulary, the model,
//! deterministic batches, the AdamW training run (a [`Training`], so REPLAY can differentiate it), text
//! generation, the checkpoint round trip and the metagradient check. `tests/gpt_example.rs` includes
//! this file with `#[path]` and runs the same code at tiny sizes.

#![allow(dead_code)] // the example and the test each use a subset

use metagrad::nn::{clip_grad_norm, load_safetensors, save_safetensors, warmup_cosine, Block, Embedding, Init, LayerNorm, Params};
use metagrad::optim::{scalar, Adam};
use metagrad::random::{derive_seed, philox4x32};
use metagrad::replay::{evaluate, metagradient, ScheduleKind, StepCtx, Training};
use metagrad::{no_grad, DType, Error, Result, Tensor, Var};
use std::path::Path;

fn invalid<T>(msg: String) -> Result<T> {
    Err(Error::Invalid { op: "gpt example", msg })
}

/// The byte values that occur in a text, sorted (the bundled text is ASCII, so these are characters).
pub struct Vocab {
    /// Byte of each id.
    pub bytes: Vec<u8>,
}

impl Vocab {
    /// The vocabulary of `text`.
    pub fn of(text: &[u8]) -> Vocab {
        let mut seen = [false; 256];
        for &b in text {
            seen[b as usize] = true;
        }
        Vocab { bytes: (0..=255u8).filter(|&b| seen[b as usize]).collect() }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Ids of `text`; an error for a byte outside the vocabulary.
    pub fn encode(&self, text: &[u8]) -> Result<Vec<usize>> {
        let mut id = [usize::MAX; 256];
        for (i, &b) in self.bytes.iter().enumerate() {
            id[b as usize] = i;
        }
        text.iter()
            .map(|&b| match id[b as usize] {
                usize::MAX => invalid(format!("character {:?} is not in the training text", b as char)),
                i => Ok(i),
            })
            .collect()
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[usize]) -> String {
        String::from_utf8_lossy(&ids.iter().map(|&i| self.bytes[i]).collect::<Vec<u8>>()).into_owned()
    }
}

/// Model sizes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Width.
    pub d: usize,
    /// Attention heads.
    pub heads: usize,
    /// Transformer blocks.
    pub blocks: usize,
    /// Context length (positions).
    pub ctx: usize,
    /// Parameter dtype.
    pub dtype: DType,
    /// Initialization seed.
    pub seed: u64,
}

/// A GPT: token and position embeddings, pre-norm blocks (MLP width 4d), a final layer norm and the
/// tied output head.
pub struct Gpt {
    /// Sizes.
    pub cfg: Config,
    /// Vocabulary size.
    pub vocab: usize,
    /// The parameters (initial values; their names and order define the model's state layout).
    pub params: Params,
    tok: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt {
    /// A freshly initialized model (weights N(0, 0.02²), as GPT-2).
    pub fn new(cfg: Config, vocab: usize) -> Result<Gpt> {
        let mut params = Params::new();
        let tok = Embedding::init(&mut params, "tok", vocab, cfg.d, 0.02, cfg.dtype, cfg.seed)?;
        params.insert("pos", Init::Normal(0.02).tensor("pos", &[cfg.ctx, cfg.d], cfg.dtype, cfg.seed)?)?;
        let blocks = (0..cfg.blocks)
            .map(|i| Block::init(&mut params, &format!("blocks.{i}"), cfg.d, cfg.heads, 4 * cfg.d, 0.02, cfg.dtype, cfg.seed))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::init(&mut params, "ln_f", cfg.d, 1e-5, cfg.dtype)?;
        Ok(Gpt { cfg, vocab, params, tok, blocks, ln_f })
    }

    /// The same architecture with its parameters in `dtype` (the values are a fresh initialization;
    /// a [`Run`] takes the values to train from).
    pub fn in_dtype(&self, dtype: DType) -> Result<Gpt> {
        Gpt::new(Config { dtype, ..self.cfg }, self.vocab)
    }

    /// Number of scalar parameters.
    pub fn n_params(&self) -> usize {
        self.params.numel()
    }

    /// Logits [b·l, vocab] of `b` sequences of `l ≤ ctx` ids (row-major); `params` in `self.params`'s
    /// order.
    pub fn logits(&self, params: &[Var], ids: &[usize], b: usize, l: usize) -> Result<Var> {
        let p = self.params.vars(params)?;
        let pos = p.get("gpt", "pos")?.narrow(0, 0, l)?;
        let mut h = self.tok.forward(&p, ids, &[b, l])?.add(&pos)?;
        for blk in &self.blocks {
            h = blk.forward(&p, &h)?;
        }
        self.tok.attend(&p, &self.ln_f.forward(&p, &h)?.reshape([b * l, self.cfg.d])?)
    }

    /// Mean next-character cross-entropy over the windows of `ctx + 1` ids of `tokens` starting at
    /// `starts`, optionally weighting window i's positions by `weights[i]` (shape [starts.len()]).
    pub fn loss(&self, params: &[Var], tokens: &[usize], starts: &[usize], weights: Option<&Var>) -> Result<Var> {
        let (b, l) = (starts.len(), self.cfg.ctx);
        let (mut inputs, mut targets) = (Vec::with_capacity(b * l), Vec::with_capacity(b * l));
        for &s in starts {
            let Some(w) = tokens.get(s..s + l + 1) else {
                return invalid(format!("window {s}..{} is past the {} tokens", s + l + 1, tokens.len()));
            };
            inputs.extend_from_slice(&w[..l]);
            targets.extend_from_slice(&w[1..]);
        }
        let w = match weights {
            Some(w) => Some(w.reshape([b, 1])?.mul(&Var::constant(Tensor::ones([b, l], self.cfg.dtype)))?.reshape([b * l])?),
            None => None,
        };
        self.logits(params, &inputs, b, l)?.cross_entropy(&targets, w.as_ref())
    }

    /// The loss of [`Gpt::loss`] at parameter values `values`, without a tape.
    pub fn loss_at(&self, values: &[Tensor], tokens: &[usize], starts: &[usize]) -> Result<f64> {
        let p: Vec<Var> = values.iter().map(|t| Var::constant(t.clone())).collect();
        no_grad(|| self.loss(&p, tokens, starts, None))?.value().to_scalar()
    }

    /// `n` characters continuing `prompt` (ids), each drawn from softmax(logits/temperature) with a
    /// counter-based generator keyed by (seed, position), or the argmax for temperature ≤ 0.
    pub fn generate(&self, values: &[Tensor], prompt: &[usize], n: usize, temperature: f64, seed: u64) -> Result<Vec<usize>> {
        if prompt.is_empty() {
            return invalid("the prompt is empty".into());
        }
        let p: Vec<Var> = values.iter().map(|t| Var::constant(t.clone())).collect();
        let mut ids = prompt.to_vec();
        for i in 0..n {
            let window = &ids[ids.len().saturating_sub(self.cfg.ctx)..];
            let l = window.len();
            let last = no_grad(|| self.logits(&p, window, 1, l))?.value().narrow(0, l - 1, 1)?;
            let next = if temperature <= 0.0 {
                last.argmax(-1)?[0]
            } else {
                let probs = last.mul_scalar(1.0 / temperature)?.softmax(-1)?.to_vec_f64();
                let u = uniform(derive_seed(seed, i as u64), 0);
                let mut acc = 0.0;
                probs
                    .iter()
                    .position(|q| {
                        acc += q;
                        acc > u
                    })
                    .unwrap_or(probs.len() - 1)
            };
            ids.push(next);
        }
        Ok(ids.split_off(prompt.len()))
    }
}

/// Uniform in [0, 1) from Philox at counter i under `key`.
fn uniform(key: u64, i: u64) -> f64 {
    let r = philox4x32([i as u32, (i >> 32) as u32, 0, 0], [key as u32, (key >> 32) as u32]);
    ((((r[0] as u64) << 32) | r[1] as u64) >> 11) as f64 * (-53f64).exp2()
}

/// The `batch` window starts of training step `step`: uniform over `0..=n_tokens − ctx − 1`, a pure
/// function of (seed, step), as REPLAY needs.
pub fn batch_starts(seed: u64, step: usize, batch: usize, n_tokens: usize, ctx: usize) -> Vec<usize> {
    let span = (n_tokens - ctx) as f64;
    let key = derive_seed(seed, step as u64);
    (0..batch).map(|i| ((uniform(key, i as u64) * span) as usize).min(n_tokens - ctx - 1)).collect()
}

/// `count` evenly spaced window starts over `n_tokens` (the fixed validation windows).
pub fn eval_starts(n_tokens: usize, ctx: usize, count: usize) -> Vec<usize> {
    let last = n_tokens - ctx - 1;
    (0..count).map(|i| if count == 1 { 0 } else { i * last / (count - 1) }).collect()
}

/// Training hyperparameters.
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    /// Steps T.
    pub steps: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Peak learning rate (linear warmup, then cosine down to a tenth).
    pub lr: f64,
    /// Warmup steps (below `steps`).
    pub warmup: usize,
    /// Gradient-norm clip.
    pub clip: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Batch-sampling seed.
    pub seed: u64,
    /// Steps already taken before this run's first (AdamW's bias correction counts from it), for a
    /// run that continues from a trained state with its moments.
    pub t0: usize,
}

/// An AdamW training run of `model` from `start`; φ = the loss on the fixed validation windows. With
/// `weighted`, the one metaparameter is a weight per training sequence ([steps·batch], step t's
/// batch at t·batch..), scaling that sequence's positions in the training loss.
pub struct Run<'a> {
    /// The model (its architecture; the values come from `start`).
    pub model: &'a Gpt,
    /// Hyperparameters.
    pub hyper: Hyper,
    /// Training ids.
    pub train: &'a [usize],
    /// Validation ids.
    pub val: &'a [usize],
    /// Validation window starts.
    pub val_starts: Vec<usize>,
    /// Per-sequence data weights as the metaparameter.
    pub weighted: bool,
    /// A fixed pool of training windows (starts into `train`) to draw each batch from, uniformly
    /// with replacement by (seed, step); with `weighted`, the data weights are then one per pool
    /// window ([pool.len()]) instead of one per drawn sequence. `None`: windows anywhere in `train`.
    pub pool: Option<Vec<usize>>,
    layout: Params,
}

impl<'a> Run<'a> {
    /// A run from `start`: the model's parameters by name (AdamW moments zero), or a whole training
    /// state (parameters and the `adamw.m`, `adamw.v` buffer groups, as [`Run::state_of`] returns) to
    /// continue from.
    pub fn new(
        model: &'a Gpt,
        start: &Params,
        hyper: Hyper,
        train: &'a [usize],
        val: &'a [usize],
        val_windows: usize,
        weighted: bool,
    ) -> Result<Run<'a>> {
        let mut layout = model.params.clone();
        layout.add_buffers("adamw.m")?;
        layout.add_buffers("adamw.v")?;
        let mut state = start.to_state();
        if start.state_len() == start.len() {
            // Parameters only: the layout's zero moments after them (a wrong count is reported by
            // `from_state`).
            state.extend(layout.to_state().into_iter().skip(model.params.len()));
        }
        let layout = Params::from_state(&layout, &state)?;
        if hyper.warmup >= hyper.steps {
            return invalid(format!("warmup {} must be below the {} steps", hyper.warmup, hyper.steps));
        }
        for (what, n) in [("training", train.len()), ("validation", val.len())] {
            if n < model.cfg.ctx + 2 {
                return invalid(format!("the {what} text has {n} characters, fewer than context + 2 = {}", model.cfg.ctx + 2));
            }
        }
        let val_starts = eval_starts(val.len(), model.cfg.ctx, val_windows);
        Ok(Run { model, hyper, train, val, val_starts, weighted, pool: None, layout })
    }

    /// The parameters of a state (its first `n` tensors) by name.
    pub fn params_of(&self, state: &[Tensor]) -> Result<Params> {
        let n = self.model.params.len();
        Params::from_state(&self.model.params, state.get(..n).unwrap_or(state))
    }

    /// A whole state (parameters and AdamW moments) by name.
    pub fn state_of(&self, state: &[Tensor]) -> Result<Params> {
        Params::from_state(&self.layout, state)
    }

    /// The validation loss at parameter values `params`.
    pub fn val_loss(&self, params: &[Tensor]) -> Result<f64> {
        self.model.loss_at(params, self.val, &self.val_starts)
    }
}

impl Training for Run<'_> {
    fn steps(&self) -> usize {
        self.hyper.steps
    }

    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(self.layout.to_state())
    }

    fn step(&self, ctx: &StepCtx, t: usize, state: &[Var], meta: &[Var]) -> Result<Vec<Var>> {
        let h = &self.hyper;
        let (params, _) = self.layout.split_state(state)?;
        if self.pool.as_ref().is_some_and(Vec::is_empty) {
            return invalid("the training pool has no windows".into());
        }
        let (starts, picks) = match &self.pool {
            None => (batch_starts(h.seed, t, h.batch, self.train.len(), self.model.cfg.ctx), None),
            Some(pool) => {
                let key = derive_seed(h.seed, t as u64);
                let picks: Vec<usize> =
                    (0..h.batch).map(|i| ((uniform(key, i as u64) * pool.len() as f64) as usize).min(pool.len() - 1)).collect();
                (picks.iter().map(|&i| pool[i]).collect(), Some(picks))
            }
        };
        let w = match (self.weighted, meta.first(), picks) {
            (false, ..) => None,
            (true, Some(z), None) => Some(z.narrow(0, t * h.batch, h.batch)?),
            (true, Some(z), Some(picks)) => Some(z.index_select(0, &picks)?),
            (true, None, _) => return invalid("a weighted run needs the data weights".into()),
        };
        let loss = self.model.loss(params, self.train, &starts, w.as_ref())?;
        let g = ctx.grad(&loss, &params.iter().collect::<Vec<_>>())?;
        let g = clip_grad_norm(&g, h.clip)?;
        let p0 = &params[0];
        let opt = Adam {
            lr: warmup_cosine(&scalar(h.lr, p0), t, h.warmup, h.steps, 0.1)?,
            beta1: scalar(0.9, p0),
            beta2: scalar(0.95, p0),
            eps: 1e-8,
            eps_root: 0.0,
            weight_decay: scalar(h.weight_decay, p0),
            decoupled: true,
        };
        opt.step_state(h.t0 + t, &self.layout, state, &g)
    }

    fn output(&self, state: &[Var]) -> Result<Var> {
        let n = self.model.params.len();
        self.model.loss(&state[..n], self.val, &self.val_starts, None)
    }
}

/// Writes `params` to `path` as safetensors, reads it back, and returns (validation loss of
/// `params`, validation loss of the reloaded ones): the same bits if the round trip is exact.
pub fn checkpoint_round_trip(run: &Run<'_>, params: &Params, path: &Path) -> Result<(f64, f64)> {
    save_safetensors(path, params)?;
    let back = load_safetensors(path)?;
    let back = Params::from_state(&run.model.params, &back.to_state())?;
    for ((name, a), (_, b)) in params.iter().zip(back.iter()) {
        if !a.bit_eq(b) {
            return invalid(format!("`{name}` changed in the round trip"));
        }
    }
    Ok((run.val_loss(&params.to_state())?, run.val_loss(&back.to_state())?))
}

/// One component of the metagradient against its central finite difference.
#[derive(Clone, Copy, Debug)]
pub struct MetaCheck {
    /// Index into the data weights (training step index·batch + sequence).
    pub index: usize,
    /// REPLAY's ∂φ/∂w.
    pub replay: f64,
    /// (φ(w + h·e) − φ(w − h·e)) / 2h by `replay::evaluate`.
    pub finite_difference: f64,
    /// |replay − fd| / max(|replay|, |fd|).
    pub rel_error: f64,
}

/// The metagradient summary: φ, the gradient's size, and the checked components.
#[derive(Clone, Debug)]
pub struct MetaResult {
    /// φ at w = 1.
    pub phi: f64,
    /// Number of data weights.
    pub weights: usize,
    /// ‖∂φ/∂w‖.
    pub grad_norm: f64,
    /// Checked components.
    pub checks: Vec<MetaCheck>,
    /// Seconds for the metagradient.
    pub seconds: f64,
}

/// The exact metagradient of `run` (weighted) at all-one data weights by REPLAY, with components
/// `indices` (and the largest one) checked against central differences with step `h`.
pub fn meta_check(run: &Run<'_>, indices: &[usize], h: f64) -> Result<MetaResult> {
    let n = run.hyper.steps * run.hyper.batch;
    let dtype = run.model.cfg.dtype;
    let z = vec![Tensor::ones([n], dtype)];
    let t0 = std::time::Instant::now();
    let mg = metagradient(run, &z, ScheduleKind::KAry { k: 2 })?;
    let seconds = t0.elapsed().as_secs_f64();
    let g = mg.grads[0].to_vec_f64();
    let grad_norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let largest = (0..n).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap_or(0);
    let mut idx: Vec<usize> = indices.iter().copied().filter(|&i| i < n).collect();
    if !idx.contains(&largest) {
        idx.push(largest);
    }
    let mut checks = Vec::new();
    for index in idx {
        let at = |d: f64| -> Result<f64> {
            let mut v = vec![1.0; n];
            v[index] += d;
            evaluate(run, &[Tensor::from_vec(v, [n])?.to_dtype(dtype)])
        };
        let fd = (at(h)? - at(-h)?) / (2.0 * h);
        let a = g[index];
        checks.push(MetaCheck { index, replay: a, finite_difference: fd, rel_error: (a - fd).abs() / a.abs().max(fd.abs()).max(1e-300) });
    }
    Ok(MetaResult { phi: mg.phi, weights: n, grad_norm, checks, seconds })
}
