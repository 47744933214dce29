#!/usr/bin/env bash
# Creates (once) the Python virtual environment the peer benchmarks run in, and prints its python.
#
#   PY=$(bash benches/peers/setup.sh | tail -1)
#
# Location: $METAGRAD_PEERS, else $XDG_CACHE_HOME/metagrad-peers, else ~/.cache/metagrad-peers.
# Pinned: torch 2.9.1 (PyPI's default wheel), jax[cpu] 0.10.2, and numpy. A `.ready` marker written
# after a successful install makes later calls do nothing but print the path; delete it to reinstall.
# Progress goes to stderr; stdout's last line is the interpreter's path. Override the interpreter
# the venv is made from with $PYTHON (default python3).
set -euo pipefail

venv="${METAGRAD_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/metagrad-peers}"
py="$venv/bin/python"

if [[ ! -f "$venv/.ready" ]]; then
    if [[ ! -x "$py" ]]; then
        echo "setup.sh: creating the virtual environment $venv" >&2
        "${PYTHON:-python3}" -m venv "$venv" >&2
    fi
    echo "setup.sh: installing torch==2.9.1 jax[cpu]==0.10.2 numpy into $venv" >&2
    "$py" -m pip install --disable-pip-version-check "torch==2.9.1" "jax[cpu]==0.10.2" numpy >&2
    touch "$venv/.ready"
    echo "setup.sh: ready" >&2
fi
echo "$py"
