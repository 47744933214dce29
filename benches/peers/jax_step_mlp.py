"""Workload `step_mlp` in JAX (jit, CPU, float32): a training run and its exact metagradient.

Spec (shared with torch_step_mlp.py and metagrad's Rust side; data from mgdata.py):
  * MLP 784-128-10, tanh after the first layer, float32.
    W1 [784,128] = normal(5)/sqrt(784), b1 [128] = 0, W2 [128,10] = normal(6)/sqrt(128), b2 [10] = 0.
  * Train X [2048,784] = normal(1), y [2048] = floor(uniform(2, i)·10);
    validation Xv [512,784] = normal(3), yv [512] = floor(uniform(4, i)·10).
  * T = 200 steps of SGD with heavy-ball momentum 0.9 (PyTorch convention), buffers start at 0:
        v' = 0.9 v + g;   θ' = θ − lr_t · v'
    Step t uses the batch indices (B·t + j) mod 2048, j < B; B = 64 and B = 512.
  * Metaparameters lr [T] (all 0.05) and per-example weights w [2048] (all 1.0); the training loss
    at step t is Σ_j w[idx_j] · CE_j / B.
  * φ = mean cross-entropy on the validation set after T steps.

Measures (medians over --reps calls after a warm-up call; compile times reported separately):
  * train_ms:    jit of a lax.scan over the T steps returning the final parameters.
  * metagrad_ms: jax.value_and_grad of (lr, w) ↦ φ(train(lr, w)) through the same scan, reverse mode
                 (JAX keeps the residuals of every step: "store-everything").
and prints φ, d_lr[:3], d_w[:3], ‖d_lr‖₂ and ‖d_w‖₂ for the numerical cross-check.
Prints one JSON object {"b64": {...}, "b512": {...}, "machine": {...}}.

    python benches/peers/jax_step_mlp.py [--reps 5] [--threads 2] [--batches 64,512]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgdata  # noqa: E402

N_TRAIN, N_VAL, D_IN, D_HID, D_OUT = 2048, 512, 784, 128, 10
T, MOMENTUM, LR0 = 200, 0.9, 0.05


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="64,512", help="comma-separated batch sizes")
    return ap.parse_args()


ARGS = parse_args()
mgdata.limit_threads(ARGS.threads, jax=True)  # must precede `import jax`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_platforms", "cpu")


def make_data():
    """Parameters at init and the train/validation sets, exactly as the spec builds them."""
    params0 = (
        mgdata.normal(5, (D_IN, D_HID)) / np.float32(np.sqrt(D_IN)),
        np.zeros(D_HID, np.float32),
        mgdata.normal(6, (D_HID, D_OUT)) / np.float32(np.sqrt(D_HID)),
        np.zeros(D_OUT, np.float32),
    )
    data = dict(
        x=mgdata.normal(1, (N_TRAIN, D_IN)),
        y=mgdata.labels(2, N_TRAIN, D_OUT),
        xv=mgdata.normal(3, (N_VAL, D_IN)),
        yv=mgdata.labels(4, N_VAL, D_OUT),
    )
    return tuple(jnp.asarray(p) for p in params0), {k: jnp.asarray(v) for k, v in data.items()}


def logits_of(params, x):
    w1, b1, w2, b2 = params
    return jnp.tanh(x @ w1 + b1) @ w2 + b2


def cross_entropy(logits, y):
    """Per-example cross-entropy of logits vs integer labels."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def make_fns(batch):
    # Batch indices for every step, [T, B]: (B·t + j) mod 2048.
    idx_table = jnp.asarray((batch * np.arange(T)[:, None] + np.arange(batch)[None, :]) % N_TRAIN, jnp.int32)

    def train(lr, w, params0, data):
        """T steps of momentum SGD as a lax.scan; returns the final parameters."""

        def batch_loss(params, idx):
            ce = cross_entropy(logits_of(params, data["x"][idx]), data["y"][idx])
            return jnp.sum(w[idx] * ce) / batch

        def step(carry, xs):
            params, mom = carry
            lr_t, idx = xs
            g = jax.grad(batch_loss)(params, idx)
            mom = tuple(MOMENTUM * m + gi for m, gi in zip(mom, g))
            params = tuple(p - lr_t * m for p, m in zip(params, mom))
            return (params, mom), None

        mom0 = tuple(jnp.zeros_like(p) for p in params0)
        (params, _), _ = jax.lax.scan(step, (params0, mom0), (lr, idx_table))
        return params

    def phi(lr, w, params0, data):
        """Mean validation cross-entropy after training with metaparameters (lr, w)."""
        return jnp.mean(cross_entropy(logits_of(train(lr, w, params0, data), data["xv"]), data["yv"]))

    train_fn = jax.jit(train)
    metagrad_fn = jax.jit(jax.value_and_grad(phi, argnums=(0, 1)))
    phi_fn = jax.jit(phi)
    return train_fn, metagrad_fn, phi_fn


def compile_and_time(fn, args, reps):
    """(compile ms, median ms, min ms, last result) of a jitted fn: AOT compile, 1 warm-up, reps timed."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_ms = (time.perf_counter() - t0) * 1e3
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return compile_ms, statistics.median(times), min(times), out


def run(batch, params0, data, reps):
    train_fn, metagrad_fn, phi_fn = make_fns(batch)
    lr = jnp.full((T,), LR0, jnp.float32)
    w = jnp.ones((N_TRAIN,), jnp.float32)
    args = (lr, w, params0, data)
    c_train, train_ms, train_min, _ = compile_and_time(train_fn, args, reps)
    c_meta, meta_ms, meta_min, (phi, (d_lr, d_w)) = compile_and_time(metagrad_fn, args, reps)
    d_lr, d_w = np.asarray(d_lr, np.float64), np.asarray(d_w, np.float64)
    return {
        "batch": batch,
        "steps": T,
        "train_ms": train_ms,
        "train_min_ms": train_min,
        "metagrad_ms": meta_ms,
        "metagrad_min_ms": meta_min,
        "compile_train_ms": c_train,
        "compile_metagrad_ms": c_meta,
        "phi": float(phi),
        "phi_train_only": float(phi_fn(*args)),  # φ from the forward-only program (should match)
        "d_lr_first3": d_lr[:3].tolist(),
        "d_w_first3": d_w[:3].tolist(),
        "d_lr_norm": float(np.linalg.norm(d_lr)),
        "d_w_norm": float(np.linalg.norm(d_w)),
        "d_lr_sum": float(d_lr.sum()),
        "d_w_sum": float(d_w.sum()),
    }


def main():
    params0, data = make_data()
    out = {}
    for b in (int(s) for s in ARGS.batches.split(",")):
        out[f"b{b}"] = run(b, params0, data, ARGS.reps)
    out["machine"] = mgdata.machine_info(ARGS.threads)
    out["machine"].update(framework="jax", version=jax.__version__, reps=ARGS.reps,
                          xla_flags=os.environ.get("XLA_FLAGS", ""))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
