"""Pairwise preference rewards: P(image a is better than image b for its prompt), shape (B,).

A VLM judge compares two images directly (`VlmJudge.compare`); any pointwise reward becomes
pairwise through the Bradley-Terry model, P(a > b) = sigmoid((s_a - s_b) / temperature).
Pref-GRPO turns these probabilities into win rates within a group.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor

from .base import RewardError, RewardFn, check_images, score


class PairwiseReward(Protocol):
    name: str

    def compare(self, images_a: Tensor, images_b: Tensor, prompts: Sequence[str]) -> Tensor: ...


class PointwisePreference:
    def __init__(self, reward: RewardFn, temperature: float = 1.0):
        if temperature <= 0:
            raise RewardError(f"pairwise {reward.name!r}: temperature must be > 0, got {temperature}")
        self.reward, self.temperature, self.name = reward, temperature, f"pairwise:{reward.name}"

    def compare(self, images_a: Tensor, images_b: Tensor, prompts: Sequence[str]) -> Tensor:
        if images_a.shape != images_b.shape:
            raise RewardError(f"{self.name!r}: image batches differ in shape, {tuple(images_a.shape)} vs "
                              f"{tuple(images_b.shape)}")
        check_images(self.name, images_a)
        s, _ = score(self.reward, torch.cat([images_a, images_b]), list(prompts) * 2)
        s_a, s_b = s.chunk(2)
        return torch.sigmoid((s_a - s_b) / self.temperature)


def as_pairwise(reward, temperature: float = 1.0) -> PairwiseReward:
    """The reward itself if it compares pairs, else its Bradley-Terry pairwise form."""
    return reward if hasattr(reward, "compare") else PointwisePreference(reward, temperature)
