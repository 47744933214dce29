"""Compare the numerical check values of two benchmark JSON outputs (e.g. JAX vs PyTorch, or a
peer vs metagrad's Rust side, as long as it writes the same keys).

Walks both objects, skips timings (keys ending in `_ms`), "machine" and non-numeric values, and
prints for every numeric leaf present in both: a, b and the relative difference
|a − b| / max(|a|, |b|). Exits 1 if any relative difference exceeds --rtol (default 1e-4).

    python benches/peers/check_agree.py jax_step_mlp.json torch_step_mlp.json [--rtol 1e-4]
"""

import argparse
import json
import sys

SKIP = {"machine", "n_params", "batch", "steps", "adamw"}


def leaves(obj, prefix=""):
    """(path, float) for every numeric leaf that is a check value (not a timing)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in SKIP or k.endswith("_ms"):
                continue
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix, float(obj)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rtol", type=float, default=1e-4)
    args = ap.parse_args()
    with open(args.a) as f:
        a = dict(leaves(json.load(f)))
    with open(args.b) as f:
        b = dict(leaves(json.load(f)))
    worst, bad = 0.0, 0
    for key in a:
        if key not in b:
            continue
        x, y = a[key], b[key]
        rel = abs(x - y) / max(abs(x), abs(y), 1e-300)
        worst = max(worst, rel)
        flag = "  <-- exceeds rtol" if rel > args.rtol else ""
        bad += rel > args.rtol
        print(f"{key:36s} {x:+.9e} {y:+.9e}  rel {rel:.2e}{flag}")
    only = sorted(set(a) ^ set(b))
    if only:
        print("in one file only:", ", ".join(only))
    print(f"worst relative difference {worst:.2e}; {bad} above rtol {args.rtol:g}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
