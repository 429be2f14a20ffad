"""Score generated images with the shapes verifier, per GenEval category."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from .worlds.shapes import CATEGORIES, parse_prompt, verify


@dataclass(frozen=True)
class Evaluation:
    prompts: list[str]
    correct: list[bool | None]  # None for prompts outside the shapes grammar
    scores: list[float | None]

    def summary(self) -> dict[str, float]:
        """accuracy/<category>, accuracy (mean over categories present, as GenEval reports),
        accuracy_per_image (fraction of all images correct: with one or two prompts in a category,
        the category mean swings with single images), score (mean partial credit) and n."""
        by_cat: dict[str, list[bool]] = defaultdict(list)
        scores = []
        for p, c, s in zip(self.prompts, self.correct, self.scores):
            if c is None:
                continue
            by_cat[parse_prompt(p).category].append(c)
            scores.append(s)
        out = {f"accuracy/{k}": sum(v) / len(v) for k in CATEGORIES if (v := by_cat.get(k))}
        if by_cat:
            out["accuracy"] = sum(out.values()) / len(out)
            out["accuracy_per_image"] = sum(sum(v) for v in by_cat.values()) / len(scores)
            out["score"] = sum(scores) / len(scores)
        out["n"] = len(scores)
        return out


def score_images(images: Tensor, prompts: Sequence[str]) -> Evaluation:
    correct, scores = [], []
    for img, p in zip(images, prompts):
        try:
            parse_prompt(p)
        except ValueError:
            correct.append(None)
            scores.append(None)
            continue
        v = verify(img.permute(1, 2, 0).numpy(), p)
        correct.append(v.correct)
        scores.append(v.score)
    return Evaluation(list(prompts), correct, scores)
