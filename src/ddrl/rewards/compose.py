"""Rewards built from rewards: weighted sums and per-prompt routing.

Both report each component's scores in `details["component/<name>"]` (None where a component
did not score a sample), which the training loop logs as `reward/<name>/mean`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import RewardError, RewardFn, RewardOutput, check_output


class WeightedSum:
    """sum_i w_i * r_i(images): the usual way to fuse rewards (e.g. PickScore + HPS + CLIPScore)."""

    def __init__(self, terms: Sequence[tuple[float, RewardFn]]):
        if not terms:
            raise RewardError("a weighted sum needs at least one reward")
        names = [r.name for _, r in terms]
        if len(set(names)) != len(names):
            raise RewardError(f"a weighted sum names a reward twice: {names}")
        self.terms, self.components = list(terms), names
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in terms)
        self.differentiable = all(r.differentiable for _, r in terms)
        self.device = terms[0][1].device

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        total, details = 0.0, {}
        for w, r in self.terms:
            out = r(images, prompts, metadata)
            s = check_output(r.name, out, len(images))
            total = total + w * s.to(images.device).float()
            details[f"component/{r.name}"] = s.detach().float().cpu().tolist()
            details |= {f"{r.name}/{k}": v for k, v in out.details.items()}
        return RewardOutput(total, details)


class Routed:
    """Each sample is scored by the reward its metadata selects: `metadata[key]` names the route;
    samples without a known route go to `default` (an error if there is none). Mixed prompt sets
    (GenEval-style, OCR, open-ended) need this: each kind of prompt has its own reward."""

    def __init__(self, key: str, routes: dict[str, RewardFn], default: RewardFn | None = None):
        if not routes and default is None:
            raise RewardError("a routed reward needs at least one route")
        self.key, self.routes, self.default = key, dict(routes), default
        cases = [f"{v}={r.name}" for v, r in routes.items()] + ([f"*={default.name}"] if default else [])
        self.name = f"route[{key}]({', '.join(cases)})"
        rewards = list(routes.values()) + ([default] if default else [])
        self.components = list(dict.fromkeys(r.name for r in rewards))
        self.differentiable = all(r.differentiable for r in rewards)
        self.device = rewards[0].device

    def route(self, meta: dict) -> str:
        value = meta.get(self.key)
        if value is not None and str(value) in self.routes:
            return str(value)
        if self.default is None:
            raise RewardError(f"reward {self.name!r}: a sample has {self.key}={value!r}, which has no route "
                              f"and there is no default (*=...); routes: {sorted(self.routes)}")
        return "*"

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        routes = [self.route(m) for m in metadata]
        scores = torch.zeros(len(images), device=images.device)
        details: dict[str, list] = {"route": routes} | {f"component/{c}": [None] * len(images) for c in self.components}
        for value in dict.fromkeys(routes):
            reward = self.routes.get(value, self.default)
            idx = [i for i, v in enumerate(routes) if v == value]
            out = reward(images[idx], [prompts[i] for i in idx], [metadata[i] for i in idx])
            s = check_output(reward.name, out, len(idx))
            # out-of-place, so gradients flow through differentiable routes
            scores = scores.index_put((torch.tensor(idx, device=images.device),), s.to(images.device).float())
            for i, v in zip(idx, s.detach().float().cpu().tolist()):
                details[f"component/{reward.name}"][i] = v
        return RewardOutput(scores, details)
