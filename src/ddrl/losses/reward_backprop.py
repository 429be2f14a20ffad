"""Losses of reward backpropagation (ALGORITHMS.md section 6), each a function of the rewards r
of a batch whose images carry gradients to the weights. The batch loss is the mean over samples
times `scale`:

    neg:   -r                 DRaFT (Clark et al. 2023); AlignProp's HPS loss 1 - r has its gradient
    relu:  ReLU(target - r)   ReFL (Xu et al. 2023, THUDM/ImageReward ReFL.py: target 2, scale 1e-3);
                              no gradient from samples already above the target
    abs:   |r - target|       AlignProp's aesthetic loss (alignprop_trainer.py aesthetic_loss_fn: target 10)

Each algorithm's reference defaults are in `DEFAULTS`; `backprop.loss/target/scale` override them.
"""

from __future__ import annotations

import torch
from torch import Tensor

# algorithm -> (loss, target, scale). AlignProp multiplies its loss by loss_coeff 0.01 (grad_scale 1).
DEFAULTS = {"refl": ("relu", 2.0, 1e-3), "draft": ("neg", None, 1.0), "alignprop": ("neg", None, 0.01)}


def reward_loss(rewards: Tensor, kind: str, target: float | None, scale: float) -> Tensor:
    """The scalar loss of (B,) rewards."""
    if kind == "neg":
        per_sample = -rewards
    elif kind == "relu":
        per_sample = torch.relu(target - rewards)
    elif kind == "abs":
        per_sample = (rewards - target).abs()
    else:
        raise ValueError(f"unknown reward loss {kind!r}; expected neg, relu or abs")
    return per_sample.mean() * scale
