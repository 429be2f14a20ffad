"""The shapes-world verifier as a reward: GenEval-style correctness or partial credit."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..worlds.shapes import parse_prompt, verify
from .base import RewardError, RewardOutput


class ShapesVerifierReward:
    differentiable = False
    device = "cpu"

    def __init__(self, name: str, binary: bool):
        self.name, self.binary = name, binary

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        for p in prompts:
            try:
                parse_prompt(p)
            except ValueError as e:
                raise RewardError(f"reward {self.name!r} scores shapes-world prompts only: {e}") from None
        verdicts = [verify(img.detach().float().permute(1, 2, 0).cpu().numpy(), p)
                    for img, p in zip(images, prompts)]
        correct = [v.correct for v in verdicts]
        partial = [v.score for v in verdicts]
        scores = torch.tensor([float(c) for c in correct] if self.binary else partial)
        return RewardOutput(scores, {"correct": correct, "score": partial,
                                     "category": [v.category for v in verdicts]})


def shapes_verifier() -> ShapesVerifierReward:
    """Partial credit in [0, 1]: a denser signal than correctness (1 exactly when correct)."""
    return ShapesVerifierReward("shapes-verifier", binary=False)


def shapes_accuracy() -> ShapesVerifierReward:
    """1 if the image satisfies its prompt (GenEval's binary verdict), else 0."""
    return ShapesVerifierReward("shapes-accuracy", binary=True)


class ShapesPreferenceReward:
    """The hidden preference `ddrl reward-pairs` labels pairs with (rewards/shapes_pairs.py):
    verifier correctness + saturation_weight * mean saturation."""

    differentiable = False
    device = "cpu"
    name = "shapes-preference"

    def __init__(self, saturation_weight: float = 0.5):
        self.saturation_weight = float(saturation_weight)

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        from .shapes_pairs import saturation

        verdict = ShapesVerifierReward(self.name, binary=True)(images, prompts, metadata)
        sat = [saturation(img.detach().float().cpu()) for img in images]
        scores = verdict.scores + self.saturation_weight * torch.tensor(sat)
        return RewardOutput(scores, verdict.details | {"saturation": sat})


def shapes_preference(saturation_weight: float = 0.5) -> ShapesPreferenceReward:
    return ShapesPreferenceReward(saturation_weight)
