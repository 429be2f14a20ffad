#!/usr/bin/env bash
# Run the test suite, setting up the environment if needed (CI runs this with no arguments).
#   scripts/test.sh           everything but the slow checks, one learning run per update (8 to 13 min on 2 cores, twice that on slower ones)
#   scripts/test.sh --quick   no learning runs, no slow checks: the edit loop (about 5 min)
#   scripts/test.sh --slow    everything (about 30 min)
# Extra arguments pass through to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
case "${1:-}" in
    --slow) shift; exec python -m pytest -m "slow or not slow" --durations=15 "$@" ;;
    --quick) shift; exec python -m pytest -m "not slow and not learning" --durations=15 "$@" ;;
esac
exec python -m pytest -m "not slow" --durations=15 "$@"
