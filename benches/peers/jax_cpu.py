"""JAX (jit, CPU, float32) peer of metagrad's bob_throughput: one JSON object keyed by workload.

    python benches/peers/jax_cpu.py [--threads 2] [--reps 10] [--workload NAME]

The same workloads, data and JSON layout as torch_cpu.py. Each function is jitted; the first warm-up
call compiles it, and every timed call ends with block_until_ready. Data (x, labels, R) are jit
arguments, not closed-over constants, so XLA cannot fold them. Per workload:
- forward_ms: jit(loss);
- backward_ms: jit(grad(loss)), which includes its forward (jit gives no taped forward to exclude);
- bob_ms: jit of the reverse-over-reverse Hessian-vector product
  grad(lambda p: vdot(grad(loss)(p), v))(p), including its forward;
- peak_rss_mib: resident memory growth during the last (untimed) warm-up bob (see _common.peak_rss_growth).

Threads: JAX has no exact CPU thread setting. Before jax is imported, XLA_FLAGS gets
`--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=N` (XLA accepts the bare second token
and, as of jaxlib 0.10, appears to ignore it), and the process is pinned to N of its allowed CPUs with
sched_setaffinity, which bounds the thread pools XLA sizes from the schedulable CPUs. Both are recorded
in the JSON as `thread_control`.
"""
import os
import sys

import _common as c

ARGS = c.parse_args("JAX")
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={ARGS.threads}"])
)
_allowed = sorted(os.sched_getaffinity(0))
if ARGS.threads < len(_allowed):
    os.sched_setaffinity(0, _allowed[: ARGS.threads])
elif ARGS.threads > len(_allowed):
    print(f"jax_cpu: --threads {ARGS.threads} exceeds the {len(_allowed)} CPUs this process may use", file=sys.stderr)

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402

jax.config.update("jax_platforms", "cpu")


def mlp():
    x, labels, params, v = c.mlp_data()

    def loss(p, data):
        h, labels = data
        for l in range(0, len(p), 2):
            h = h @ p[l] + p[l + 1]
            if l + 2 < len(p):
                h = jnp.tanh(h)
        logp = jax.nn.log_softmax(h, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    return loss, params, v, (x, labels.astype("int32"))


def attention(n):
    r, params, v = c.attention_data(n)

    def loss(p, r):
        q, k, vv = p
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * 0.125
        return jnp.vdot(jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), vv), r)

    return loss, params, v, r


def conv():
    x, r, params, v = c.conv_data()

    def conv2d(a, w):
        return jax.lax.conv_general_dilated(a, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def loss(p, data):
        x, r = data
        y = conv2d(jnp.tanh(conv2d(x, p[0])), p[1])
        return jnp.vdot(y, r) / r.size

    return loss, params, v, (x, r)


def measure(loss, params_np, v_np, data_np, reps):
    params, v, data = jax.device_put((tuple(params_np), tuple(v_np), data_np))
    forward = jax.jit(loss)
    backward = jax.jit(jax.grad(loss))

    def hvp(p, v, data):
        return jax.grad(lambda q: sum(jnp.vdot(g, d) for g, d in zip(jax.grad(loss)(q, data), v)))(p)

    bob = jax.jit(hvp)

    def timed(name, f, *args):
        def run():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            return {name: c.elapsed_ms(t0)}

        return run

    runs = [timed("forward", forward, params, data), timed("backward", backward, params, data), timed("bob", bob, params, v, data)]
    out = c.time_reps(runs, reps, peak_of=2)
    out["bob_over_backward"] = round(out["bob_ms"] / out["backward_ms"], 3)
    out["params"] = sum(p.size for p in params)
    return out


def timed_matmul(a, b):
    a, b = jax.device_put((a, b))
    matmul = jax.jit(jnp.matmul)

    def run():
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        return c.elapsed_ms(t0)

    return run


def main():
    common = {
        "framework": f"jax {jax.__version__} jaxlib {jaxlib.__version__}",
        "threads": ARGS.threads,
        "thread_control": {"XLA_FLAGS": os.environ["XLA_FLAGS"], "affinity": sorted(os.sched_getaffinity(0))},
        "dtype": "float32",
        "device": str(jax.devices()[0]),
    }
    builders = {"mlp_784_512_512_10_b512": mlp, "conv_b32_c3_32_32_hw32_k3": conv}
    builders.update({name: (lambda n=n: attention(n)) for name, n in c.ATTENTION.items()})
    results = {}
    for name in c.selected(ARGS):
        reps = c.reps_for(name, ARGS.reps)
        if name == "matmul":
            results[name] = {**c.matmul_entry(timed_matmul, reps), **common}
            continue
        entry = measure(*builders[name](), reps)
        if name in c.ATTENTION:
            entry["bob_gflops"] = c.attention_bob_gflops(c.ATTENTION[name], entry["bob_ms"])
        results[name] = {**entry, "backward_includes_forward": True, "reps": reps, **common}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
