"""Sampling speed of the built-in models: 64 images, 20 steps, classifier-free guidance.

    python benchmarks/sample_speed.py [--images 64] [--steps 20] [--repeats 3]

Prints the median wall-clock time over the repeats (after one warm-up run), and its split
between the denoiser passes and the VAE decode.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddrl.cli import quiet_libraries
from ddrl.generate import generate
from ddrl.models import load_policy
from ddrl.worlds.shapes import split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["shapes-sd", "shapes-flow"])
    args = ap.parse_args()
    quiet_libraries()
    prompts = (split("all") * 2)[: args.images]
    seeds = list(range(args.images))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images, "
          f"{args.steps} steps, guidance {args.guidance}")
    print(f"{'model':<12} {'params':>8} {'total s':>8} {'decode s':>9} {'images/s':>9}")
    for name in args.models:
        policy = load_policy(name)
        params = sum(p.numel() for p in policy.denoiser.parameters()) / 1e6
        def run(policy=policy):
            return generate(policy, prompts, seeds, num_steps=args.steps,
                            guidance_scale=args.guidance, batch_size=args.images, progress=False)

        run()
        totals, decodes = [], []
        latents = torch.randn(args.images, *policy.latent_shape)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            totals.append(time.perf_counter() - t0)
            with torch.no_grad():
                t0 = time.perf_counter()
                policy.decode(latents)
                decodes.append(time.perf_counter() - t0)
        total, dec = statistics.median(totals), statistics.median(decodes)
        print(f"{name:<12} {params:>7.2f}M {total:>8.2f} {dec:>9.2f} {args.images / total:>9.1f}")


if __name__ == "__main__":
    main()
