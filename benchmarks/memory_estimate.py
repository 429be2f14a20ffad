"""The memory estimate printed at the start of a run (ddrl.images.memory) against measured memory,
on the built-in models (CPU, one thread).

Each setting runs in its own process, where glibc serves every allocation over 64 KiB with mmap
(MALLOC_MMAP_THRESHOLD_=65536) so that freed memory leaves the process and resident memory
counts live tensors. A thread reads the resident set (/proc/self/statm) every 2 ms.
- "update": the growth of resident memory during the first epoch's update over its value just
  before it (the model loaded, the epoch sampled), against the estimate's gradients + optimizer
  state + activations of one training forward.
- "weights": the growth over loading the pipeline, against the estimate's weights. On these tiny
  models it is dominated by code the load imports (about 170 MiB), so it checks nothing; the
  weights term is the exact sum of parameter and buffer bytes.

The estimate is 7-15% below the measured peak without gradient checkpointing, 9-30% below with
it (where it adds the largest checkpointed unit's recomputed activations); what remains is mostly
the gradients of activations in the backward pass, which it does not count.

    python benchmarks/memory_estimate.py   # writes benchmarks/results/memory_estimate.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
SETTINGS = {
    "shapes-sd DDPO, LoRA r4": {},
    "shapes-sd DDPO, LoRA r4, gradient checkpointing": {"model.gradient_checkpointing": True},
    "shapes-sd DDPO, full": {"model.lora": False},
    "shapes-sd DDPO, full, gradient checkpointing": {"model.lora": False, "model.gradient_checkpointing": True},
    "shapes-sd DDPO, full, 8-bit AdamW": {"model.lora": False, "train.optimizer": "adamw8bit"},
    "shapes-flow Flow-GRPO, LoRA r4": {"flow": True},
    "shapes-flow Flow-GRPO, full, gradient checkpointing": {"flow": True, "model.lora": False,
                                                            "model.gradient_checkpointing": True},
}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    def __enter__(self):
        self.peak, self.running = rss(), True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())


def one(name: str) -> dict:
    import tempfile

    import torch

    torch.set_num_threads(1)
    import diffusers  # noqa: F401  (library imports before the baseline)
    import transformers  # noqa: F401

    from ddrl.config import Config, apply_overrides
    from ddrl.images.loop import ImageRun

    over = dict(SETTINGS[name])
    flow = over.pop("flow", False)
    base = {"model.name": "shapes-flow", "train.algorithm": "flow-grpo", "sample.sampler": "flow-sde",
            "sample.images_per_prompt": 4, "train.advantages": "group"} if flow else {
        "model.name": "shapes-sd", "train.algorithm": "ddpo-is"}
    cfg = apply_overrides(Config(), base | {"sample.num_steps": 10, "sample.batch_size": 16, "train.batch_size": 16,
                                            "train.timesteps_per_forward": 2, "train.single_pass": False,
                                            "reward.name": "jpeg-compressibility", "train.advantages": "batch"
                                            if not flow else "group"} | over)
    before_load = rss()
    tr = ImageRun(cfg, Path(tempfile.mkdtemp()))
    loaded = rss() - before_load
    est = tr.memory_estimate()
    update = tr.algorithm.update
    measured = {}

    def timed_update(*a, **k):
        start = rss()
        with Peak() as p:
            out = update(*a, **k)
        measured["update"] = p.peak - start
        return out

    tr.algorithm.update = timed_update
    tr.run_epoch(0)
    return {"name": name, "estimate_update": est.gradients + est.optimizer + est.activations,
            "measured_update": measured["update"], "estimate_weights": est.weights, "measured_load": loaded,
            "activations_per_sample": est.activations_per_sample, "samples_per_forward": est.samples_per_forward,
            "line": est.line()}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2])))
        return
    rows = []
    for name in SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = ["| setting | update: estimate (MiB) | update: measured peak growth | ratio | weights: estimate | "
             "measured growth over loading |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['estimate_update'] / MiB:.1f} | {r['measured_update'] / MiB:.1f} | "
              f"{r['measured_update'] / r['estimate_update']:.2f} | {r['estimate_weights'] / MiB:.1f} | "
              f"{r['measured_load'] / MiB:.1f} |" for r in rows]
    text = "\n".join(["# The memory estimate against measured peak memory (CPU)", "", "\n\n".join(__doc__.split("\n\n")[1:-1]), "",
                      "16 samples per minibatch, 2 timesteps per forward, 10 steps, each preset's guidance (re-scored "
                      "with guidance: 16 x 2 x 2 = 64 samples per forward), seed 0. "
                      "`python benchmarks/memory_estimate.py`.", "", *lines, ""])
    (ROOT / "benchmarks" / "results" / "memory_estimate.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
