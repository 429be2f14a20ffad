"""Peak memory of reward backpropagation against the steps backpropagated (K), with and without
gradient checkpointing, on shapes-sd (CPU). Each setting runs in its own process: the model and
reward load, one sampling pass without gradients sets the baseline, then one DRaFT-K minibatch
(16 samples, 20 DDIM steps) runs forward and backward. Two figures: the bytes autograd holds for
the backward pass after the chain's forward (saved-tensor hooks), and the growth of the process's
peak resident memory (ru_maxrss) over the baseline, measured in a second process where glibc
serves every allocation over 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_=65536), so freed memory
leaves the process and the peak counts live memory rather than the heap's retained high-water
mark (with the default allocator the checkpointed runs' peak grew about 37 MiB per step anyway).
Seconds come from the first process, with the default allocator.

    python benchmarks/backprop_memory.py [--reward learned(path=runs/backprop/reward-model)]

Writes benchmarks/results/backprop_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 2, 5, 10, 20)


def one(k: int, checkpointing: bool, reward: str) -> dict:
    import resource
    import time

    import torch

    from ddrl.config import Config, apply_overrides
    from ddrl.images.loop import ImageRun

    torch.set_num_threads(1)
    cfg = apply_overrides(Config(), {
        "model.name": "shapes-sd", "sample.sampler": "ddim", "sample.num_steps": 20, "sample.batch_size": 16,
        "sample.num_batches_per_epoch": 1, "train.batch_size": 16, "train.algorithm": "draft",
        "backprop.steps": k, "backprop.checkpointing": checkpointing, "reward.name": reward})
    tr = ImageRun(cfg, Path("/tmp/ddrl-backprop-memory"))
    from ddrl.algorithms.reward_backprop import sample_with_grad

    ctx = tr.algorithm.ctx
    with torch.no_grad():  # the same chain without gradients: the baseline's activations
        x = torch.randn(16, *tr.policy.latent_shape)
        sample_with_grad(ctx, x, ctx.cond_table[torch.zeros(16, dtype=torch.long)], ctx.uncond.repeat(16),
                         lambda: torch.randn_like(x), len(ctx.sampler), checkpointed=False)
        tr.policy.decode(x)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    t0 = time.perf_counter()
    tr.run_epoch(0)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # what autograd keeps for the backward pass: the distinct tensors saved by the chain's forward
    saved: dict[int, int] = {}

    def pack(t):
        saved[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sample_with_grad(ctx, x, ctx.cond_table[torch.zeros(16, dtype=torch.long)], ctx.uncond.repeat(16),
                         lambda: torch.randn_like(x), len(ctx.sampler) - k, checkpointed=checkpointing)
    held = sum(saved.values()) / 2**20
    return {"K": k, "checkpointing": checkpointing, "held_by_autograd_mib": held, "baseline_mib": base, "peak_mib": peak,
            "added_mib": peak - base, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reward", default=f"learned(path={ROOT / 'runs' / 'backprop' / 'reward-model'})")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1] == "1", args.reward)))
        return
    def run(k: int, ck: bool, **env) -> dict:
        out = subprocess.run([sys.executable, __file__, "--one", str(k), str(int(ck)), "--reward", args.reward],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = []
    for ck in (False, True):
        for k in KS:
            timed, live = run(k, ck), run(k, ck, MALLOC_MMAP_THRESHOLD_="65536")
            rows.append(live | {"seconds": timed["seconds"], "default_allocator_added_mib": timed["added_mib"]})
            print(rows[-1], flush=True)
    lines = ["| K (steps with gradients) | checkpointing | held by autograd for backward (MiB) | peak memory added (MiB) "
             "| the same, default allocator | seconds per minibatch |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['K']} | {'on' if r['checkpointing'] else 'off'} | {r['held_by_autograd_mib']:.1f} | "
              f"{r['added_mib']:.0f} | {r['default_allocator_added_mib']:.0f} | {r['seconds']:.1f} |" for r in rows]
    text = "\n".join(["# Reward backpropagation: peak memory against K (shapes-sd, CPU)", "",
                      "16 samples, 20 DDIM steps, LoRA r4, one DRaFT-K minibatch forward and backward; memory is the "
                      "growth of peak RSS over a sampling pass without gradients, with large allocations mmapped so "
                      "freed memory leaves the process (and, beside it, with the default allocator, whose heap "
                      "keeps freed memory); 'held by autograd' sums the distinct tensors the forward saves for "
                      "backward. The machine ran other jobs, so seconds are rough. "
                      "`python benchmarks/backprop_memory.py`.",
                      "", *lines, ""])
    (ROOT / "benchmarks" / "results" / "backprop_memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
