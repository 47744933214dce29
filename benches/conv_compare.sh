#!/usr/bin/env bash
# Fused vs composite (examples/conv_bench.rs) vs JAX (benches/jax_conv_hvp.py) on conv_b32_c3_32_32_hw32_k3,
# interleaved: ROUNDS rounds, each running ours then JAX with REPS repetitions. Prints the commands, the
# machine and every raw JSON line; redirect to benches/results/cpu-conv-$(date +%F).txt.
#   PYTHON=/path/to/venv/bin/python bash benches/conv_compare.sh > benches/results/cpu-conv-$(date +%F).txt
set -euo pipefail
ROUNDS=${ROUNDS:-5}
REPS=${REPS:-10}
PYTHON=${PYTHON:-python3}
cargo build --release --example conv_bench >&2
echo "date: $(date -u +%FT%TZ)"
echo "git: $(git rev-parse --short HEAD)"
echo "nproc: $(nproc)"
lscpu | head -20
echo "uptime: $(uptime)"
echo "jax: $($PYTHON -c 'import jax; print(jax.__version__)')"
echo "commands: ./target/release/examples/conv_bench --reps $REPS ; $PYTHON benches/jax_conv_hvp.py --reps $REPS ; $ROUNDS rounds, interleaved"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r ours: $(./target/release/examples/conv_bench --reps "$REPS")"
  echo "round $r jax:  $($PYTHON benches/jax_conv_hvp.py --reps "$REPS")"
done
echo "uptime: $(uptime)"
