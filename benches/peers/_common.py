"""Shared by torch_cpu.py and jax_cpu.py: command line, workload data, timing and peak-RSS helpers.

Imports neither torch nor jax (jax_cpu.py must set its environment before importing jax). All data
come from NumPy's default_rng(0), so both peers see the same inputs (values differ from metagrad's own
generator; shapes and work are the same).
"""
import argparse
import collections
import ctypes
import resource
import statistics
import time

import numpy as np

# The attention workloads by name -> N, and the timed repetitions each gets at most (the large ones
# cost seconds per repetition on 2 cores; each JSON entry's `reps` says what was used).
ATTENTION = {f"attention_b1_h4_n{n}_d64": n for n in (512, 2048, 4096)}
ATTENTION_MAX_REPS = {2048: 5, 4096: 3}
WARMUPS = 2
WORKLOADS = ["mlp_784_512_512_10_b512", *ATTENTION, "conv_b32_c3_32_32_hw32_k3", "matmul"]
# (m, k, n) of the matmul workload: the MLP's products (784x512x512 is the shape of xᵀ·g, timed as a
# contiguous [784, 512] @ [512, 512]) and a large square one.
# The MLP benchmark's products, the step_mlp training step's (batch 64), then 2048³.
MATMUL_SHAPES = [(512, 784, 512), (512, 512, 512), (512, 512, 10), (784, 512, 512), (64, 784, 128), (784, 64, 128), (2048, 2048, 2048)]


def parse_args(framework):
    ap = argparse.ArgumentParser(description=f"{framework} CPU float32 peer of metagrad's bob_throughput; prints one JSON object.")
    ap.add_argument("--threads", type=int, default=2, help="compute threads (default 2)")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions, after 2 warm-ups (default 10)")
    ap.add_argument("--workload", choices=WORKLOADS, help="run only this workload (default: all)")
    args = ap.parse_args()
    if args.threads < 1 or args.reps < 1:
        ap.error("--threads and --reps must be positive")
    return args


def selected(args):
    return [w for w in WORKLOADS if args.workload in (None, w)]


def reps_for(name, reps):
    """The timed repetitions for workload `name`: `reps`, capped for the large attention workloads."""
    cap = ATTENTION_MAX_REPS.get(ATTENTION.get(name))
    return reps if cap is None else min(reps, cap)


def attention_bob_gflops(n, bob_ms):
    """Effective GFLOP/s of an attention bob, counting a nominal 24·N²·d flops per head (4 heads, d 64),
    as metagrad's bob_throughput does."""
    return round(4 * 24 * n * n * 64 / (bob_ms * 1e-3) / 1e9, 2)


def _randn(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def mlp_data():
    """MLP 784-512-512-10, batch 512: (x, labels, params [W1, b1, W2, b2, W3, b3], direction v).

    W_l is [in, out] randn/sqrt(in), biases zero, x randn, labels uniform over the classes 0..9."""
    rng = np.random.default_rng(0)
    widths = [784, 512, 512, 10]
    params = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        params += [_randn(rng, (fan_in, fan_out), fan_in**-0.5), np.zeros(fan_out, np.float32)]
    x = _randn(rng, (512, 784))
    labels = rng.integers(0, 10, 512)
    return x, labels, params, [_randn(rng, p.shape) for p in params]


def attention_data(n):
    """Q, K, V, R randn [1, 4, n, 64]: (R, params [Q, K, V], direction v)."""
    rng = np.random.default_rng(0)
    q, k, v, r = (_randn(rng, (1, 4, n, 64)) for _ in range(4))
    return r, [q, k, v], [_randn(rng, (1, 4, n, 64)) for _ in range(3)]


def conv_data():
    """x [32,3,32,32], R [32,32,32,32] randn; w1 [32,3,3,3] randn/sqrt(27), w2 [32,32,3,3] randn/sqrt(288):
    (x, R, params [w1, w2], direction v)."""
    rng = np.random.default_rng(0)
    x, r = _randn(rng, (32, 3, 32, 32)), _randn(rng, (32, 32, 32, 32))
    params = [_randn(rng, (32, 3, 3, 3), 27**-0.5), _randn(rng, (32, 32, 3, 3), 288**-0.5)]
    return x, r, params, [_randn(rng, p.shape) for p in params]


def matmul_data(m, k, n):
    rng = np.random.default_rng(0)
    return _randn(rng, (m, k)), _randn(rng, (k, n))


def time_reps(fns, reps, peak_of=None):
    """Runs each of `fns` WARMUPS times untimed, then `reps` times, interleaved. Each call returns a dict
    {name: elapsed ms}; the result is {name_ms: median, name_min_ms: best} over the timed calls, in ms
    rounded to the µs. With `peak_of` (an index into `fns`), that function's last warm-up call runs
    under peak_rss_growth, adding peak_rss_mib and peak_rss_method (JAX has compiled by then)."""
    peak = {}
    for w in range(WARMUPS):
        for i, f in enumerate(fns):
            if i == peak_of and w == WARMUPS - 1:
                peak["peak_rss_mib"], peak["peak_rss_method"] = peak_rss_growth(f)
            else:
                f()
    times = collections.defaultdict(list)
    for _ in range(reps):
        for f in fns:
            for k, t in f().items():
                times[k].append(t)
    out = {}
    for k, ts in times.items():
        out[f"{k}_ms"] = round(statistics.median(ts), 3)
        out[f"{k}_min_ms"] = round(min(ts), 3)
    return {**out, **peak}


def elapsed_ms(t0):
    return (time.perf_counter() - t0) * 1e3


def _status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def peak_rss_growth(fn):
    """Peak resident memory growth (MiB) while `fn()` runs, and how it was measured.

    Freed heap memory is first handed back to the OS (glibc malloc_trim) so the baseline is the live
    memory; then the high-water mark VmHWM is reset (writing 5 to /proc/self/clear_refs) and read after
    `fn`. Where clear_refs is not writable, falls back to the growth of getrusage's ru_maxrss, which is
    only nonzero if `fn` sets a new process-wide peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = _status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        fn()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - maxrss
        return round(grown, 1), "ru_maxrss growth (lower bound)"
    fn()
    return round(_status_mib("VmHWM") - before, 1), "VmHWM (reset by clear_refs) minus VmRSS before, after malloc_trim"


def matmul_entry(timed_matmul, reps):
    """GFLOP/s on MATMUL_SHAPES, keyed "MxKxN". `timed_matmul(a, b)` takes NumPy operands and returns a
    callable that runs one product, waits for it and returns its elapsed ms. One product per
    repetition, after WARMUPS untimed ones."""
    out = {"reps": reps}
    for m, k, n in MATMUL_SHAPES:
        run = timed_matmul(*matmul_data(m, k, n))
        ms = time_reps([lambda: {"t": run()}], reps)
        gflops = lambda t: round(2 * m * k * n / (t * 1e-3) / 1e9, 2)
        out[f"{m}x{k}x{n}"] = {"gflops_median": gflops(ms["t_ms"]), "gflops_best": gflops(ms["t_min_ms"]), "ms_median": ms["t_ms"]}
    return out
