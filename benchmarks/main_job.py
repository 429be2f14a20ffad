"""The main job as a new user runs it: `ddrl train` with no arguments, timed from the command
line to its report, on this machine.

    python benchmarks/main_job.py [--seeds 0 1 2] [--out benchmarks/results/main_job.md] [-- OVERRIDES...]

Prints and writes, per seed: the wall time, the report's headline (held-out per-image accuracy
before -> after, with its paired standard error), the median epoch and the time outside the
epochs (model loading, the two evaluations, grids, report). Extra arguments after `--` are passed
to `ddrl train` (e.g. `-- --run.epochs 10` for a shortened job).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(seed: int, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp()) / f"main-job-s{seed}"
    cmd = [str(Path(sys.executable).with_name("ddrl")), "train", f"--run.seed={seed}", f"--run.output_dir={out}", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ddrl train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["perf/epoch_s"] for r in rows]
    head = next(line for line in proc.stdout.splitlines() if line.startswith("held-out"))
    return {"seed": seed, "wall": wall, "headline": head, "epochs": len(rows), "epoch_median": statistics.median(epochs),
            "outside": wall - sum(epochs), "run": str(out)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out")
    ap.add_argument("extra", nargs="*", help="overrides passed to ddrl train (after --)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: another job distorts the time")
    lines = [f"`ddrl train {' '.join(args.extra)}`".replace(" `", "`"), "",
             "| seed | wall time | headline | epochs | median epoch | outside the epochs |", "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for seed in args.seeds:
        r = one(seed, args.extra)
        lines.append(f"| {seed} | {r['wall'] / 60:.1f} min ({r['wall']:.0f} s) | {r['headline']} | {r['epochs']} "
                     f"| {r['epoch_median']:.1f} s | {r['outside']:.0f} s |")
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
