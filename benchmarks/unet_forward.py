"""One UNet pass of ddrl's shapes-sd policy against the same UNet built as TRL builds it (a plain
diffusers pipeline with peft's LoRA r4 on to_q/k/v/out.0), on the same inputs.

    python benchmarks/unet_forward.py [--batch 32] [--repeats 6]

Prints the median milliseconds of a forward without gradients and of a forward with a backward,
for each. If ddrl's epochs are slower than TRL's while these match, the difference is not in the
network passes. Results: benchmarks/results/ddpo_epoch.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def median_ms(unet, x, t, emb, grad: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if grad:
            unet(x, t, emb).sample.float().mean().backward()
        else:
            with torch.no_grad():
                unet(x, t, emb)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:])  # the first is warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32, help="latents per pass (16 samples with guidance: 32)")
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    from ddrl.cli import quiet_libraries
    from ddrl.config import Config, apply_overrides
    from ddrl.models.loading import builtin_path
    from ddrl.images.loop import ImageRun

    quiet_libraries()
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(str(builtin_path("shapes-sd")), safety_checker=None)
    pipe.unet.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    out = tempfile.mkdtemp()
    cfg = apply_overrides(Config(), {"model.name": "shapes-sd", "reward.name": "jpeg-compressibility",
                                     "reward.asynchronous": False, "model.lora_rank": 4, "model.lora_alpha": 4.0,
                                     "run.output_dir": out})
    ddrl_unet = ImageRun(cfg, Path(out)).policy.denoiser
    c, size = ddrl_unet.config.in_channels, ddrl_unet.config.sample_size
    x = torch.randn(args.batch, c, size, size)
    emb = pipe.encode_prompt(["a red circle"] * args.batch, "cpu", 1, False)[0].detach()
    t = torch.full((args.batch,), 500)
    print(f"UNet pass of {args.batch} latents, torch threads {torch.get_num_threads()}; median ms")
    for grad in (False, True):
        plain = median_ms(pipe.unet, x, t, emb, grad, args.repeats)
        ours = median_ms(ddrl_unet, x, t, emb, grad, args.repeats)
        print(f"{'forward+backward' if grad else 'forward':<17} plain diffusers+peft {plain:7.1f}   ddrl {ours:7.1f}")


if __name__ == "__main__":
    main()
