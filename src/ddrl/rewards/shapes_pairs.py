"""Preference pairs on the shapes world from a hidden preference, to check that `ddrl reward-train`
recovers a taste it never sees written down.

The built-in shapes-sd model draws several images per prompt. The hidden preference is
    h(image, prompt) = verifier partial credit + saturation_weight * mean HSV saturation,
correctness plus a liking for vivid colour. Every two images of one prompt whose h differ by at
least `margin` become a pair (the higher h is "chosen"). Training prompts give the training pairs,
the shapes world's held-out prompts give the held-out pairs.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from torch import Tensor


def saturation(image: Tensor) -> float:
    """Mean HSV saturation, (max - min) / max per pixel, of one (3, H, W) image in [0, 1]."""
    hi, lo = image.max(0).values, image.min(0).values
    return float(torch.where(hi > 0, (hi - lo) / hi.clamp(min=1e-8), torch.zeros_like(hi)).mean())


def hidden_preference(image: Tensor, prompt: str, saturation_weight: float = 0.5) -> float:
    from ..worlds.shapes import verify

    verdict = verify(image.permute(1, 2, 0).cpu().numpy(), prompt)
    return verdict.score + saturation_weight * saturation(image)


def make_shapes_pairs(out_dir: str | Path, *, images_per_prompt: int = 8, num_steps: int = 10,
                      margin: float = 0.05, saturation_weight: float = 0.5, max_prompts: int | None = None,
                      seed: int = 0, progress: bool = True) -> dict[str, int]:
    """Write images and `train.jsonl` / `heldout.jsonl` under `out_dir`; return the pair counts."""
    from ..generate import generate
    from ..grid import to_pil
    from ..models import load_policy
    from ..worlds.shapes import split

    out = Path(out_dir)
    policy = load_policy("shapes-sd")
    counts = {}
    for part in ("train", "heldout"):
        prompts = split(part)[:max_prompts]
        (out / "images" / part).mkdir(parents=True, exist_ok=True)
        rep = [p for p in prompts for _ in range(images_per_prompt)]
        seeds = [seed * 1_000_003 + i + (0 if part == "train" else 500_000) for i in range(len(rep))]
        images = generate(policy, rep, seeds, num_steps=num_steps, progress=progress)
        rows = []
        for i, p in enumerate(prompts):
            names, h = [], []
            for k in range(images_per_prompt):
                j = i * images_per_prompt + k
                name = f"images/{part}/{i:03d}_{k}.png"
                to_pil(images[j:j + 1])[0].save(out / name)
                names.append(name)
                h.append(hidden_preference(images[j], p, saturation_weight))
            for a, b in itertools.combinations(range(images_per_prompt), 2):
                if abs(h[a] - h[b]) >= margin:
                    w, l_ = (a, b) if h[a] > h[b] else (b, a)
                    rows.append({"prompt": p, "chosen": names[w], "rejected": names[l_],
                                 "margin": round(abs(h[a] - h[b]), 4)})
        (out / f"{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts[part] = len(rows)
    (out / "preference.json").write_text(json.dumps(
        {"hidden_preference": "verifier partial credit + saturation_weight * mean saturation",
         "saturation_weight": saturation_weight, "margin": margin, "images_per_prompt": images_per_prompt,
         "num_steps": num_steps, "seed": seed, "pairs": counts}, indent=2))
    return counts
