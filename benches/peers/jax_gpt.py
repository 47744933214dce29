"""Workload `gpt` in JAX (jit, CPU, float32): a tiny character GPT's step, gradient and HVP.

Spec (shared with torch_gpt.py and metagrad's Rust side; data from mgdata.py):
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
    (The bias corrections are computed in float64 on the host and passed in as float32 scalars.)

Measures (medians over --reps calls after warm-up, ms):
  * step_ms:     one jit'd training step (forward, gradient, AdamW update), a fresh batch each call.
  * forward_ms:  the loss;  grad_ms: loss and gradient (value_and_grad);
  * fwd_hvp_ms:  loss and the Hessian-vector product of the loss w.r.t. all parameters along the
                 fixed direction v (v_i = normal(2000 + i) for parameter i), reverse over reverse:
                 grad of θ ↦ <grad(loss)(θ), v>.
  forward/grad/hvp are measured at the initial parameters on the tokens of step 0.
Checks printed: loss_step0 and loss_step50, where loss_step<s> is the loss of the parameters after
s AdamW steps on the tokens of step s (so loss_step0 is the loss at init on step 0's batch), the
gradient's and the HVP's L2 norms (at init, step 0 tokens) and <v, Hv>.
Prints one JSON object {"gpt": {...}, "machine": {...}}.

    python benches/peers/jax_gpt.py [--reps 20] [--threads 2] [--size small|example]
"""

import argparse
import functools
import json
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
    return ap.parse_args()


ARGS = parse_args()
if ARGS.size == "example":
    V, L, D, D_MLP = 76, 64, 64, 256
    HD = D // H
    N_PARAMS = 109056
mgdata.limit_threads(ARGS.threads, jax=True)  # must precede `import jax`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_platforms", "cpu")


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
            out.append(np.ones(shape, np.float32))
        elif init == "zeros":
            out.append(np.zeros(shape, np.float32))
        else:
            out.append(mgdata.normal(init, shape) * np.float32(0.02))
    assert sum(p.size for p in out) == N_PARAMS, sum(p.size for p in out)
    return out


def direction():
    """The fixed HVP direction: v_i = normal(2000 + i) for parameter i (unscaled)."""
    return [mgdata.normal(2000 + i, shape) for i, (_, shape, _) in enumerate(param_specs())]


def tokens_of_step(s):
    """tokens[b, t] = floor(uniform(1000 + s, b·33 + t) · 65), [B, L+1] int32."""
    return np.floor(mgdata.uniform(1000 + s, (B, L + 1)) * V).astype(np.int32)


def layer_norm(x, w, b):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)  # biased variance
    return (x - mu) * jax.lax.rsqrt(var + LN_EPS) * w + b


def loss_fn(params, tokens):
    params = list(params)
    tok_emb, pos_emb = params[0], params[1]
    inputs, targets = tokens[:, :L], tokens[:, 1:]
    h = tok_emb[inputs] + pos_emb  # [B, L, D]
    causal = jnp.tril(jnp.ones((L, L), bool))
    for l in range(N_BLOCKS):
        ln1w, ln1b, wqkv, bqkv, wo, bo, ln2w, ln2b, w1, b1, w2, b2 = params[2 + 12 * l: 14 + 12 * l]
        qkv = layer_norm(h, ln1w, ln1b) @ wqkv + bqkv  # [B, L, 3D]
        q, k, v = (x.reshape(B, L, H, HD).transpose(0, 2, 1, 3) for x in jnp.split(qkv, 3, axis=-1))
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.float32(np.sqrt(HD))
        s = jnp.where(causal, s, -jnp.inf)
        o = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)
        h = h + o.transpose(0, 2, 1, 3).reshape(B, L, D) @ wo + bo
        h = h + jax.nn.gelu(layer_norm(h, ln2w, ln2b) @ w1 + b1, approximate=False) @ w2 + b2
    logits = layer_norm(h, params[-2], params[-1]) @ tok_emb.T  # tied head, [B, L, V]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def tree_vdot(xs, ys):
    return sum(jnp.vdot(x, y) for x, y in zip(xs, ys))


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))  # update params and moments in place
def train_step(params, m, v, bc1, bc2, tokens):
    """One AdamW step; bc1 = 1 − β1^(t+1), bc2 = 1 − β2^(t+1). Returns (params, m, v, loss).

    params, m and v are donated: the caller's arrays are invalid afterwards."""
    loss, g = jax.value_and_grad(loss_fn)(params, tokens)
    m = [BETA1 * mi + (1 - BETA1) * gi for mi, gi in zip(m, g)]
    v = [BETA2 * vi + (1 - BETA2) * gi * gi for vi, gi in zip(v, g)]
    params = [p - LR * ((mi / bc1) / (jnp.sqrt(vi / bc2) + EPS) + WD * p) for p, mi, vi in zip(params, m, v)]
    return params, m, v, loss


forward = jax.jit(loss_fn)
value_and_grad = jax.jit(jax.value_and_grad(loss_fn))


@jax.jit
def fwd_hvp(params, tokens, vec):
    """(loss, Hv), reverse over reverse: grad of θ ↦ <grad(loss)(θ), v>."""

    def inner(p):
        loss, g = jax.value_and_grad(loss_fn)(p, tokens)
        return tree_vdot(g, vec), loss

    hv, loss = jax.grad(inner, has_aux=True)(params)
    return loss, hv


def bias_corrections(t):
    """(1 − β1^(t+1), 1 − β2^(t+1)) computed in float64, as float32 device scalars."""
    return jnp.float32(1 - BETA1 ** (t + 1)), jnp.float32(1 - BETA2 ** (t + 1))


def timed(fn, reps, warmup=3):
    """(median ms, min ms, compile+first-call ms, last result); fn() must block until done."""
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
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in xs)))


def main():
    reps = ARGS.reps
    params0 = [jnp.asarray(p) for p in init_params()]
    vec = [jnp.asarray(x) for x in direction()]
    tok0 = jnp.asarray(tokens_of_step(0))
    res = {"n_params": N_PARAMS}

    # Forward, gradient and HVP at init on step 0's tokens.
    res["forward_ms"], res["forward_min_ms"], res["forward_first_ms"], loss0 = timed(
        lambda: jax.block_until_ready(forward(params0, tok0)), reps)
    res["grad_ms"], res["grad_min_ms"], res["grad_first_ms"], (_, g0) = timed(
        lambda: jax.block_until_ready(value_and_grad(params0, tok0)), reps)
    res["fwd_hvp_ms"], res["fwd_hvp_min_ms"], res["fwd_hvp_first_ms"], (_, hv) = timed(
        lambda: jax.block_until_ready(fwd_hvp(params0, tok0, vec)), reps)
    res["loss_init"] = float(loss0)
    res["grad_norm"] = norm(g0)
    res["hvp_norm"] = norm(hv)
    res["v_hvp"] = float(sum(np.vdot(np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in zip(vec, hv)))
    res["hvp_first3_tok_emb"] = np.asarray(hv[0]).ravel()[:3].astype(np.float64).tolist()

    # Deterministic training for the check: losses at steps 0 and CHECK_STEPS.
    params = [jnp.array(p, copy=True) for p in params0]  # copies: train_step donates its inputs
    m, v = [jnp.zeros_like(p) for p in params0], [jnp.zeros_like(p) for p in params0]
    losses = []
    for t in range(CHECK_STEPS + 1):
        params, m, v, loss = train_step(params, m, v, *bias_corrections(t), jnp.asarray(tokens_of_step(t)))
        losses.append(float(loss))
    res["loss_step0"], res[f"loss_step{CHECK_STEPS}"] = losses[0], losses[CHECK_STEPS]
    res["param_norm_after_51_steps"] = norm(params)

    # step_ms: continue training from there, a fresh (pre-staged) batch every call.
    n_calls = reps + 3
    t_next = CHECK_STEPS + 1
    batches = [jnp.asarray(tokens_of_step(t_next + i)) for i in range(n_calls)]
    bcs = [bias_corrections(t_next + i) for i in range(n_calls)]
    state = {"p": params, "m": m, "v": v, "i": 0}

    def one_step():
        i = state["i"]
        state["p"], state["m"], state["v"], loss = train_step(state["p"], state["m"], state["v"], *bcs[i], batches[i])
        state["i"] += 1
        return jax.block_until_ready((state["p"], loss))

    res["step_ms"], res["step_min_ms"], _, _ = timed(one_step, reps)

    out = {"gpt": res, "machine": mgdata.machine_info(ARGS.threads)}
    out["machine"].update(framework="jax", version=jax.__version__, reps=reps,
                          xla_flags=os.environ.get("XLA_FLAGS", ""))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
