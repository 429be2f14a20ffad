"""Run shipped presets as they ship and tabulate their before/after evaluation.

    python benchmarks/preset_runs.py [--presets shapes-alignment shapes-flow-grpo ...] [--root runs/presets]

Each preset runs in ROOT/<preset> with `ddrl train <preset>`; a folder that already holds a run
is resumed (`--resume`), and a finished one is only read, so the script can be stopped and
started again. The table (Markdown, also written to ROOT/results.md) gives, per preset, the
training reward over the first and last 10 epochs and the held-out and training-prompt changes
of the verifier score and of accuracy per image, each a paired difference over the same seeds
± its standard error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

DEFAULT = ["shapes-alignment", "shapes-flow-grpo", "shapes-flow-grpo-cps", "shapes-pref-grpo", "shapes-nft"]


def run(preset: str, folder: Path) -> None:
    if (folder / "eval_after.json").exists():
        return
    cmd = [sys.executable, "-m", "ddrl.cli", "train"]
    cmd += ["--resume", str(folder)] if (folder / "config.yaml").exists() else [preset, "--run.output-dir", str(folder)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def row(preset: str, folder: Path) -> str:
    from ddrl.run.metrics import read_metrics
    from ddrl.run.report import paired_change

    before = json.loads((folder / "eval_before.json").read_text())
    after = json.loads((folder / "eval_after.json").read_text())
    rewards = [r["reward/mean"] for r in read_metrics(folder / "metrics.jsonl")]
    k = min(10, len(rewards) // 2)

    def change(split: str, key: str, per_image: str) -> str:
        b, a = before[split].get(key), after[split].get(key)
        if b is None:
            return ""
        _, se = paired_change(before["per_image"][split][per_image], after["per_image"][split][per_image])
        return f"{b:.3f} → {a:.3f} ({a - b:+.3f} ± {se:.3f})"

    cells = [f"`{preset}`", f"{statistics.mean(rewards[:k]):.3f} → {statistics.mean(rewards[-k:]):.3f}",
             change("heldout", "score", "reward"), change("heldout", "accuracy_per_image", "correct"),
             change("train", "score", "reward")]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=DEFAULT)
    ap.add_argument("--root", default="runs/presets")
    args = ap.parse_args()
    root = Path(args.root)
    for preset in args.presets:
        run(preset, root / preset)
    lines = ["| preset | training reward, first → last 10 epochs | held-out score | held-out accuracy per image "
             "| training-prompt score |", "|---|---|---|---|---|"]
    lines += [row(p, root / p) for p in args.presets]
    table = "\n".join(lines)
    (root / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
