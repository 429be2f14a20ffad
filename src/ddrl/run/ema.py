"""Exponential moving averages of weights: one pure update, used for the evaluated/exported EMA
of the trained weights and for DiffusionNFT's old (sampling) policy.

    target <- decay * target + (1 - decay) * source

`ema_step_` is the EMA of flow_grpo and DiffusionNFT (flow_grpo/ema.py, EMAModuleWrapper.step):
after optimizer step s it updates when (s + 1) is a multiple of the interval, with the decay
min((1 + s) / (10 + s), max_decay), so early updates follow the weights closely.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def ema_update_(target: dict[str, Tensor], source: dict[str, Tensor], decay: float) -> None:
    """In place: every target[k] <- decay * target[k] + (1 - decay) * source[k]."""
    for k, v in source.items():
        target[k].mul_(decay).add_(v.to(target[k].device), alpha=1 - decay)


def warmup_decay(step: int, max_decay: float) -> float:
    return min((1 + step) / (10 + step), max_decay)


def ema_step_(ema: dict[str, Tensor], weights: dict[str, Tensor], step: int, max_decay: float, interval: int) -> None:
    """The EMA after optimizer step `step` (counted from 1)."""
    if (step + 1) % interval == 0:
        ema_update_(ema, weights, warmup_decay(step, max_decay))
