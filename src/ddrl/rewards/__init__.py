"""Rewards: a registry of factories, keyed by name. Heavy imports belong inside factories."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from .base import RewardError, RewardFn, RewardOutput, check_images, check_output, score


@dataclass(frozen=True)
class RewardSpec:
    factory: Callable[[], RewardFn]
    inputs: str
    description: str


def _jpeg(kind: str):
    def make():
        from . import jpeg
        return getattr(jpeg, kind)()
    return make


def _shapes(kind: str):
    def make():
        from . import shapes
        return getattr(shapes, kind)()
    return make


REWARDS: dict[str, RewardSpec] = {
    "jpeg-compressibility": RewardSpec(_jpeg("jpeg_compressibility"), "images",
                                       "minus the JPEG size (kB, quality 95); DDPO paper"),
    "jpeg-incompressibility": RewardSpec(_jpeg("jpeg_incompressibility"), "images",
                                         "the JPEG size (kB, quality 95); DDPO paper"),
    "shapes-verifier": RewardSpec(_shapes("shapes_verifier"), "images, shapes-world prompts",
                                  "verifier partial credit in [0, 1] (1 when correct)"),
    "shapes-accuracy": RewardSpec(_shapes("shapes_accuracy"), "images, shapes-world prompts",
                                  "verifier verdict: 1 if the image satisfies its prompt, else 0"),
}


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        close = difflib.get_close_matches(name, REWARDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RewardError(f"unknown reward {name!r}{hint} Known: {', '.join(REWARDS)}")
    return REWARDS[name].factory()


__all__ = ["REWARDS", "RewardError", "RewardFn", "RewardOutput", "RewardSpec", "check_images",
           "check_output", "get_reward", "score"]
