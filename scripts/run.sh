#!/usr/bin/env bash
# The main job: set up the environment if needed, then run ddrl. With no arguments it samples
# the built-in model and writes outputs/sample.png with verifier scores; any arguments are
# passed to `ddrl` instead (for example: scripts/run.sh evaluate --model shapes-flow).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
if [ "$#" -eq 0 ]; then
    set -- sample --model shapes-sd --out outputs/sample.png
fi
exec ddrl "$@"
