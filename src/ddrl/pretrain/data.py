"""Pretraining data: rendered shapes-world images with their prompts.

Prompts are drawn category first, then uniformly within the category, so that the small
categories (single object, counting) are not drowned by the 120 colour-attribution prompts.
Pretraining uses every prompt of the world, training and held-out alike, as a real base model
has seen most of its held-out prompts' words in some combination; RL fine-tuning then sees only
the training split.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from tqdm import tqdm

from ..worlds.shapes import CATEGORIES, category_of, render, split


def sample_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    by_cat = {c: [p for p in split("all") if category_of(p) == c] for c in CATEGORIES}
    return [rng.choice(by_cat[rng.choice(CATEGORIES)]) for _ in range(n)]


def render_dataset(n: int, seed: int, progress: bool = True) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, H, W) uint8 images and their N prompts; image i uses render seed `seed * n + i`."""
    prompts = sample_prompts(n, seed)
    images = np.stack([np.asarray(render(p, seed * n + i))
                       for i, p in enumerate(tqdm(prompts, desc="render", disable=not progress))])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), prompts
