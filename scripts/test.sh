#!/usr/bin/env bash
# Run the test suite, setting up the environment if needed. `--slow` also runs the slow tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
if [ "${1:-}" = "--slow" ]; then
    shift
    exec python -m pytest -m "slow or not slow" "$@"
fi
exec python -m pytest -m "not slow" "$@"
