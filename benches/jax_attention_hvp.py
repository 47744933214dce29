"""The attention_b1_h4_n512_d64 workload of examples/attention_bench.rs in JAX (jit, CPU, float32).

loss(Q, K, V) = sum(softmax(scale * Q Kᵀ) V * R), non-causal, scale 1/sqrt(d). Times (medians after
warm-up, ms) the forward, the gradient, and the Hessian-vector product *reverse over reverse*:
    grad(lambda p: vdot(grad(loss)(p), v))(p)
which is what metagrad's `hvp` does (jax.jvp(jax.grad(...)) would be forward over reverse).
Prints one JSON object.

    python benches/jax_attention_hvp.py [reps] [n] [d]

Needs only `pip install jax` (CPU); keep it out of the crate.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_platforms", "cpu")


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    d = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    b, h = 1, 4
    scale = 1.0 / d**0.5
    keys = jax.random.split(jax.random.PRNGKey(0), 7)
    shape = (b, h, n, d)
    q, k, v, r, vq, vk, vv = (jax.random.normal(key, shape, jnp.float32) for key in keys)
    params, direction = (q, k, v), (vq, vk, vv)

    def attention(p):
        q, k, v = p
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * scale
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)

    def loss(p):
        return jnp.vdot(attention(p), r)

    def tree_vdot(x, y):
        return sum(jnp.vdot(a, b) for a, b in zip(x, y))

    forward = jax.jit(attention)
    gradient = jax.jit(jax.grad(loss))
    hvp = jax.jit(lambda p, t: jax.grad(lambda p: tree_vdot(jax.grad(loss)(p), t))(p))

    def med(f, *args):
        for _ in range(3):
            jax.block_until_ready(f(*args))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        return ts[len(ts) // 2]

    fwd, bwd, bob = med(forward, params), med(gradient, params), med(hvp, params, direction)
    flops = b * h * 24 * n * n * d
    print(
        json.dumps(
            {
                "workload": f"attention_b{b}_h{h}_n{n}_d{d}",
                "dtype": "float32",
                "jax": jax.__version__,
                "cpus": os.cpu_count(),
                "reps": reps,
                "forward_ms": round(fwd, 3),
                "gradient_ms": round(bwd, 3),
                "bob_ms": round(bob, 3),
                "bob_gflops": round(flops / (bob * 1e-3) / 1e9, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
