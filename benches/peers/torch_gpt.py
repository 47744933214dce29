"""Workload `gpt` in PyTorch (eager, CPU, float32): a tiny character GPT's step, gradient and HVP.

Spec (shared with jax_gpt.py and metagrad's Rust side; data from mgdata.py):
  * vocab V = 65, context L = 32, width d = 32, H = 4 heads of dim 8, 2 blocks, MLP hidden 128,
    batch B = 16; 28576 parameters, in this order (stream numbers in brackets; matrices are
    0.02·normal(stream), LayerNorm weights ones, biases zeros):
      tok_emb [65,32] (100), pos_emb [32,32] (101); for block l in 0, 1:
        blocks.l.ln1.weight [32], blocks.l.ln1.bias [32], blocks.l.attn.wqkv [32,96] (102+4l),
        blocks.l.attn.bqkv [96], blocks.l.attn.wo [32,32] (103+4l), blocks.l.attn.bo [32],
        blocks.l.ln2.weight [32], blocks.l.ln2.bias [32], blocks.l.mlp.w1 [32,128] (104+4l),
        blocks.l.mlp.b1 [128], blocks.l.mlp.w2 [128,32] (105+4l), blocks.l.mlp.b2 [32];
      ln_f.weight [32], ln_f.bias [32].
  * Forward on tokens [B, L+1] (inputs tokens[:, :L], targets tokens[:, 1:]):
      h = tok_emb[inputs] + pos_emb; per block:
        a = LN1(h)  (eps 1e-5, biased variance);  q, k, v = split(a @ wqkv + bqkv, 3 × 32)
        each [B, L, H, 8] → [B, H, L, 8];  o = softmax(q kᵀ/sqrt(8) + causal mask) v  (j ≤ i)
        h = h + o[B, L, 32] @ wo + bo;  h = h + gelu_erf(LN2(h) @ w1 + b1) @ w2 + b2
      logits = LN_f(h) @ tok_embᵀ (tied head); loss = mean cross-entropy over the B·L positions.
  * Tokens of step s: tokens[b, t] = floor(uniform(1000 + s, b·33 + t) · 65).
  * AdamW, lr 1e-3, β1 0.9, β2 0.999, eps 1e-8 outside the sqrt, decoupled weight decay 0.01 on
    every parameter:  m' = β1 m + (1−β1) g;  v' = β2 v + (1−β2) g²;  m̂ = m'/(1−β1^(t+1));
    v̂ = v'/(1−β2^(t+1));  θ' = θ − lr·(m̂/(sqrt(v̂) + eps) + wd·θ).
    By default a hand-written AdamW with torch._foreach_* ops implements exactly this formula;
    --adamw torch uses torch.optim.AdamW(foreach=True) instead, which is the same in exact
    arithmetic (it decays θ by (1 − lr·wd) first and folds the bias corrections differently).

Measures (medians over --reps calls after warm-up, ms):
  * step_ms:     one eager training step (forward, loss.backward(), AdamW update), fresh batch each.
  * forward_ms:  the loss under torch.no_grad();  grad_ms: loss and autograd.grad of it;
  * fwd_hvp_ms:  loss and the Hessian-vector product of the loss w.r.t. all parameters along the
                 fixed direction v (v_i = normal(2000 + i) for parameter i), reverse over reverse:
                 g = autograd.grad(loss, θ, create_graph=True); Hv = autograd.grad(<g, v>, θ).
  forward/grad/hvp are measured at the initial parameters on the tokens of step 0.
Checks printed: loss_step0 and loss_step50, where loss_step<s> is the loss of the parameters after
s AdamW steps on the tokens of step s (so loss_step0 is the loss at init on step 0's batch), the
gradient's and the HVP's L2 norms (at init, step 0 tokens) and <v, Hv>.
Prints one JSON object {"gpt": {...}, "machine": {...}}, as jax_gpt.py does.

    python benches/peers/torch_gpt.py [--reps 20] [--threads 2] [--adamw manual|torch] [--size small|example]
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgdata  # noqa: E402

V, L, D, H, N_BLOCKS, D_MLP, B = 65, 32, 32, 4, 2, 128, 16
HD = D // H
LR, BETA1, BETA2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 0.01
LN_EPS = 1e-5
N_PARAMS = 28576
CHECK_STEPS = 50


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", choices=("small", "example"), default="small",
                    help="small: the spec above; example: examples/gpt's model (V 76, L 64, d 64, MLP 256)")
    ap.add_argument("--adamw", choices=("manual", "torch"), default="manual")
    return ap.parse_args()


ARGS = parse_args()
if ARGS.size == "example":
    V, L, D, D_MLP = 76, 64, 64, 256
    HD = D // H
    N_PARAMS = 109056
mgdata.limit_threads(ARGS.threads)  # before importing torch

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(ARGS.threads)


def param_specs():
    """[(name, shape, init)] in the spec's order; init is a stream number, "ones" or "zeros"."""
    specs = [("tok_emb", (V, D), 100), ("pos_emb", (L, D), 101)]
    for l in range(N_BLOCKS):
        p = f"blocks.{l}."
        specs += [
            (p + "ln1.weight", (D,), "ones"), (p + "ln1.bias", (D,), "zeros"),
            (p + "attn.wqkv", (D, 3 * D), 102 + 4 * l), (p + "attn.bqkv", (3 * D,), "zeros"),
            (p + "attn.wo", (D, D), 103 + 4 * l), (p + "attn.bo", (D,), "zeros"),
            (p + "ln2.weight", (D,), "ones"), (p + "ln2.bias", (D,), "zeros"),
            (p + "mlp.w1", (D, D_MLP), 104 + 4 * l), (p + "mlp.b1", (D_MLP,), "zeros"),
            (p + "mlp.w2", (D_MLP, D), 105 + 4 * l), (p + "mlp.b2", (D,), "zeros"),
        ]
    specs += [("ln_f.weight", (D,), "ones"), ("ln_f.bias", (D,), "zeros")]
    return specs


def init_params():
    out = []
    for _, shape, init in param_specs():
        if init == "ones":
            out.append(torch.ones(shape))
        elif init == "zeros":
            out.append(torch.zeros(shape))
        else:
            out.append(torch.from_numpy(mgdata.normal(init, shape) * np.float32(0.02)))
    assert sum(p.numel() for p in out) == N_PARAMS, sum(p.numel() for p in out)
    return out


def direction():
    """The fixed HVP direction: v_i = normal(2000 + i) for parameter i (unscaled)."""
    return [torch.from_numpy(mgdata.normal(2000 + i, shape)) for i, (_, shape, _) in enumerate(param_specs())]


def tokens_of_step(s):
    """tokens[b, t] = floor(uniform(1000 + s, b·33 + t) · 65), [B, L+1] int64."""
    return torch.from_numpy(np.floor(mgdata.uniform(1000 + s, (B, L + 1)) * V).astype(np.int64))


CAUSAL = torch.tril(torch.ones(L, L, dtype=torch.bool))


def loss_fn(params, tokens):
    tok_emb, pos_emb = params[0], params[1]
    inputs, targets = tokens[:, :L], tokens[:, 1:]
    h = tok_emb[inputs] + pos_emb  # [B, L, D]
    for l in range(N_BLOCKS):
        ln1w, ln1b, wqkv, bqkv, wo, bo, ln2w, ln2b, w1, b1, w2, b2 = params[2 + 12 * l: 14 + 12 * l]
        qkv = F.layer_norm(h, (D,), ln1w, ln1b, LN_EPS) @ wqkv + bqkv  # [B, L, 3D]
        q, k, v = (x.reshape(B, L, H, HD).transpose(1, 2) for x in qkv.split(D, dim=-1))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(HD)
        s = s.masked_fill(~CAUSAL, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v  # [B, H, L, HD]
        h = h + o.transpose(1, 2).reshape(B, L, D) @ wo + bo
        h = h + F.gelu(F.layer_norm(h, (D,), ln2w, ln2b, LN_EPS) @ w1 + b1) @ w2 + b2  # exact GELU
    logits = F.layer_norm(h, (D,), params[-2], params[-1], LN_EPS) @ tok_emb.T  # tied head
    return F.cross_entropy(logits.reshape(B * L, V), targets.reshape(B * L))


class ManualAdamW:
    """AdamW exactly as the spec writes it, with torch._foreach_* ops (bias corrections in f64)."""

    def __init__(self, params):
        self.params = params
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self):
        ps, m, v = self.params, self.m, self.v
        g = [p.grad for p in ps]
        bc1, bc2 = 1 - BETA1 ** (self.t + 1), 1 - BETA2 ** (self.t + 1)
        torch._foreach_mul_(m, BETA1)
        torch._foreach_add_(m, g, alpha=1 - BETA1)  # m' = β1 m + (1−β1) g
        torch._foreach_mul_(v, BETA2)
        torch._foreach_addcmul_(v, g, g, value=1 - BETA2)  # v' = β2 v + (1−β2) g²
        upd = torch._foreach_div(m, bc1)  # m̂
        denom = torch._foreach_div(v, bc2)  # v̂
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, EPS)  # sqrt(v̂) + eps
        torch._foreach_div_(upd, denom)
        torch._foreach_add_(upd, ps, alpha=WD)  # m̂/(sqrt(v̂)+eps) + wd θ
        torch._foreach_add_(ps, upd, alpha=-LR)
        self.t += 1

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def make_optimizer(params):
    if ARGS.adamw == "torch":
        return torch.optim.AdamW(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD, foreach=True)
    return ManualAdamW(params)


def train_step(params, opt, tokens):
    """One eager step: forward, backward, AdamW. Returns the loss (a 0-d tensor)."""
    loss = loss_fn(params, tokens)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True) if isinstance(opt, torch.optim.Optimizer) else opt.zero_grad()
    return loss.detach()


def forward(params, tokens):
    with torch.no_grad():
        return loss_fn(params, tokens)


def value_and_grad(params, tokens):
    loss = loss_fn(params, tokens)
    return loss.detach(), torch.autograd.grad(loss, params)


def fwd_hvp(params, tokens, vec):
    """(loss, Hv), reverse over reverse: Hv = grad of <grad(loss), v>."""
    loss = loss_fn(params, tokens)
    g = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((gi * vi).sum() for gi, vi in zip(g, vec))
    return loss.detach(), torch.autograd.grad(dot, params)


def timed(fn, reps, warmup=3):
    """(median ms, min ms, first-call ms, last result)."""
    t0 = time.perf_counter()
    out = fn()
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup - 1):
        out = fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), first_ms, out


def norm(xs):
    return float(math.sqrt(sum(float((x.double() ** 2).sum()) for x in xs)))


def main():
    reps = ARGS.reps
    params0 = [p.requires_grad_(True) for p in init_params()]
    vec = direction()
    tok0 = tokens_of_step(0)
    res = {"n_params": N_PARAMS, "adamw": ARGS.adamw}

    # Forward, gradient and HVP at init on step 0's tokens.
    res["forward_ms"], res["forward_min_ms"], res["forward_first_ms"], loss0 = timed(
        lambda: forward(params0, tok0), reps)
    res["grad_ms"], res["grad_min_ms"], res["grad_first_ms"], (_, g0) = timed(
        lambda: value_and_grad(params0, tok0), reps)
    res["fwd_hvp_ms"], res["fwd_hvp_min_ms"], res["fwd_hvp_first_ms"], (_, hv) = timed(
        lambda: fwd_hvp(params0, tok0, vec), reps)
    res["loss_init"] = float(loss0)
    res["grad_norm"] = norm(g0)
    res["hvp_norm"] = norm(hv)
    res["v_hvp"] = float(sum(float((a.double() * b.double()).sum()) for a, b in zip(vec, hv)))
    res["hvp_first3_tok_emb"] = hv[0].flatten()[:3].double().tolist()

    # Deterministic training for the check: losses at steps 0 and CHECK_STEPS.
    params = [p.detach().clone().requires_grad_(True) for p in params0]
    opt = make_optimizer(params)
    losses = [float(train_step(params, opt, tokens_of_step(t))) for t in range(CHECK_STEPS + 1)]
    res["loss_step0"], res[f"loss_step{CHECK_STEPS}"] = losses[0], losses[CHECK_STEPS]
    res["param_norm_after_51_steps"] = norm([p.detach() for p in params])

    # step_ms: continue training from there, a fresh (pre-built) batch every call.
    n_calls = reps + 3
    batches = iter([tokens_of_step(CHECK_STEPS + 1 + i) for i in range(n_calls)])
    res["step_ms"], res["step_min_ms"], _, _ = timed(lambda: train_step(params, opt, next(batches)), reps)

    out = {"gpt": res, "machine": mgdata.machine_info(ARGS.threads)}
    out["machine"].update(framework="torch", version=torch.__version__, reps=reps,
                          torch_threads=torch.get_num_threads())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
