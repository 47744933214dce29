"""metagrad against its peers (PyTorch eager, JAX jit) on this machine, in one run, interleaved.

    python benches/compare.py SUITE [--rounds R] [--threads 2] [--log FILE]

SUITE is one of
  matmul  examples/matmul_gflops --json        vs benches/peers/torch_cpu.py --workload matmul (MKL)
  bob     examples/bob_throughput --json       vs benches/peers/torch_cpu.py and jax_cpu.py (fwd, bwd, HVP)
  step    examples/step_speed --json           vs benches/peers/jax_step_mlp.py (training and metagradients)
  gpt     examples/step_speed --json --gpt     vs benches/peers/jax_gpt.py and torch_gpt.py
  gpt-example  the same at examples/gpt's size (--gpt-size example / --size example: d 64, context 64)

Each round runs every program once, one after the other; the machine is shared and noisy, so the
table reports, per figure, the median over rounds of each side and the median over rounds of the
per-round ratio (a ratio within one round compares runs seconds apart). Ratios are stated so that
> 1 means metagrad is faster. The header gives the CPU model, ISA level, threads and measured FMA
peak; every raw JSON line goes to the log (default: stdout after the table).

Run through benches/compare_cpu.sh, which builds the examples and installs the peers.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "target", "release", "examples")
PEERS = os.path.join(ROOT, "benches", "peers")


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        # Some tools print progress first: the last line that is a JSON object.
        return json.loads(next(l for l in reversed(out.strip().splitlines()) if l.strip().startswith("{")))


def suite(name, py, threads):
    """(programs, rows): programs are (label, argv); rows are (figure, ours(results), peer(results),
    kind) where kind 'time' means smaller is better and 'rate' means larger is better."""
    ours = lambda *a: [os.path.join(EX, a[0]), *a[1:]]
    peer = lambda script, *a: [py, os.path.join(PEERS, script), "--threads", str(threads), *a]
    if name == "matmul":
        progs = [("ours", ours("matmul_gflops", "--json")), ("torch", peer("torch_cpu.py", "--workload", "matmul"))]
        rows = []
        for key in ["512x784x512", "512x512x512", "512x512x10", "784x512x512", "64x784x128", "784x64x128", "2048x2048x2048"]:
            rows.append((f"{key} GFLOP/s", lambda r, k=key: r["ours"][k]["gflops_median"], lambda r, k=key: r["torch"]["matmul"][k]["gflops_median"], "rate", "torch"))
        rows.append(("512x512x512 (Bᵀ) GFLOP/s", lambda r: r["ours"]["512x512x512_tb"]["gflops_median"], lambda r: r["torch"]["matmul"]["512x512x512"]["gflops_median"], "rate", "torch"))
        return progs, rows
    if name == "bob":
        progs = [
            ("ours", ours("bob_throughput", "--json", "--reps", "10", "--peer-set")),
            ("torch", peer("torch_cpu.py", "--reps", "10")),
            ("jax", peer("jax_cpu.py", "--reps", "10")),
        ]
        rows = []
        for w in ["mlp_784_512_512_10_b512", "attention_b1_h4_n512_d64", "attention_b1_h4_n2048_d64", "attention_b1_h4_n4096_d64", "conv_b32_c3_32_32_hw32_k3"]:
            o = lambda r, w=w, k="forward_ms": r["ours"][w][k]
            rows.append((f"{w} fwd ms", o, lambda r, w=w: r["torch"][w]["forward_ms"], "time", "torch"))
            rows.append((f"{w} bwd ms", lambda r, w=w: r["ours"][w]["backward_ms"], lambda r, w=w: r["torch"][w]["backward_ms"], "time", "torch"))
            hvp = lambda r, w=w: r["ours"][w]["forward_ms"] + r["ours"][w]["bob_ms"]
            rows.append((f"{w} fwd+bob ms", hvp, lambda r, w=w: r["torch"][w]["bob_ms"], "time", "torch"))
            rows.append((f"{w} fwd+bob ms", hvp, lambda r, w=w: r["jax"][w]["bob_ms"], "time", "jax"))
        return progs, rows
    if name == "step":
        progs = [("ours", ours("step_speed", "--json")), ("jax", peer("jax_step_mlp.py"))]
        rows = []
        for b in ["b64", "b512"]:
            rows.append((f"mlp {b} train ms", lambda r, b=b: r["ours"][b]["train_ms"], lambda r, b=b: r["jax"][b]["train_ms"], "time", "jax"))
            for s in ["kary8", "store_all"]:
                rows.append((f"mlp {b} metagrad {s} ms", lambda r, b=b, s=s: r["ours"][b][f"metagrad_{s}_ms"], lambda r, b=b: r["jax"][b]["metagrad_ms"], "time", "jax"))
        return progs, rows
    if name in ("gpt", "gpt-example"):
        size = "example" if name == "gpt-example" else "small"
        progs = [
            ("ours", ours("step_speed", "--json", "--gpt", "--gpt-size", size)),
            ("jax", peer("jax_gpt.py", "--size", size)),
            ("torch", peer("torch_gpt.py", "--size", size)),
        ]
        rows = []
        for k in ["step_ms", "fwd_hvp_ms"]:
            for p in ["jax", "torch"]:
                rows.append((f"gpt {k}", lambda r, k=k: r["ours"]["gpt"][k], lambda r, k=k, p=p: r[p]["gpt"][k], "time", p))
        return progs, rows
    sys.exit(f"unknown suite {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", choices=["matmul", "bob", "step", "gpt", "gpt-example"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--python", default=sys.executable, help="the peers' python (with torch and jax)")
    ap.add_argument("--log", help="write the raw JSON lines here instead of after the table")
    args = ap.parse_args()
    progs, rows = suite(args.suite, args.python, args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    machine = subprocess.run([args.python, os.path.join(PEERS, "machine.py")], capture_output=True, text=True).stdout.strip()
    rounds, raw = [], []
    for i in range(args.rounds):
        res = {}
        for label, cmd in progs:
            res[label] = run_json(cmd, env)
            raw.append(f"round {i + 1} {label} ({' '.join(os.path.basename(c) if j == 0 else c for j, c in enumerate(cmd))}): {json.dumps(res[label])}")
        rounds.append(res)
    ours_header = rounds[0]["ours"].get("machine") or {k: rounds[0]["ours"].get(k) for k in ("cpu", "threads", "isa", "fma_peak_gflops")}
    print(f"suite {args.suite}, {args.rounds} rounds, {args.threads} threads")
    print(f"machine (peers): {machine}")
    print(f"machine (metagrad): {json.dumps(ours_header)}")
    print()
    print(f"{'figure':46} {'peer':>6} {'metagrad':>10} {'peer':>10} {'speedup':>8}")
    for fig, ours, peer, kind, who in rows:
        try:
            o = [ours(r) for r in rounds]
            p = [peer(r) for r in rounds]
        except (KeyError, TypeError):
            print(f"{fig:46} {who:>6} {'n/a':>10}")
            continue
        ratio = [(pp / oo if kind == "time" else oo / pp) for oo, pp in zip(o, p)]
        print(f"{fig:46} {who:>6} {statistics.median(o):10.3f} {statistics.median(p):10.3f} {statistics.median(ratio):7.2f}x")
    print("\nspeedup: peer time / metagrad time (or metagrad rate / peer rate), median over rounds of the per-round ratio")
    text = "\n".join(raw)
    if args.log:
        with open(args.log, "w") as f:
            f.write(text + "\n")
    else:
        print("\nraw:\n" + text)


if __name__ == "__main__":
    main()
