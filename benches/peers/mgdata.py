"""Deterministic synthetic data shared by the peer benchmarks and metagrad's Rust side.

Spec (both sides must build bit-identical inputs):

    splitmix64(x), uint64 with wrapping arithmetic:
        z = x + 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        return z ^ (z >> 31)
    uniform(stream, i) = (splitmix64(stream * 2**32 + i) >> 11) * 2**-53          f64 in [0, 1)
    normal(stream, i)  = sqrt(-2 ln(1 - uniform(stream, 2i))) * cos(2π uniform(stream, 2i+1))
                         computed in f64, then cast to float32

Arrays are filled in row-major order with i = the flat index.

Also holds `machine_info()` (CPU model, core counts) for the benchmarks' JSON output.

Self-test (prints values for the Rust side to check against):

    python benches/peers/mgdata.py
"""

import os
import platform

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x):
    """splitmix64 finaliser, elementwise on a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def uniform_at(stream, idx):
    """uniform(stream, i) for a uint64 index array `idx`, float64 in [0, 1)."""
    idx = np.asarray(idx, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (np.uint64(stream) << np.uint64(32)) + idx
    return (splitmix64(x) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def uniform(stream, shape):
    """Array of `shape` filled row-major with uniform(stream, i), float64."""
    n = int(np.prod(shape, dtype=np.int64))
    return uniform_at(stream, np.arange(n, dtype=np.uint64)).reshape(shape)


def normal(stream, shape):
    """Array of `shape` filled row-major with normal(stream, i) (Box-Muller in f64), float32."""
    n = int(np.prod(shape, dtype=np.int64))
    i = np.arange(n, dtype=np.uint64)
    u1 = uniform_at(stream, 2 * i)
    u2 = uniform_at(stream, 2 * i + 1)
    z = np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)
    return z.astype(np.float32).reshape(shape)


def labels(stream, n, classes):
    """floor(uniform(stream, i) * classes) for i < n, as int32."""
    return np.floor(uniform(stream, (n,)) * classes).astype(np.int32)


def limit_threads(threads, jax=False):
    """Restrict this process to `threads` cores; call before importing jax or torch.

    Pins the process to the first `threads` cores it may run on (XLA's CPU client sizes its thread
    pool from the affinity mask) and, for JAX, sets XLA_FLAGS intra_op_parallelism_threads
    (with Eigen multi-threading off when threads == 1). torch.set_num_threads is the caller's.
    """
    if hasattr(os, "sched_getaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        if threads < len(allowed):
            os.sched_setaffinity(0, allowed[:threads])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if jax:
        # XLA reads a bare first token as a flag-file name, so a `--` flag must come first.
        eigen = "false" if threads == 1 else "true"
        flags = os.environ.get("XLA_FLAGS", "")
        flags += f" --xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}"
        os.environ["XLA_FLAGS"] = flags.strip()


def machine_info(threads=None):
    """CPU model and core counts, for the JSON output."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    info = {
        "cpu_model": model,
        "isa": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512vl", "avx512_bf16", "amx_tile")},
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if threads is not None:
        info["threads"] = threads
    return info


def _self_test():
    np.set_printoptions(precision=17)
    print("splitmix64(0)   =", hex(int(splitmix64(np.uint64(0)))))
    print("uniform(1, 0..4):", [repr(float(u)) for u in uniform(1, (5,))])
    print("normal(1, 0..4) f64:", end=" ")
    i = np.arange(5, dtype=np.uint64)
    z = np.sqrt(-2.0 * np.log(1.0 - uniform_at(1, 2 * i))) * np.cos(2.0 * np.pi * uniform_at(1, 2 * i + 1))
    print([repr(float(v)) for v in z])
    print("normal(1, 0..4) f32:", [repr(float(v)) for v in normal(1, (5,))])
    print("labels(2, 0..9, 10):", labels(2, 10, 10).tolist())
    # Known-answer check: splitmix64 of the state after one increment from seed 0 (i.e. the first
    # output of the reference splitmix64 generator seeded with 0) is 0xE220A8397B1DCDAF.
    assert int(splitmix64(np.uint64(0))) == 0xE220A8397B1DCDAF
    # The vectorised numpy version against a scalar pure-Python one (arbitrary-precision ints).
    m64 = (1 << 64) - 1

    def splitmix64_py(x):
        z = (x + 0x9E3779B97F4A7C15) & m64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        return z ^ (z >> 31)

    for stream in (0, 1, 5, 1000, 2027):
        idx = np.array([0, 1, 12345, 2**31 + 7, 2**32 - 1], dtype=np.uint64)
        got = uniform_at(stream, idx)
        want = [(splitmix64_py((stream << 32) + int(i)) >> 11) * 2.0**-53 for i in idx]
        assert got.tolist() == want, (stream, got, want)
    print("ok")


if __name__ == "__main__":
    _self_test()
