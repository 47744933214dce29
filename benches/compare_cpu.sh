#!/usr/bin/env bash
# metagrad against PyTorch (and JAX) on this machine, in one invocation: builds the examples, installs
# the peers from PyPI into a venv under the cache directory (benches/peers/setup.sh), runs
# benches/compare.py SUITE with ROUNDS interleaved rounds, and writes the table and every raw JSON line
# to benches/results/cpu-SUITE-DATE.txt (also shown).
#   bash benches/compare_cpu.sh matmul|bob|step|gpt|gpt-example [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=${1:?usage: compare_cpu.sh matmul|bob|step|gpt|gpt-example [ROUNDS]}
ROUNDS=${2:-3}
PY=$(bash benches/peers/setup.sh | tail -1)
cargo build --release --examples >&2
out="benches/results/cpu-$SUITE-$(date +%F).txt"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "git: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches/results' || echo ' (dirty)')"
  echo "command: bash benches/compare_cpu.sh $SUITE $ROUNDS"
  "$PY" benches/compare.py "$SUITE" --rounds "$ROUNDS" --python "$PY"
} | tee "$out"
echo "wrote $out" >&2
