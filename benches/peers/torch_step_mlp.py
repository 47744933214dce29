"""Workload `step_mlp` in PyTorch (eager, CPU, float32): a training run and its exact metagradient.

Spec (shared with jax_step_mlp.py and metagrad's Rust side; data from mgdata.py):
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

Measures (medians over --reps runs after one warm-up run):
  * train_ms:    a Python loop of T steps: autograd.grad of the batch loss, then in-place momentum
                 and parameter updates under torch.no_grad().
  * metagrad_ms: ∂φ/∂(lr, w) by reverse mode through the whole unrolled run ("store-everything"):
                 every step takes g = autograd.grad(loss, params, create_graph=True) and builds the
                 new momentum and parameters functionally, so the graph of all T steps is kept;
                 one final autograd.grad(φ, (lr, w)).
and prints φ, d_lr[:3], d_w[:3], ‖d_lr‖₂ and ‖d_w‖₂ for the numerical cross-check.
Prints one JSON object {"b64": {...}, "b512": {...}, "machine": {...}}, as jax_step_mlp.py does.

    python benches/peers/torch_step_mlp.py [--reps 5] [--threads 2] [--batches 64,512]
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
mgdata.limit_threads(ARGS.threads)  # before importing torch

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(ARGS.threads)


def make_data():
    """Parameters at init and the train/validation sets, exactly as the spec builds them."""
    params0 = [
        mgdata.normal(5, (D_IN, D_HID)) / np.float32(np.sqrt(D_IN)),
        np.zeros(D_HID, np.float32),
        mgdata.normal(6, (D_HID, D_OUT)) / np.float32(np.sqrt(D_HID)),
        np.zeros(D_OUT, np.float32),
    ]
    data = dict(
        x=torch.from_numpy(mgdata.normal(1, (N_TRAIN, D_IN))),
        y=torch.from_numpy(mgdata.labels(2, N_TRAIN, D_OUT)).long(),
        xv=torch.from_numpy(mgdata.normal(3, (N_VAL, D_IN))),
        yv=torch.from_numpy(mgdata.labels(4, N_VAL, D_OUT)).long(),
    )
    return [torch.from_numpy(p) for p in params0], data


def logits_of(params, x):
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1 + b1) @ w2 + b2


def batch_indices(batch):
    """[T, B] table of (B·t + j) mod 2048."""
    return (batch * torch.arange(T)[:, None] + torch.arange(batch)[None, :]) % N_TRAIN


def train_plain(params0, data, lr, w, idx_table):
    """Ordinary training: T steps, in-place updates, no graph across steps. Returns final params."""
    batch = idx_table.shape[1]
    params = [p.clone().requires_grad_(True) for p in params0]
    mom = [torch.zeros_like(p) for p in params0]
    for t in range(T):
        idx = idx_table[t]
        ce = F.cross_entropy(logits_of(params, data["x"][idx]), data["y"][idx], reduction="none")
        loss = (w[idx] * ce).sum() / batch
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, m, g in zip(params, mom, grads):
                m.mul_(MOMENTUM).add_(g)
                p.sub_(lr[t] * m)
    return [p.detach() for p in params]


def phi_and_metagrad(params0, data, lr, w, idx_table):
    """φ and ∂φ/∂(lr, w), reverse mode through the whole unrolled run (graph of all steps kept)."""
    batch = idx_table.shape[1]
    lr = lr.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    # The initial parameters must require grad so that step 0 can differentiate the loss w.r.t. them.
    params = [p.clone().requires_grad_(True) for p in params0]
    mom = [torch.zeros_like(p) for p in params0]
    for t in range(T):
        idx = idx_table[t]
        ce = F.cross_entropy(logits_of(params, data["x"][idx]), data["y"][idx], reduction="none")
        loss = (w[idx] * ce).sum() / batch
        grads = torch.autograd.grad(loss, params, create_graph=True)
        mom = [MOMENTUM * m + g for m, g in zip(mom, grads)]
        params = [p - lr[t] * m for p, m in zip(params, mom)]
    phi = F.cross_entropy(logits_of(params, data["xv"]), data["yv"])
    d_lr, d_w = torch.autograd.grad(phi, (lr, w))
    return phi.detach(), d_lr, d_w


def timed(fn, reps):
    """(median ms, min ms, last result): one warm-up call, then reps timed calls."""
    out = fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), out


def run(batch, params0, data, reps):
    idx_table = batch_indices(batch)
    lr = torch.full((T,), LR0, dtype=torch.float32)
    w = torch.ones(N_TRAIN, dtype=torch.float32)
    train_ms, train_min, final = timed(lambda: train_plain(params0, data, lr, w, idx_table), reps)
    meta_ms, meta_min, (phi, d_lr, d_w) = timed(lambda: phi_and_metagrad(params0, data, lr, w, idx_table), reps)
    with torch.no_grad():
        phi_plain = F.cross_entropy(logits_of(final, data["xv"]), data["yv"])
    d_lr, d_w = d_lr.double().numpy(), d_w.double().numpy()
    return {
        "batch": batch,
        "steps": T,
        "train_ms": train_ms,
        "train_min_ms": train_min,
        "metagrad_ms": meta_ms,
        "metagrad_min_ms": meta_min,
        "phi": float(phi),
        "phi_train_only": float(phi_plain),  # φ from the plain training loop (should match)
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
    out["machine"].update(framework="torch", version=torch.__version__, reps=ARGS.reps,
                          torch_threads=torch.get_num_threads())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
