"""Preference pairs on the shapes world from a hidden preference, to check that `ddrl reward-train`
recovers a taste it never sees written down.

The built-in shapes-sd model draws several images per prompt. The hidden preference is
    h(image, prompt) = verifier correctness (0 or 1) + saturation_weight * mean HSV saturation,
correctness first, then a liking for vivid colour. Every two images of one prompt whose h differ
by at least `margin` become a pair (the higher h is "chosen"). Three files:
- `train.jsonl`: images of the training prompts;
- `heldout.jsonl`: other images (other seeds) of the same prompts, the usual held-out pairs;
- `heldout_prompts.jsonl`: images of the shapes world's held-out prompts, compositions never seen
  in training (a much harder test: the model must judge correctness of new combinations).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from torch import Tensor

from ..io import atomic_write_text, check_writable_dir


def saturation(image: Tensor) -> float:
    """Mean HSV saturation, (max - min) / max per pixel, of one (3, H, W) image in [0, 1]."""
    hi, lo = image.max(0).values, image.min(0).values
    return float(torch.where(hi > 0, (hi - lo) / hi.clamp(min=1e-8), torch.zeros_like(hi)).mean())


def hidden_preference(image: Tensor, prompt: str, saturation_weight: float = 0.5) -> float:
    from ..worlds.shapes import verify

    verdict = verify(image.permute(1, 2, 0).cpu().numpy(), prompt)
    return float(verdict.correct) + saturation_weight * saturation(image)


def make_shapes_pairs(out_dir: str | Path, *, images_per_prompt: int = 16, heldout_images_per_prompt: int = 4,
                      num_steps: int = 10, margin: float = 0.02, saturation_weight: float = 0.5,
                      max_prompts: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, int]:
    """Write the images and the three pair files under `out_dir`; return the pair counts."""
    from ..generate import generate
    from ..grid import to_pil
    from ..models import load_policy
    from ..worlds.shapes import split

    out = check_writable_dir(out_dir, "the pairs folder")
    policy = load_policy("shapes-sd")
    counts = {}
    parts = {"train": ("train", images_per_prompt), "heldout": ("train", heldout_images_per_prompt),
             "heldout_prompts": ("heldout", heldout_images_per_prompt)}
    for offset, (part, (prompt_split, per_prompt)) in enumerate(parts.items()):
        prompts = split(prompt_split)[:max_prompts]
        (out / "images" / part).mkdir(parents=True, exist_ok=True)
        rep = [p for p in prompts for _ in range(per_prompt)]
        seeds = [seed * 1_000_003 + offset * 100_000 + i for i in range(len(rep))]
        images = generate(policy, rep, seeds, num_steps=num_steps, progress=progress)
        rows = []
        for i, p in enumerate(prompts):
            names, h = [], []
            for k in range(per_prompt):
                j = i * per_prompt + k
                name = f"images/{part}/{i:03d}_{k}.png"
                to_pil(images[j:j + 1])[0].save(out / name)
                names.append(name)
                h.append(hidden_preference(images[j], p, saturation_weight))
            for a, b in itertools.combinations(range(per_prompt), 2):
                if abs(h[a] - h[b]) >= margin:
                    w, l_ = (a, b) if h[a] > h[b] else (b, a)
                    rows.append({"prompt": p, "chosen": names[w], "rejected": names[l_],
                                 "margin": round(abs(h[a] - h[b]), 4)})
        atomic_write_text(out / f"{part}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        counts[part] = len(rows)
    atomic_write_text(out / "preference.json", json.dumps(
        {"hidden_preference": "verifier correctness + saturation_weight * mean saturation",
         "saturation_weight": saturation_weight, "margin": margin, "images_per_prompt": images_per_prompt,
         "heldout_images_per_prompt": heldout_images_per_prompt,
         "num_steps": num_steps, "seed": seed, "pairs": counts}, indent=2))
    return counts
