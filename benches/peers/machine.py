"""Prints a one-line JSON object describing this machine, the header beside every peer figure:
CPU model, logical cores (and how many this process may run on), the ISA flags that decide which
kernels run, and the versions (__version__, with any build tag such as +cu128) of the peer
libraries that are importable (null for the others)."""
import importlib
import json
import os
import platform

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512vl", "avx512_bf16", "amx_tile")


def cpuinfo():
    """The first processor's "model name" and "flags" fields of /proc/cpuinfo."""
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags") and key not in fields:
                fields[key] = value.strip()
    return fields.get("model name", platform.processor() or "unknown"), set(fields.get("flags", "").split())


def version(module):
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def main():
    model, flags = cpuinfo()
    print(
        json.dumps(
            {
                "cpu_model": model,
                "logical_cores": os.cpu_count(),
                "usable_cores": len(os.sched_getaffinity(0)),
                "isa": {f: f in flags for f in ISA_FLAGS},
                "python": platform.python_version(),
                "versions": {p: version(p) for p in ("torch", "jax", "jaxlib", "numpy")},
            }
        )
    )


if __name__ == "__main__":
    main()
