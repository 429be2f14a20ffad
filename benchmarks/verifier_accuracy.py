"""Accuracy of the shapes verifier on freshly rendered ground truth and on noise images.

    python benchmarks/verifier_accuracy.py [--seeds 20]

Ground truth: every prompt of the world rendered with `--seeds` seeds never used by the
pretraining data. Noise: uniform, Gaussian and blocky noise images scored against every prompt
(the highest score any prompt gives is reported).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from ddrl.worlds.shapes import CATEGORIES, IMAGE_SIZE, render, split, verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    correct, scores = defaultdict(list), defaultdict(list)
    t0 = time.perf_counter()
    for p in split("all"):
        for seed in range(20_000_000, 20_000_000 + args.seeds):
            v = verify(render(p, seed), p)
            correct[v.category].append(v.correct)
            scores[v.category].append(v.score)
    n = sum(len(v) for v in correct.values())
    print(f"ground truth: {n} images, {n / (time.perf_counter() - t0):.0f} rendered+verified per second")
    print(f"{'category':<14} {'accuracy':>8} {'score':>6} {'images':>7}")
    for c in CATEGORIES:
        print(f"{c:<14} {np.mean(correct[c]):>8.4f} {np.mean(scores[c]):>6.4f} {len(correct[c]):>7}")
    rng = np.random.default_rng(0)
    s = IMAGE_SIZE
    noise = {
        "uniform": rng.random((s, s, 3)),
        "gaussian": np.clip(0.5 + 0.25 * rng.standard_normal((s, s, 3)), 0, 1),
        "2px blocks": rng.random((s // 2, s // 2, 3)).repeat(2, 0).repeat(2, 1),
        "4px blocks": rng.random((s // 4, s // 4, 3)).repeat(4, 0).repeat(4, 1),
        "blank": np.full((s, s, 3), 0.5),
    }
    for name, img in noise.items():
        print(f"{name:<11} max score over all prompts {max(verify(img, p).score for p in split('all')):.3f}")


if __name__ == "__main__":
    main()
