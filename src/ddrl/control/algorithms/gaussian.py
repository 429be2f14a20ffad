"""Gaussian PPO, DPPO's baseline (model/rl/gaussian_ppo.py, model/common/gaussian.py): a mean
chunk from an MLP and a learned per-element std (`fixed_std`, `learn_fixed_std`), clamped to
[std_min, std_max]; noise clamped +-3; the log-prob summed over the chunk and clamped to [-5, 2].
From the behaviour-cloned policy (Robomimic's ft_ppo_gaussian_mlp: std 0.1 in [0.01, 0.2],
clip 0.01) or from scratch (fresh weights; DPPO's Gym scratch runs use clip 0.1).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...losses.ppo import clipped_surrogate, normalize_advantages
from ...options import option
from ...sampling import gaussian_log_prob
from ..nets import GaussianHead
from ..policies import NOISE_CLIP, ChunkPolicy
from .base import ControlAlgorithm

LOG_PROB_CLAMP = (-5.0, 2.0)


@dataclass(frozen=True)
class GaussianOptions:
    section: ClassVar[str] = "gaussian"
    clip_range: float = option(0.01, "(0, 1)", "PPO clip (BC start 0.01; DPPO's scratch runs 0.1)")
    init_std: float = option(0.1, "(0, inf)", "initial std of every action element (fixed_std)")
    std_min: float = option(0.01, "(0, inf)", "lower clamp of the std")
    std_max: float = option(0.2, "(0, inf)", "upper clamp of the std")
    from_scratch: bool = option(False, None, "fresh weights instead of the behaviour-cloned policy")


class GaussianPPO(ControlAlgorithm):
    options_class = GaussianOptions

    def __init__(self, policy: ChunkPolicy, options: GaussianOptions):
        if policy.kind != "gaussian":
            raise ValueError(f"Gaussian PPO fine-tunes a gaussian policy, not {policy.kind!r}")
        if not options.std_min <= options.init_std <= options.std_max:
            raise ValueError(f"gaussian.init_std {options.init_std:g} must lie in [std_min, std_max] = "
                             f"[{options.std_min:g}, {options.std_max:g}]")
        self.policy, self.o = policy, options
        self.calls_per_chunk = 1
        if options.from_scratch:
            c = policy.config
            self.actor = GaussianHead(c["obs_dim"], c["action_dim"], c["horizon"], c["width"], c["depth"], options.init_std)
        else:
            self.actor = copy.deepcopy(policy.net).requires_grad_(True)
            self.actor.log_std.data.fill_(math.log(options.init_std))

    def _dist(self, obs):
        std = self.actor.log_std.exp().clamp(self.o.std_min, self.o.std_max)
        return self.actor(obs), std

    @torch.no_grad()
    def act(self, obs, generator):
        mean, std = self._dist(obs)
        z = torch.randn(mean.shape, generator=generator).clamp(-NOISE_CLIP, NOISE_CLIP)
        a = mean + std * z
        return a, {"action": a, "old_log_prob": gaussian_log_prob(a, mean, std).sum((1, 2))}

    def policy_loss(self, obs, records, advantages, rows, generator):
        mean, std = self._dist(obs)
        new = gaussian_log_prob(records["action"], mean, std).sum((1, 2)).clamp(*LOG_PROB_CLAMP)
        log_ratio = new - records["old_log_prob"].clamp(*LOG_PROB_CLAMP)
        loss, stats = clipped_surrogate(log_ratio, normalize_advantages(advantages), self.o.clip_range)
        stats["train/std"] = float(std.detach().mean())
        return loss, log_ratio, stats

    def evaluation_actor(self):
        return lambda obs, gen: self.actor(obs).clamp(-1, 1)

    def describe(self) -> str:
        start = "from scratch" if self.o.from_scratch else "from the behaviour-cloned policy"
        return f"Gaussian PPO {start}: std {self.o.init_std:g} in [{self.o.std_min:g}, {self.o.std_max:g}], clip {self.o.clip_range:g}"
