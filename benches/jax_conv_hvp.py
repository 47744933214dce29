"""The conv_b32_c3_32_32_hw32_k3 workload of examples/conv_bench.rs in JAX (CPU, float32, jit).

    python benches/jax_conv_hvp.py [--reps N]

x is 32x3x32x32, w1 32x3x3x3, w2 32x32x3x3, stride 1, padding 1 (NCHW / OIHW);
loss = sum(conv(tanh(conv(x, w1)), w2) * R) / numel. Each function is jitted and timed after two
warm-up calls (block_until_ready); medians over the repetitions are printed as JSON:
- forward_ms: the loss;
- backward_ms: jax.grad(loss) with respect to (w1, w2);
- hvp_ms: the Hessian-vector product by reverse over reverse,
  jax.grad(lambda p: vdot(jax.grad(loss)(p), v)), which includes its own forward pass.
Random data come from NumPy (values differ from the Rust run; the shapes and work are the same).
"""
import argparse
import json
import os
import statistics
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = jnp.asarray(rng.standard_normal((32, 3, 32, 32)).astype(f32))
    r = jnp.asarray(rng.standard_normal((32, 32, 32, 32)).astype(f32))
    params = (
        jnp.asarray((rng.standard_normal((32, 3, 3, 3)) / np.sqrt(27)).astype(f32)),
        jnp.asarray((rng.standard_normal((32, 32, 3, 3)) / np.sqrt(288)).astype(f32)),
    )
    v = (jnp.asarray(rng.standard_normal((32, 3, 3, 3)).astype(f32)), jnp.asarray(rng.standard_normal((32, 32, 3, 3)).astype(f32)))

    def conv(a, w):
        return jax.lax.conv_general_dilated(a, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def loss(p):
        y = conv(jnp.tanh(conv(x, p[0])), p[1])
        return jnp.sum(y * r) / y.size

    fwd = jax.jit(loss)
    bwd = jax.jit(jax.grad(loss))

    def hvp(p, v):
        return jax.grad(lambda q: sum(jnp.vdot(g, d) for g, d in zip(jax.grad(loss)(q), v)))(p)

    hvp = jax.jit(hvp)
    fns = {"forward_ms": lambda: fwd(params), "backward_ms": lambda: bwd(params), "hvp_ms": lambda: hvp(params, v)}
    for f in fns.values():
        for _ in range(2):
            jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(args.reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append((time.perf_counter() - t0) * 1e3)
    out = {"workload": "conv_b32_c3_32_32_hw32_k3", "framework": f"jax {jax.__version__}", "device": str(jax.devices()[0]), "reps": args.reps}
    out.update({k: round(statistics.median(t), 3) for k, t in times.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
