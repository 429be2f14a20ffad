"""Seconds per DDPO epoch on the built-in model, split into sample / reward / train; the ratio
of the epoch to the network's own forward and backward passes timed in isolation; and the same
epoch with TRL 0.23.1's DDPOTrainer (the last TRL with DDPO), when an environment with it exists.

    python benchmarks/ddpo_epoch.py [--samples 16] [--steps 20] [--epochs 4] [--full] [--trl-python PATH]

Settings match TRL's: LoRA r=4 on to_q/k/v/out (`--full`: the whole UNet, in both), lr 3e-4,
eta 1, guidance 5 (also in training), one inner epoch, one optimizer step per epoch over every
step of every sample, batch-normalised advantages, JPEG compressibility. TRL runs from
`--trl-python` (default: $DDRL_TRL_PYTHON), an interpreter whose environment has
`trl[diffusers]==0.23.1`; it is skipped when absent. The first epoch of each is warm-up and left
out of the medians. Every variant and TRL run in rounds, interleaved, and each figure is the best
round's: a job that starts or stops on the same machine then distorts one round, not one
contestant. A load average above the core count is reported before and after.
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

import torch

from ddrl.config import Config, apply_overrides
from ddrl.models.loading import builtin_path
from ddrl.models.policy import guided_prediction
from ddrl.images.loop import ImageRun


def ddrl_config(samples: int, steps: int, **extra) -> Config:
    return apply_overrides(Config(), {
        "model.name": "shapes-sd", "reward.name": "jpeg-compressibility", "reward.asynchronous": False,
        "train.advantages": "batch", "sample.num_steps": steps, "sample.batch_size": samples,
        "sample.num_batches_per_epoch": 1, "train.batch_size": samples, "train.learning_rate": 3e-4,
        "model.lora_rank": 4, "model.lora_alpha": 4.0} | extra)


def run_ddrl(cfg: Config, epochs: int) -> tuple[list[dict], ImageRun]:
    tr = ImageRun(cfg, Path(tempfile.mkdtemp()))
    return [tr.run_epoch(e) for e in range(epochs)], tr


def isolated_seconds(tr: ImageRun, single_pass: bool, per_forward: int, repeats: int = 2) -> float:
    """The network calls one epoch makes, with nothing else: T guided forwards of the sample
    batch, then either T/k guided forward+backward passes of k steps each (re-scoring), or (single
    pass) the same T forwards with grad and one backward."""
    cfg, policy = tr.cfg, tr.policy
    b, T = cfg.samples_per_epoch, cfg.sample.num_steps
    x = torch.randn(b, *policy.latent_shape)
    cond, uncond = tr.cond_table[torch.arange(b) % len(tr.cond_table)], tr.uncond
    w = cfg.sample.guidance_scale
    t = torch.full((b,), 500)

    def once() -> float:
        t0 = time.perf_counter()
        if single_pass:
            total = sum(guided_prediction(policy, x, t, cond, uncond.repeat(b), w).float().mean() for _ in range(T))
            total.backward()
        else:
            with torch.no_grad():
                for _ in range(T):
                    guided_prediction(policy, x, t, cond, uncond.repeat(b), w)
            xk, ck, tk = torch.cat([x] * per_forward), cond[torch.arange(b * per_forward) % b], t.repeat(per_forward)
            for _ in range(T // per_forward):
                guided_prediction(policy, xk, tk, ck, uncond.repeat(b * per_forward), w).float().mean().backward()
        tr.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows[1:] or rows)


def run_trl(python: str, samples: int, steps: int, epochs: int, full: bool) -> dict | None:
    from ddrl.worlds.shapes import split

    prompts = Path(tempfile.mkdtemp()) / "prompts.json"
    prompts.write_text(json.dumps(split("train")))
    script = Path(__file__).with_name("trl_ddpo_epoch.py")
    out = subprocess.run([python, str(script), str(builtin_path("shapes-sd")), str(prompts), "--epochs", str(epochs),
                          "--samples", str(samples), "--steps", str(steps), *(["--full"] if full else [])],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"TRL run failed:\n{out.stderr[-3000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_warning(own_threads: int = 0) -> str:
    """A loaded machine distorts every figure: 2 + 2 threads on 2 cores spin against each other
    (a sequential TRL run once timed 30x its quiet figure under another job). Before the runs the
    load must stay within the core count; after them it includes this benchmark's own threads,
    so more than one further busy thread means another job ran alongside."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    limit = cores if own_threads == 0 else min(own_threads, cores) + 1
    return f"WARNING: load average {load:.1f} on {cores} cores; these timings are distorted" if load > limit else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2,
                    help="rounds of every variant and TRL, interleaved (ABAB); each figure is its best round")
    ap.add_argument("--full", action="store_true", help="full fine-tuning of the UNet instead of LoRA r4")
    ap.add_argument("--trl-python", default=os.environ.get("DDRL_TRL_PYTHON"))
    args = ap.parse_args()
    from ddrl.cli import quiet_libraries

    quiet_libraries()
    if warning := load_warning():
        print(warning)
    print(f"DDPO epoch of {args.samples} samples x {args.steps} steps on shapes-sd, "
          f"{'full fine-tuning' if args.full else 'LoRA r4'}, torch threads "
          f"{torch.get_num_threads()}; medians over epochs 2..{args.epochs}, best of {args.repeats} interleaved rounds\n")
    variants = {"re-score, 1 step per forward": {"train.single_pass": False, "train.timesteps_per_forward": 1},
                "re-score, 4 steps per forward": {"train.single_pass": False, "train.timesteps_per_forward": 4},
                "single pass (default here)": {"train.single_pass": True}}
    trl_ok = bool(args.trl_python) and Path(args.trl_python).exists()
    best: dict[str, tuple] = {}
    trl_best = None
    for _ in range(args.repeats):
        for name, extra in variants.items():
            cfg = ddrl_config(args.samples, args.steps, **extra, **{"model.lora": not args.full})
            rows, tr = run_ddrl(cfg, args.epochs)
            iso = isolated_seconds(tr, tr.algorithm.keeps_sampling_graph(cfg), cfg.train.timesteps_per_forward)
            row = (median(rows, "perf/epoch_s"), median(rows, "perf/sample_s"), median(rows, "perf/reward_s"),
                   median(rows, "perf/train_s"), iso)
            best[name] = min(best.get(name, row), row)
        if trl_ok and (trl := run_trl(args.trl_python, args.samples, args.steps, args.epochs, args.full)) is not None:
            row = (median(trl["epochs"], "epoch_s"), median(trl["epochs"], "sample_s"), median(trl["epochs"], "train_s"))
            trl_best = min(trl_best or row, row)
    print(f"{'ddrl variant':<34}{'epoch s':>9}{'sample':>9}{'reward':>9}{'train':>9}{'isolated':>10}{'ratio':>7}")
    for name, (ep, sa, rw, trn, iso) in best.items():
        print(f"{name:<34}{ep:>9.2f}{sa:>9.2f}{rw:>9.2f}{trn:>9.2f}{iso:>10.2f}{ep / iso:>7.2f}")
    if not trl_ok:
        print("\nTRL 0.23.1 comparison skipped: pass --trl-python (or set DDRL_TRL_PYTHON) to an interpreter "
              "whose environment has trl[diffusers]==0.23.1")
    elif trl_best is not None:
        t_ep, t_sa, t_tr = trl_best
        print(f"\n{'TRL 0.23.1 DDPOTrainer':<34}{t_ep:>9.2f}{t_sa:>9.2f}{'':>9}{t_tr:>9.2f}")
        for name, row in best.items():
            print(f"  ddrl {name}: {row[0] / t_ep:.2f}x TRL's epoch time")
        print(f"best ddrl / TRL = {min(r[0] for r in best.values()) / t_ep:.2f}")
    if warning := load_warning(torch.get_num_threads()):
        print(warning)


if __name__ == "__main__":
    sys.exit(main())
