"""Diffusion-DPO on the shapes world, judged by the hidden preference that labelled its pairs
(docs/dpo.md). Resumable: each run writes runs/dpo/<name>/result.json and is skipped when present.

    ddrl reward-pairs --out runs/dpo/pairs                       # once, about 11 minutes
    python benchmarks/dpo_shapes.py offline beta equal-queries [--jobs 2] [--report-only]

Experiments (all on shapes-sd, 10 sampling steps):
- offline: dpo on the training pairs, 3 seeds;
- beta: offline dpo at three effective betas (seed 0), with the implicit KL of each;
- equal-queries: offline dpo, online-dpo, sft and ddpo-is, each with 2,000 hidden-preference
  queries, the number `ddrl reward-pairs` spent labelling the offline pairs (125 prompts x 16 images).

Each trained model is compared with the base on the 55 held-out prompts x 8 seeds (440 images,
the same seeds for both): the hidden preference's win rate (ties count one half), the verifier's
per-image accuracy, and the mean saturation. The implicit KL is the mean per-element
||eps_theta - eps_ref||^2 over 512 training latents at uniform timesteps, the integrand of the KL
between the two reverse processes (Wallace et al. 2023, eq. 9), in the units of the DPO errors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "dpo"
PAIRS = OUT / "pairs"
RESULTS = ROOT / "benchmarks" / "results" / "dpo_shapes.json"

# offline DPO on shapes-sd: 10 epochs of 512 pairs (about half a pass), no mirroring (prompts say
# left and right), LoRA r4 at lr 1e-3 (at 1e-4 the implicit accuracy rose more slowly: 0.59 after 6 epochs)
OFFLINE = {"model.name": "shapes-sd", "train.algorithm": "dpo", "data.pairs": str(PAIRS / "train.jsonl"),
           "data.hflip": False, "data.pairs_per_epoch": 512, "train.batch_size": 16, "run.epochs": 10,
           "sample.num_steps": 10}
ONLINE = {"model.name": "shapes-sd", "reward.name": "shapes-preference", "sample.num_steps": 10,
          "sample.batch_size": 32, "sample.num_batches_per_epoch": 2, "sample.images_per_prompt": 4,
          "train.batch_size": 16, "run.epochs": 31}
RUNS = {
    "offline": {f"offline-s{s}": OFFLINE | {"run.seed": s} for s in (0, 1, 2)},
    # beta 2500 is offline-s0 and offline-s1
    "beta": {f"beta-{b:g}{'' if s == 0 else f'-s{s}'}": OFFLINE | {"dpo.beta": b, "run.seed": s}
             for s in (0, 1) for b in (250.0, 25000.0)},
    "equal-queries": {f"{a}{'' if s == 0 else f'-s{s}'}": ONLINE | extra | {"run.seed": s} for s in (0, 1) for a, extra in (
        ("online-dpo", {"train.algorithm": "online-dpo", "train.timestep_fraction": 0.3}),
        ("sft", {"train.algorithm": "sft", "train.timestep_fraction": 0.3}),
        ("ddpo-is", {"train.algorithm": "ddpo-is", "train.min_count": 4, "train.clip_range": 1e-3}))},
}
COMMON = {"train.learning_rate": 1e-3, "eval.images_per_prompt": 1, "eval.train_images_per_prompt": 0,
          "eval.max_prompts": 6, "eval.grid_every": 0}


def run_one(name: str, overrides: dict) -> dict:
    """Train with the Python API, then judge against the base model. Returns the result row."""
    import torch

    from ddrl.algorithms.forward_process import ForwardProcess
    from ddrl.config import Config, apply_overrides
    from ddrl.rewards.shapes_pairs import against_base
    from ddrl.images.loop import ImageRun
    from ddrl.worlds.shapes import split

    folder = OUT / name
    cfg = apply_overrides(Config(), COMMON | overrides | {"run.output_dir": str(folder),
                                                          "data.cache_dir": str(OUT / "cache")})
    tr = ImageRun(cfg, folder)
    resume = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
    tr.train(resume=resume)
    prompts = [p for p in split("heldout") for _ in range(8)]
    with tr.eval_weights():
        row = against_base(tr.policy, prompts, [100_000 + i for i in range(len(prompts))], num_steps=10)
        row["implicit_kl"] = implicit_kl(tr, ForwardProcess(tr.policy))
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    row |= {"name": name, "overrides": overrides, "epochs": cfg.run.epochs,
            "minutes": sum(r.get("perf/epoch_s", 0.0) for r in rows) / 60,  # training only, one thread, shared machine
            "final_implicit_accuracy": rows[-1].get("train/implicit_accuracy"),
            "queries": 2000 if cfg.train.algorithm == "dpo" else cfg.run.epochs * cfg.samples_per_epoch}
    (folder / "result.json").write_text(json.dumps(row, indent=1))
    return row


def implicit_kl(tr, fp) -> float:
    import torch

    from ddrl.config import DataConfig
    from ddrl.data import pair_latents, read_pair_rows

    policy = tr.policy
    data = getattr(tr.algorithm, "data", None)
    if data is None:  # online runs: the offline pairs' latents (cached by the offline runs)
        rows = read_pair_rows(DataConfig(pairs=str(PAIRS / "train.jsonl")))
        data, _, _ = pair_latents(rows, policy, "shapes-sd", 48, False, OUT / "cache", False, progress=False)
    gens = [torch.Generator().manual_seed(i) for i in range(512)]
    x0, _ = data.draw([i * 17 % len(data) for i in range(512)], gens)
    level, noise = fp.draw(tuple(x0.shape[1:]), gens)
    x_t, _ = fp.noised(x0, level, noise)
    cond = policy.encode([data.prompts[i * 17 % len(data)] for i in range(512)])
    with torch.no_grad():
        eps = policy.predict(x_t, level, cond)
        with policy.reference():
            ref = policy.predict(x_t, level, cond)
    return float(((eps - ref) ** 2).mean())


def report() -> None:
    """benchmarks/results/dpo_shapes.{json,md} and the plots in docs/dpo/ from the finished runs."""
    rows = {}
    for f in sorted(OUT.glob("*/result.json")):
        r = json.loads(f.read_text())
        rows[r["name"]] = r
    if rows:
        RESULTS.write_text(json.dumps(rows, indent=1))
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    lines = ["| run | win rate vs base (± s.e.) | per-image accuracy, base → trained (± paired s.e.) | "
             "saturation, base → trained (± paired s.e.) | implicit KL | hidden-preference queries | minutes |",
             "|---|---|---|---|---|---|---|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['win_rate']:.3f} ± {r['win_rate_se']:.3f} | {r['accuracy_base']:.3f} → "
                     f"{r['accuracy_trained']:.3f} (± {r.get('accuracy_change_se', float('nan')):.3f}) | {r['saturation_base']:.3f} → "
                     f"{r['saturation_trained']:.3f} (± {r.get('saturation_change_se', float('nan')):.3f}) | "
                     f"{r['implicit_kl']:.2e} | {r['queries']} | {r['minutes']:.1f} |")
    lines += ["", "| method | seeds | win rate, mean ± s.e. over seeds | accuracy change | saturation change | implicit KL |",
              "|---|---|---|---|---|---|"]
    for label, names in _groups(rows).items():
        g = [rows[n] for n in names]
        lines.append(f"| {label} | {len(g)} | {_mean_se([r['win_rate'] for r in g])} | "
                     f"{_mean_se([r['accuracy_trained'] - r['accuracy_base'] for r in g], '+.3f')} | "
                     f"{_mean_se([r['saturation_trained'] - r['saturation_base'] for r in g], '+.4f')} | "
                     f"{sum(r['implicit_kl'] for r in g) / len(g):.2e} |")
    text = "\n".join(lines)
    (RESULTS.with_suffix(".md")).write_text(text + "\n")
    print(text)
    _plots(rows)


def _groups(rows: dict) -> dict[str, list[str]]:
    """Runs that differ only by seed, under one label."""
    labels = {"offline": "offline DPO, beta 2500", "beta-250": "offline DPO, beta 250",
              "beta-25000": "offline DPO, beta 25000", "online-dpo": "online DPO", "sft": "SFT on winners",
              "ddpo-is": "DDPO-IS"}
    out: dict[str, list[str]] = {label: [] for label in labels.values()}  # in this order
    for n in rows:
        key = n.rsplit("-s", 1)[0] if n.rsplit("-s", 1)[-1].isdigit() else n
        out.setdefault(labels.get(key, key), []).append(n)
    return {k: v for k, v in out.items() if v}


def _mean_se(xs: list[float], fmt: str = ".3f") -> str:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return f"{m:{fmt}}"
    se = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5
    return f"{m:{fmt}} ± {se:.3f}"


def _plots(rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = ROOT / "docs" / "dpo"
    folder.mkdir(parents=True, exist_ok=True)
    groups = {k: v for k, v in _groups(rows).items() if k not in ("offline DPO, beta 250", "offline DPO, beta 25000")}
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=120)
    for i, (label, names) in enumerate(groups.items()):
        wins = [rows[n]["win_rate"] for n in names]
        ax.bar(i, sum(wins) / len(wins), color="C0" if label.startswith("offline") else "C1", alpha=0.6)
        ax.errorbar([i] * len(wins), wins, yerr=[rows[n]["win_rate_se"] for n in names], fmt="o", color="k", ms=3)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(groups)), [k.replace(", beta 2500", "") for k in groups], fontsize=8)
    ax.set_ylabel("win rate against the base\n(held-out prompts, hidden preference)", fontsize=8)
    ax.set_title("2,000 hidden-preference queries each; dots: seeds (± s.e. over 440 images)", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "equal_queries.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.4, 3.4), dpi=120)
    for color, (beta, key) in zip(("C2", "C0", "C3"), ((250, "beta-250"), (2500, "offline"), (25000, "beta-25000"))):
        names = [n for n in rows if n == key or n.startswith(key + "-s")]
        ax.errorbar([rows[n]["implicit_kl"] for n in names], [rows[n]["win_rate"] for n in names],
                    yerr=[rows[n]["win_rate_se"] for n in names], fmt="o", color=color, label=f"beta {beta:g}")
    ax.set_xscale("log")
    ax.set_xlabel("implicit KL: mean per-element ||eps_theta - eps_ref||^2", fontsize=8)
    ax.set_ylabel("win rate against the base", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "beta.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="*", default=list(RUNS))
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel, one torch thread each")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one named run in this process
    args = ap.parse_args()
    if args.one:
        name = args.one
        run_one(name, next(r[name] for r in RUNS.values() if name in r))
        return
    if not args.report_only:
        if not (PAIRS / "train.jsonl").is_file():
            sys.exit(f"no pairs at {PAIRS}: run `ddrl reward-pairs --out {PAIRS}` first")
        todo = [n for e in args.experiments for n in RUNS[e] if not (OUT / n / "result.json").is_file()]
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        running: list[subprocess.Popen] = []
        for n in todo:
            while len(running) >= args.jobs:
                running = [p for p in running if p.poll() is None]
                time.sleep(2)
            log = open(OUT / f"{n}.log", "w")
            running.append(subprocess.Popen([sys.executable, __file__, "--one", n], stdout=log, stderr=log, env=env))
        for p in running:
            p.wait()
    report()


if __name__ == "__main__":
    main()
