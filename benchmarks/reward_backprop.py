"""Reward backpropagation on the shapes world (docs/reward-backprop.md). Resumable: each run writes
runs/backprop/<name>/result.json and is skipped when present.

    ddrl reward-pairs --out runs/backprop/pairs                  # once, about 11 minutes
    ddrl reward-train runs/backprop/pairs/train.jsonl --heldout runs/backprop/pairs/heldout.jsonl \\
        --out runs/backprop/reward-model                          # about 2 minutes
    python benchmarks/reward_backprop.py efficiency hacking [--jobs 2] [--report-only]

The proxy reward is the Bradley-Terry CNN that `ddrl reward-train` fits to the hidden preference's
pairs, `learned(path=runs/backprop/reward-model)`: differentiable, and imperfect (74% held-out
pairwise accuracy), so it can be hacked.

- efficiency: DDPO-IS, DRaFT-1, DRaFT-LV (n = 2), AlignProp and ReFL on the proxy, 3 seeds each,
  all minimising -r (ReFL's hinge at 2 belongs to ImageReward's standardised scale), LoRA r4 at
  lr 1e-3, 32 samples per epoch. Every 3 epochs the proxy scores 32 fixed-seed final images of
  training prompts; reward queries are the reward calls training made (DRaFT-LV: 2 per sample).
- hacking: DRaFT-1 for 60 epochs with no regulariser, KL 0.1, KL 1 and the pretraining loss.
  Every 6 epochs, on 28 held-out prompts x 4 seeds: the proxy, the true hidden preference, the
  verifier's score, two diversity measures (the entropy of the hue histogram of all saturated
  pixels, in bits, which falls when every prompt gets the same colours, and the mean pairwise
  RMS pixel distance between the 4 seeds of a prompt), and a fixed-seed grid.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "backprop"
PROXY = f"learned(path={OUT / 'reward-model'})"
RESULTS = ROOT / "benchmarks" / "results" / "reward_backprop.json"
DOCS = ROOT / "docs" / "reward-backprop"

BASE = {"model.name": "shapes-sd", "sample.sampler": "ddim", "sample.num_steps": 10, "sample.eta": 1.0,
        "sample.batch_size": 16, "sample.num_batches_per_epoch": 2, "train.batch_size": 16,
        "model.lora_rank": 4, "model.lora_alpha": 4.0, "train.learning_rate": 1e-3, "reward.name": PROXY,
        "reward.asynchronous": False}
METHODS = {
    "ddpo-is": {"train.algorithm": "ddpo-is"},
    "draft-1": {"train.algorithm": "draft", "backprop.steps": 1},
    "draft-lv": {"train.algorithm": "draft", "backprop.lv_samples": 2},
    "alignprop": {"train.algorithm": "alignprop", "backprop.loss": "neg", "backprop.scale": 1.0},
    "refl": {"train.algorithm": "refl", "backprop.loss": "neg", "backprop.scale": 1.0},
}
REGULARISERS = {"none": {}, "kl-0.1": {"train.kl_coef": 0.1}, "kl-1": {"train.kl_coef": 1.0},
                "pretrain": {"backprop.pretrain_loss": True}}
EFFICIENCY_EPOCHS, EVAL_EVERY = 30, 3
HACKING_EPOCHS, HACK_EVAL_EVERY = 60, 6


def runs(experiment: str) -> dict[str, dict]:
    if experiment == "efficiency":
        return {f"eff-{m}-s{s}": {**BASE, **o, "run.seed": s, "_epochs": EFFICIENCY_EPOCHS, "_kind": "efficiency"}
                for m, o in METHODS.items() for s in range(3)}
    return {f"hack-{r}": {**BASE, **METHODS["draft-1"], **o, "run.seed": 0, "_epochs": HACKING_EPOCHS, "_kind": "hacking"}
            for r, o in REGULARISERS.items()}


def hue_entropy(images, bins: int = 12) -> float:
    """Entropy (bits) of the hue histogram of the pixels with HSV saturation > 0.3 and value > 0.2."""
    import torch

    mx, mn = images.max(1).values, images.min(1).values
    sat = (mx - mn) / mx.clamp(min=1e-6)
    r, g, b = images.unbind(1)
    delta = (mx - mn).clamp(min=1e-6)
    hue = torch.where(mx == r, ((g - b) / delta) % 6, torch.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4)) / 6
    keep = (sat > 0.3) & (mx > 0.2)
    p = torch.histc(hue[keep], bins=bins, min=0, max=1)
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


# ------------------------------------------------------------------ one run (a subprocess)
def run_one(name: str, spec: dict) -> None:
    import torch

    from ddrl.config import Config, apply_overrides
    from ddrl.generate import generate
    from ddrl.grid import image_grid
    from ddrl.rewards import get_reward, score
    from ddrl.images.loop import ImageRun
    from ddrl.worlds.shapes import split

    torch.set_num_threads(1)
    cfg = apply_overrides(Config(), {k: v for k, v in spec.items() if not k.startswith("_")})
    run_dir = OUT / name
    run_dir.mkdir(parents=True, exist_ok=True)
    tr = ImageRun(cfg, run_dir)

    hacking = spec["_kind"] == "hacking"
    every = HACK_EVAL_EVERY if hacking else EVAL_EVERY
    if hacking:  # held-out prompts, 4 seeds each
        prompts = [p for p in split("heldout")[::2][:28] for _ in range(4)]
        judges = {"preference": get_reward("shapes-preference"), "verifier": get_reward("shapes-verifier")}
    else:  # fixed training prompts
        prompts = [tr.train_prompts[i] for i in range(0, len(tr.train_prompts), max(1, len(tr.train_prompts) // 32))][:32]
        judges = {}
    seeds = [2_000_000 + i for i in range(len(prompts))]
    curve, queries = [], 0

    def evaluate(epoch: int) -> None:
        with torch.no_grad():
            images = generate(tr.policy, prompts, seeds, num_steps=cfg.sample.num_steps,
                              guidance_scale=cfg.sample.guidance_scale, eta=cfg.sample.eta, batch_size=32, progress=False)
        meta = [tr.prompt_metadata.get(p, {}) for p in prompts]
        row = {"epoch": epoch, "queries": queries, "proxy": float(score(tr.reward, images, prompts, meta)[0].mean())}
        for k, r in judges.items():
            row[k] = float(score(r, images, prompts, meta)[0].mean())
        if hacking:
            x = images.reshape(-1, 4, images[0].numel())  # (prompts, 4 seeds, D)
            d = torch.cdist(x, x) / x.shape[-1] ** 0.5  # RMS distance
            row["seed_distance"] = float(d.sum((1, 2)).mean() / 12)  # 4 * 3 ordered pairs per prompt
            row["hue_entropy"] = hue_entropy(images)
            if epoch % (2 * every) == 0:
                grid = image_grid(images[:32], prompts[:32], columns=4)  # 8 prompts x 4 seeds
                DOCS.mkdir(parents=True, exist_ok=True)
                grid.save(DOCS / f"{name}-epoch{epoch:03d}.png")
        curve.append(row)
        print(json.dumps(row), flush=True)

    evaluate(0)
    for epoch in range(spec["_epochs"]):
        m = tr.run_epoch(epoch)
        queries += int(m.get("train/reward_queries", cfg.samples_per_epoch))
        tr.epoch = epoch + 1
        if (epoch + 1) % every == 0:
            evaluate(epoch + 1)
    (run_dir / "result.json").write_text(json.dumps({"name": name, "spec": {k: v for k, v in spec.items()},
                                                     "curve": curve}, indent=1))


# ------------------------------------------------------------------ driver
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiments", nargs="*", default=["efficiency", "hacking"])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        spec = {**runs("efficiency"), **runs("hacking")}[args.one]
        run_one(args.one, spec)
        return
    if not args.report_only:
        todo = [n for e in args.experiments for n in runs(e) if not (OUT / n / "result.json").exists()]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs: list[subprocess.Popen] = []
        for n in todo:
            while len([p for p in procs if p.poll() is None]) >= args.jobs:
                procs[0].wait() if procs[0].poll() is None else procs.pop(0)
                procs = [p for p in procs if p.poll() is None]
            log = open(OUT / f"{n}.log", "w")
            print("start", n, flush=True)
            procs.append(subprocess.Popen([sys.executable, __file__, "--one", n], stdout=log, stderr=subprocess.STDOUT,
                                          env=env))
        for p in procs:
            p.wait()
    from reward_backprop_report import report

    report(OUT, RESULTS, DOCS, runs)


if __name__ == "__main__":
    main()
