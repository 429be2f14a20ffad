"""What each speed lever buys on a CPU: seconds per training epoch (sample / train) and per
evaluated image, for a preset with each lever applied alone.

    python benchmarks/epoch_levers.py [--preset shapes-pref-grpo] [--epochs 3] [--out FILE.md]

Levers that do not change what is learned: torch threads (1 against all cores), channels-last
memory format (convolutional denoisers), `torch.compile` of the denoiser. Levers that do change
it (fewer denoising steps, fewer trained steps, no guidance) are timed here too; whether they
learn as much per minute is measured by benchmarks/main_job.py. Prompt encodings are always
cached (computed once per run), so that lever has no row. Medians over epochs 2..N: the first
epoch carries one-off costs (allocation, compilation) and is reported separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # the table is the output

from ddrl.config import apply_overrides
from ddrl.presets import preset_config
 
from ddrl.images.loop import ImageRun


def _loaded_warning() -> str:
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    return (f"WARNING: load average {load:.1f} is above the {cores} cores; timings are distorted\n"
            if load > cores else "")


def time_variant(cfg, epochs: int, threads: int | None, channels_last: bool, compile_: bool) -> dict:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        tr = ImageRun(cfg, Path(tempfile.mkdtemp()))
        if channels_last:
            tr.policy.denoiser.to(memory_format=torch.channels_last)
        if compile_:
            tr.policy.denoiser.compile()
        rows = [tr.run_epoch(e) for e in range(epochs)]
        t0 = time.perf_counter()
        n = 32
        tr.evaluator._sample(tr.eval_prompts[:n // 4], 4, progress=False)
        per_image = (time.perf_counter() - t0) / n
    finally:
        torch.set_num_threads(before)
    rest = rows[1:] or rows
    return {"first": rows[0]["perf/epoch_s"], "epoch": statistics.median(r["perf/epoch_s"] for r in rest),
            "sample": statistics.median(r["perf/sample_s"] for r in rest),
            "train": statistics.median(r["perf/train_s"] for r in rest), "eval_image": per_image}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="shapes-pref-grpo")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", help="also write the table to this Markdown file")
    args = ap.parse_args()
    from ddrl.cli import quiet_libraries

    quiet_libraries()
    base = apply_overrides(preset_config(args.preset), {"reward.asynchronous": True, "eval.grid_every": 0})
    cores = os.cpu_count() or 1
    s = base.sample
    variants = {
        f"as shipped ({torch.get_num_threads()} threads)": ({}, {}),
        "1 thread": ({}, {"threads": 1}),
        "channels-last": ({}, {"channels_last": True}),
        "torch.compile": ({}, {"compile_": True}),
        f"{s.num_steps // 2} denoising steps (was {s.num_steps})": ({"sample.num_steps": s.num_steps // 2}, {}),
        "half the trained steps": ({"train.timestep_fraction": 0.5}, {}),
        "no guidance (CFG off)": ({"sample.guidance_scale": 1.0}, {}),
    }
    lines = [f"Levers on `{args.preset}` ({base.samples_per_epoch} samples x {s.num_steps} steps per epoch), "
             f"{cores} cores; medians of epochs 2..{args.epochs}.", "",
             "| lever | epoch s | sample s | train s | first epoch s | eval s/image | epoch vs shipped |",
             "|---|---|---|---|---|---|---|"]
    print(_loaded_warning() + "\n".join(lines), flush=True)
    shipped = None
    for name, (overrides, kw) in variants.items():
        try:
            r = time_variant(apply_overrides(base, overrides), args.epochs, kw.get("threads"),
                             kw.get("channels_last", False), kw.get("compile_", False))
        except Exception as e:  # a lever that does not apply here (e.g. compile without a compiler) is a row
            lines.append(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | | |")
            print(lines[-1], flush=True)
            continue
        shipped = shipped or r["epoch"]
        lines.append(f"| {name} | {r['epoch']:.2f} | {r['sample']:.2f} | {r['train']:.2f} | {r['first']:.2f} "
                     f"| {r['eval_image']:.3f} | {r['epoch'] / shipped:.2f}x |")
        print(lines[-1], flush=True)
    if warning := _loaded_warning():
        print(warning)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
