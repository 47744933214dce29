"""Before/after timing of attention_bench binaries, interleaved (the machine is shared and noisy).

    python3 benches/attention_ab.py ROUNDS n/d,n/d,... BINARY [BINARY ...]

For each round, each size and each binary in turn: `BINARY 20 n d` (attention_bench, 4 heads, f32).
Prints, per size and binary, the minimum over the rounds of the per-call medians (ms) of the fused and
the composite forward, backward and backward-over-backward: on a shared machine the minimum is the
least disturbed figure. Copy each build's `target/release/examples/attention_bench` aside first.
"""
import json
import subprocess
import sys


def main():
    rounds = int(sys.argv[1])
    sizes = [tuple(int(x) for x in s.split("/")) for s in sys.argv[2].split(",")]
    bins = sys.argv[3:]
    res = {}
    for _ in range(rounds):
        for n, d in sizes:
            for b in bins:
                out = subprocess.run([b, "20", str(n), str(d)], capture_output=True, text=True, check=True).stdout
                j = json.loads(out.strip().splitlines()[-1])
                for path in ("fused", "composite"):
                    for k in ("forward_ms", "backward_ms", "bob_ms"):
                        res.setdefault((n, d, b, path, k), []).append(j[path][k])
    for n, d in sizes:
        for b in bins:
            f = lambda p, k: min(res[(n, d, b, p, k)])
            print(
                f"n {n:5} d {d:3} {b:14} fused fwd {f('fused', 'forward_ms'):.3f} bwd {f('fused', 'backward_ms'):.3f}"
                f" bob {f('fused', 'bob_ms'):.3f} | comp fwd {f('composite', 'forward_ms'):.3f}"
                f" bwd {f('composite', 'backward_ms'):.3f} bob {f('composite', 'bob_ms'):.3f}"
            )


if __name__ == "__main__":
    main()
