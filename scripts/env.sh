#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv. Sourced by run.sh and test.sh.
#
# CPU machines get torch==2.13.0 (a CPU build). If .venv already holds a torch you installed
# yourself (for example a CUDA build on a GPU machine), it is kept: the constraints file is then
# not applied to torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DDRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ddrl-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "ddrl: creating virtual environment in $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "ddrl: installing dependencies (first run takes about two minutes)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    else
        "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" torch
        "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[test]"
    fi
    echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
