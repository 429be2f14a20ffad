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
import shutil
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


def win_rate(h_new: list[float], h_base: list[float]) -> tuple[float, float]:
    """The fraction of images (same prompt and seed) that the hidden preference ranks above the
    base model's, ties counting one half, and its standard error over images."""
    w = torch.tensor([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(h_new, h_base)], dtype=torch.float64)
    return float(w.mean()), float(w.std() / len(w) ** 0.5)


def against_base(policy, prompts: list[str], seeds: list[int], *, num_steps: int = 10,
                 guidance_scale: float = 5.0, saturation_weight: float = 0.5) -> dict[str, float]:
    """The trained `policy` against its base (LoRA off, or `policy.reference()`), same prompts and
    seeds, judged by the hidden preference: win rate (ties one half) with its s.e., and the
    verifier's per-image accuracy and the mean saturation of each, with the paired s.e. of their
    changes."""
    from ..generate import generate
    from ..worlds.shapes import verify

    with policy.reference():
        base = generate(policy, prompts, seeds, num_steps=num_steps, guidance_scale=guidance_scale, progress=False)
    new = generate(policy, prompts, seeds, num_steps=num_steps, guidance_scale=guidance_scale, progress=False)
    out, h, per = {}, {}, {}
    for name, images in (("base", base), ("trained", new)):
        correct = [float(verify(im.permute(1, 2, 0).numpy(), p).correct) for im, p in zip(images, prompts)]
        sat = [saturation(im) for im in images]
        h[name] = [c + saturation_weight * s for c, s in zip(correct, sat)]
        per[name] = torch.tensor([correct, sat], dtype=torch.float64)  # (2, n)
        out[f"accuracy_{name}"] = sum(correct) / len(correct)
        out[f"saturation_{name}"] = sum(sat) / len(sat)
    d = per["trained"] - per["base"]  # paired by prompt and seed
    se = d.std(dim=1) / len(prompts) ** 0.5
    out["accuracy_change_se"], out["saturation_change_se"] = float(se[0]), float(se[1])
    out["win_rate"], out["win_rate_se"] = win_rate(h["trained"], h["base"])
    out["n"] = len(prompts)
    return out


def make_shapes_pairs(out_dir: str | Path, *, images_per_prompt: int = 16, heldout_images_per_prompt: int = 4,
                      num_steps: int = 10, margin: float = 0.02, saturation_weight: float = 0.5,
                      max_prompts: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, int]:
    """Write the images and the three pair files under `out_dir`; return the pair counts."""
    from ..generate import generate
    from ..grid import to_pil
    from ..models import load_policy
    from ..worlds.shapes import split

    if images_per_prompt < 2:
        raise ValueError(f"images_per_prompt must be at least 2 (a pair needs two images), got {images_per_prompt}")
    if heldout_images_per_prompt == 1 or heldout_images_per_prompt < 0:
        raise ValueError("heldout_images_per_prompt must be 0 (no held-out sets) or at least 2 (a pair needs two "
                         f"images), got {heldout_images_per_prompt}")
    fresh = not Path(out_dir).exists()
    out = check_writable_dir(out_dir, "the pairs folder")
    policy = load_policy("shapes-sd")
    counts = {}
    parts = {"train": ("train", images_per_prompt), "heldout": ("train", heldout_images_per_prompt),
             "heldout_prompts": ("heldout", heldout_images_per_prompt)}
    for offset, (part, (prompt_split, per_prompt)) in enumerate(parts.items()):
        if per_prompt == 0:
            continue
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
        if not rows:  # an empty pairs file would only fail later, in reward-train or DPO
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
            raise ValueError(f"no {part} pairs: no two images of a prompt differ in the hidden preference by "
                             f"the margin {margin}; sample more images per prompt or more prompts")
        atomic_write_text(out / f"{part}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        counts[part] = len(rows)
    atomic_write_text(out / "preference.json", json.dumps(
        {"hidden_preference": "verifier correctness + saturation_weight * mean saturation",
         "saturation_weight": saturation_weight, "margin": margin, "images_per_prompt": images_per_prompt,
         "heldout_images_per_prompt": heldout_images_per_prompt,
         "num_steps": num_steps, "seed": seed, "pairs": counts}, indent=2))
    return counts
