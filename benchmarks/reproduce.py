"""The DDPO paper's comparisons, and the flow family's, reproduced on the shapes world.

    python benchmarks/reproduce.py                   # every experiment, then docs/results.md
    python benchmarks/reproduce.py lr-sweep fig4-alignment --jobs 2
    python benchmarks/reproduce.py --list            # experiments, runs, and which are done
    python benchmarks/reproduce.py --report-only     # rewrite docs/results.md from finished runs

Each run is a plain `ddrl train` in runs/reproduce/<run>/, so an interrupted suite resumes: a
finished run (its after-evaluation written) is skipped, a started one continues from its last
checkpoint with `ddrl train --resume`. Identical runs are shared between experiments (the
learning-rate sweep's chosen runs are the first seed of Figure 4). `--jobs 2` runs two at a time
with one torch thread each: on a 2-core CPU the tiny built-in models sample as fast on one thread
as on two (benchmarks/results/epoch_levers.md), so two jobs nearly double the throughput.

The per-run curves are summarised in benchmarks/results/reproduce.json (committed), from which
docs/results.md and its plots are written; reward queries are counted as samples scored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "reproduce"
SUMMARY = ROOT / "benchmarks" / "results" / "reproduce.json"
DOC = ROOT / "docs" / "results.md"
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Run:
    preset: str
    overrides: tuple = ()  # sorted (key, value) pairs
    seed: int = 0

    @property
    def name(self) -> str:
        """preset-<hash of the overrides>-s<seed>: the folder's config.yaml holds the details"""
        digest = hashlib.sha1(repr(self.overrides).encode()).hexdigest()[:8]
        return f"{self.preset}-{digest}-s{self.seed}"

    def command(self, resume: bool) -> list[str]:
        exe = [str(Path(sys.executable).with_name("ddrl"))]
        if resume:
            return exe + ["train", "--resume", str(RUNS / self.name)]
        args = [f"--{k}={v}" for k, v in self.overrides]
        return exe + ["train", self.preset, *args, f"--run.seed={self.seed}", f"--run.output_dir={RUNS / self.name}"]


def run(preset: str, seed: int = 0, **overrides) -> Run:
    return Run(preset, tuple(sorted((k.replace("__", "."), v) for k, v in overrides.items())), seed)


# ---------------------------------------------------------------- the experiments

# Figure 4's budget per run, on shapes-sd: 20 epochs of 32 samples (640 reward queries), 10 DDIM
# steps (eta 1, guidance 5), two minibatches of 16 per epoch, half of each sample's steps trained
# (ddpo-pytorch's timestep_fraction, 5 per forward pass), a small held-out evaluation.
FIG4_BUDGET = {"sample__batch_size": 32, "sample__num_batches_per_epoch": 1, "sample__num_steps": 10,
               "train__batch_size": 16, "train__timestep_fraction": 0.5, "train__timesteps_per_forward": 5,
               "run__epochs": 20, "run__save_every": 5, "eval__max_prompts": 12, "eval__images_per_prompt": 2,
               "eval__train_images_per_prompt": 0, "eval__grid_every": 0}
# DDPO-SF takes one gradient step per batch of fresh samples (the paper, section 4.2): the two
# minibatches accumulate into one step. RWR-sparse keeps the top 10% (jannerm/ddpo).
FIG4_ALGORITHMS = {"DDPO-IS": {"train__algorithm": "ddpo-is"},
                   "DDPO-SF": {"train__algorithm": "ddpo-sf", "train__gradient_accumulation_steps": 2},
                   "RWR": {"train__algorithm": "rwr"},
                   "RWR-sparse": {"train__algorithm": "rwr", "train__rwr_percentile": 90}}
LEARNING_RATES = (3e-4, 1e-3, 3e-3)
FIG4_TASKS = {"alignment": "shapes-alignment", "compressibility": "shapes-compressibility"}


def fig4_run(task: str, algorithm: str, lr: float, seed: int) -> Run:
    return run(FIG4_TASKS[task], seed, **FIG4_BUDGET, **FIG4_ALGORITHMS[algorithm], train__learning_rate=lr)


def sweep_runs() -> dict[str, list[Run]]:
    return {f"{a} lr {lr:g}": [fig4_run("alignment", a, lr, 0)] for a in FIG4_ALGORITHMS for lr in LEARNING_RATES}


def chosen_lr(summary: dict, algorithm: str) -> float | None:
    """The sweep's learning rate with the highest training reward over its last 5 epochs (None
    until every rate of `algorithm` has finished)."""
    scores = {}
    for lr in LEARNING_RATES:
        s = summary.get(fig4_run("alignment", algorithm, lr, 0).name)
        if s is None:
            return None
        scores[lr] = statistics.mean(s["reward"][-5:])
    return max(scores, key=scores.get)


def fig4_runs(task: str, summary: dict) -> dict[str, list[Run]]:
    out = {}
    for a in FIG4_ALGORITHMS:
        lr = chosen_lr(summary, a)
        if lr is not None:
            out[a] = [fig4_run(task, a, lr, s) for s in SEEDS]
    return out


# Flow family at equal reward queries: each flow preset for 30 epochs of 64 samples.
FLOW = {"Flow-GRPO (SDE)": "shapes-flow-grpo", "Flow-GRPO (CPS)": "shapes-flow-grpo-cps",
        "Pref-GRPO": "shapes-pref-grpo", "DiffusionNFT": "shapes-nft"}
FLOW_SEEDS = SEEDS
FLOW_BUDGET = {"run__epochs": 30, "run__save_every": 5, "eval__images_per_prompt": 4,
               "eval__train_images_per_prompt": 0, "eval__num_steps": 10, "eval__grid_every": 0}

# KL against reward hacking: incompressibility (the paper's texture hack) pushed for 40 epochs at
# four KL coefficients a decade apart; the verifier rides along at weight 0, so its accuracy is
# logged each epoch without changing the objective.
KL_COEFS = (0.0, 0.1, 1.0, 10.0)
KL_BUDGET = FIG4_BUDGET | {"run__epochs": 40, "reward__name": "jpeg-incompressibility + 0*shapes-verifier",
                           "train__learning_rate": 3e-3, "eval__max_prompts": 0, "eval__images_per_prompt": 2}


@dataclass
class Experiment:
    title: str
    runs: callable  # summary -> {label: [Run per seed]}
    about: str
    extra: dict = field(default_factory=dict)


# Generalisation: the main job (the default preset) trains on the training prompts only; its
# held-out prompts hold attribute combinations no training prompt has. Evaluated on both.
GENERALISATION = {"eval__train_images_per_prompt": 2}

EXPERIMENTS = {
    "lr-sweep": Experiment("Learning-rate sweep (verifier alignment, seed 0)", lambda s: sweep_runs(),
                           "Each algorithm at three LoRA learning rates on Figure 4's budget; the rate with the "
                           "highest training reward over the last 5 epochs is used for Figure 4."),
    "fig4-alignment": Experiment("DDPO Figure 4: verifier alignment", lambda s: fig4_runs("alignment", s),
                                 "Reward (verifier partial credit) against reward queries, 3 seeds each, each "
                                 "algorithm at its own swept learning rate."),
    "fig4-compressibility": Experiment("DDPO Figure 4: JPEG compressibility",
                                       lambda s: fig4_runs("compressibility", s),
                                       "Reward (minus the JPEG size in kB) against reward queries, 3 seeds, each "
                                       "algorithm at the learning rate its alignment sweep chose."),
    "generalisation": Experiment("Generalisation to unseen prompts (the main job)",
                                 lambda s: {"shapes-quick": [run("shapes-quick", seed, **GENERALISATION)
                                                             for seed in SEEDS]},
                                 "The default preset (`ddrl train`), 3 seeds, evaluated per category on its "
                                 "training prompts and on the held-out prompts, whose attribute combinations no "
                                 "training prompt contains (the DDPO paper's generalisation test)."),
    "kl-hacking": Experiment("KL against reward hacking (incompressibility)",
                             lambda s: {f"KL {b:g}": [run("shapes-incompressibility", seed, **KL_BUDGET,
                                                          train__kl_coef=b) for seed in SEEDS] for b in KL_COEFS},
                             "DDPO-IS pushing JPEG size up (the paper's texture hack) at lr 3e-3 for 40 epochs, at "
                             "four KL coefficients; the verifier's accuracy on the same samples is the held-out "
                             "measure of what the images still show."),
    "flow-family": Experiment("The flow family at equal reward queries",
                              lambda s: {k: [run(p, seed, **FLOW_BUDGET) for seed in FLOW_SEEDS] for k, p in FLOW.items()},
                              "Each flow preset on shapes-flow for 30 epochs of 64 samples (1,920 queries); "
                              "held-out evaluation with the 10-step ODE on 4 images per prompt."),
}


# ---------------------------------------------------------------- running

def run_config(r: Run) -> dict:
    import yaml

    return yaml.safe_load((RUNS / r.name / "config.yaml").read_text())


def is_done(r: Run) -> bool:
    try:
        after = json.loads((RUNS / r.name / "eval_after.json").read_text())
        return after.get("epoch") == run_config(r)["run"]["epochs"]
    except (OSError, ValueError, KeyError):
        return False


def stale_settings(r: Run) -> list[str]:
    """The settings in which a started run's config.yaml differs from what its preset and
    overrides give now (the run's name hashes the overrides, not the preset's own settings, so a
    changed preset keeps the name). Settings that one side lacks (added to ddrl later) and the
    output folder are not compared."""
    import yaml

    from ddrl.config import apply_overrides, dump_yaml, flatten
    from ddrl.presets import preset_config

    if not (RUNS / r.name / "config.yaml").exists():
        return []
    now = apply_overrides(preset_config(r.preset), dict(r.overrides) | {"run.seed": r.seed})
    want, have = flatten(yaml.safe_load(dump_yaml(now))), flatten(run_config(r))
    return sorted(k for k in want.keys() & have.keys() if k != "run.output_dir" and want[k] != have[k])


def execute(r: Run, threads: int) -> int:
    d = RUNS / r.name
    resume = (d / "config.yaml").exists()
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f"{r.name}.log", "a") as log:
        rc = subprocess.run(r.command(resume), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    print(f"{'done' if rc == 0 else f'FAILED (exit {rc}, see {RUNS / r.name}.log)'}: {r.name}", flush=True)
    return rc


def summarise(r: Run) -> dict | None:
    d = RUNS / r.name
    if not is_done(r):
        return None
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    before, after = (json.loads((d / f"eval_{t}.json").read_text()) for t in ("before", "after"))
    sample = run_config(r)["sample"]
    out = {"queries_per_epoch": sample["batch_size"] * sample["num_batches_per_epoch"],
           "reward": [r_["reward/mean"] for r_ in rows], "accuracy": [r_.get("reward/accuracy") for r_ in rows],
           "components": {k.split("/")[1]: [r_.get(k) for r_ in rows] for k in rows[0]
                          if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2},
           "minutes": sum(r_["perf/epoch_s"] for r_ in rows) / 60, "before": {}, "after": {}}
    for tag, ev in (("before", before), ("after", after)):
        for split in ("heldout", "train"):
            if split in ev:
                out[tag][split] = {k: v for k, v in ev[split].items()}
                out[tag][split + "_correct"] = ev["per_image"][split].get("correct")
    return out


def load_summary() -> dict:
    return json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}


def update_summary(names: list[str]) -> dict:
    summary = load_summary()
    for name in names:
        for runs in EXPERIMENTS[name].runs(summary).values():
            for r in runs:
                if (s := summarise(r)) is not None:
                    summary[r.name] = s
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps(summary, indent=0, sort_keys=True))
    return summary


def run_experiments(names: list[str], jobs: int, threads: int | None) -> None:
    threads = threads or (1 if jobs > 1 else os.cpu_count() or 1)
    for name in names:
        summary = update_summary(list(EXPERIMENTS))
        todo = list(dict.fromkeys(r for runs in EXPERIMENTS[name].runs(summary).values() for r in runs if not is_done(r)))
        if not EXPERIMENTS[name].runs(summary):
            print(f"{name}: waits for another experiment (run lr-sweep first)")
            continue
        if stale := {r.name: diff for runs in EXPERIMENTS[name].runs(summary).values() for r in runs
                     if (diff := stale_settings(r))}:
            for run_name, diff in stale.items():
                print(f"{name}: {RUNS / run_name} was made with other settings ({', '.join(diff)}); its preset "
                      "has changed since. Move the folder away to run it again.")
            raise SystemExit(1)
        print(f"{name}: {len(todo)} run(s) to go", flush=True)
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda r: execute(r, threads), todo))
        update_summary([name])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="*", help=f"any of {', '.join(EXPERIMENTS)} (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each when above 1)")
    ap.add_argument("--threads", type=int, help="torch threads per run (default: 1 when --jobs is above 1, else all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    names = args.experiments or list(EXPERIMENTS)
    if unknown := [n for n in names if n not in EXPERIMENTS]:
        ap.error(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    if args.list:
        summary = load_summary()
        for name in names:
            runs = EXPERIMENTS[name].runs(summary)
            print(f"{name}: {EXPERIMENTS[name].title}")
            for label, rs in runs.items():
                print(f"  {label}: {sum(is_done(r) for r in rs)}/{len(rs)} done")
        return 0
    if not args.report_only:
        run_experiments(names, args.jobs, args.threads)
    from results_report import write_results

    write_results(update_summary(list(EXPERIMENTS)), EXPERIMENTS, DOC)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
