"""A shipped preset in a short run on one prompt: does it raise its own reward?

    python benchmarks/preset_short_run.py shapes-alignment-sf [--epochs 20] [--images 384] [KEY=VALUE ...]

Keeps the preset's algorithm, learning rate, trust region, advantages and LoRA, and shrinks the
rest: one prompt, one epoch of 32 samples in 2 groups of 16, 4 sampling steps, minibatches of 16
(fewer when the preset accumulates, so its minibatches per optimizer step stay as shipped). The
reward is measured before and after on the same fixed seeds, so its change is a paired
difference; KEY=VALUE pairs override further settings (e.g. train.learning_rate=1e-4,
sample.num_steps=10). Results: benchmarks/results/presets.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from ddrl.config import apply_overrides
from ddrl.presets import preset_config
from ddrl.images import check_run, run_images
from ddrl.run.report import paired_change


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ap.add_argument("--prompt", default="a purple square and a red triangle")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--images", type=int, default=384, help="evaluation images, before and after")
    args = ap.parse_intermixed_args()  # KEY=VALUE pairs before or after the options
    tmp = Path(tempfile.mkdtemp())
    (tmp / "prompt.txt").write_text(args.prompt)
    cfg = preset_config(args.preset)
    ga = cfg.train.gradient_accumulation_steps
    extra = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    cfg = apply_overrides(cfg, {
        "prompts.source": f"file:{tmp / 'prompt.txt'}", "prompts.eval_source": f"file:{tmp / 'prompt.txt'}",
        "sample.num_steps": 4, "sample.batch_size": 32, "sample.num_batches_per_epoch": 1,
        "sample.images_per_prompt": 16, "train.min_count": 16, "train.batch_size": min(cfg.train.batch_size, 32 // ga),
        "run.epochs": args.epochs, "eval.images_per_prompt": args.images, "eval.train_images_per_prompt": 1,
        "eval.grid_every": 0, "run.save_every": args.epochs, "run.output_dir": str(tmp / "run")} | extra)
    check_run(cfg, tmp / "run")
    result = run_images(cfg, tmp / "run")
    change, se = paired_change(result["before"]["per_image"]["heldout"]["reward"],
                               result["after"]["per_image"]["heldout"]["reward"])
    units = f" ({change / se:+.1f} s.e.)" if se > 0 else ""
    print(f"{args.preset} {' '.join(args.overrides)}: reward change {change:+.4f} ± {se:.4f}{units}")


if __name__ == "__main__":
    main()
