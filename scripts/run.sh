#!/usr/bin/env bash
# The main job: set up the environment if needed, then run ddrl. With no arguments it runs
# `ddrl train`: Pref-GRPO on the built-in flow model with the shapes verifier reward (2 to 4
# minutes on a 2-core CPU), leaving its report in runs/shapes-quick-<date>/report.md. Any arguments
# are passed to `ddrl` instead (for example: scripts/run.sh sample --model shapes-flow).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
if [ "$#" -eq 0 ]; then
    set -- train
fi
exec ddrl "$@"
