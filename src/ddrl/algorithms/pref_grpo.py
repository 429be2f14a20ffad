"""Pref-GRPO (Wang et al. 2025): Flow-GRPO on win rates within each group instead of pointwise
scores. Each sample's reward is the fraction of its group it beats, judged by a pairwise reward
(`reward.pairwise`, e.g. a VLM judge) or, without one, by comparing the pointwise rewards; the
advantages divide by each group's own std (ddof 1, + 1e-8), as the reference does
(CodeGoat24/Pref-GRPO, fastvideo/rewards/dispatcher.py). The rest is Flow-GRPO's update, with
the reference's choices (fastvideo/train_flux.py) as options:

- which steps train: each sample its own random floor(S * timestep_fraction) of the stochastic
  steps (a torch.randperm per sample); `pref_grpo.steps first` trains Flow-GRPO's first ones;
- the reward mix of its scripts (`--reward_spec '{"unifiedreward_think": 0.4, "clip": 0.6}'`):
  each reward's group-normalised advantages, weighted and summed (`pref_grpo.pointwise_weight`
  is the pointwise reward's weight beside the win rates'), then, with `--apply_gdpo`, the sum
  normalised over the whole batch (`pref_grpo.batch_normalize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..advantages import judged_win_rates, win_rate_advantages, win_rates
from ..config import ConfigError
from ..options import option
from .base import Context, EpochRewards
from .flow_grpo import FlowGRPO


@dataclass(frozen=True)
class PrefGRPOOptions:
    section: ClassVar[str] = "pref_grpo"
    steps: Literal["random", "first"] = option(
        "random", None, "the trained steps: random (each sample its own random floor(S * timestep_fraction) of its "
        "stochastic steps, as Pref-GRPO's train_flux.py) or first (the first ones, every sample alike, as Flow-GRPO)")
    pointwise_weight: float = option(
        0.0, "[0, 1]", "the pointwise reward's weight in the advantages: (1 - w) x the win rates' group-normalised "
        "advantages + w x the reward's own (Pref-GRPO's scripts: clip 0.6 beside the judge's 0.4)")
    batch_normalize: bool = option(False, None, "normalise the mixed advantages over the whole batch (mean 0, std "
                                   "ddof 1 + 1e-8), as Pref-GRPO's --apply_gdpo")


class PrefGRPO(FlowGRPO):
    Options = PrefGRPOOptions
    name = "pref-grpo"
    uses_pairwise_judge = True

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        s, t = cfg.sample, cfg.train
        if t.advantages != "group":
            raise ConfigError("pref-grpo computes win rates within groups: set train.advantages to group")
        if cfg.reward.pairwise and t.batch_size % s.images_per_prompt:
            raise ConfigError(f"a pairwise judge compares each group on the process that sampled it: "
                              f"sample.images_per_prompt ({s.images_per_prompt}) must divide train.batch_size "
                              f"({t.batch_size})")

    def __init__(self, options, ctx: Context):
        super().__init__(options, ctx)
        self.judge = None
        if ctx.cfg.reward.pairwise:
            from ..rewards import get_reward
            from ..rewards.pairwise import as_pairwise

            self.judge = as_pairwise(get_reward(ctx.cfg.reward.pairwise))
        self._seen: list[tuple[Tensor, list[str], Tensor]] = []

    def observe(self, images: Tensor, prompts: list[str], global_idx: Tensor) -> None:
        if self.judge is not None:
            self._seen.append((images, prompts, global_idx))

    def signal(self, batch: EpochRewards, metrics: dict) -> Tensor:
        if self.judge is not None:  # each group lies on this process (validation): judge it here
            images = torch.cat([im for im, _, _ in self._seen])
            gidx = torch.cat([g for _, _, g in self._seen])
            local = judged_win_rates(self.judge.compare, images, [p for _, ps, _ in self._seen for p in ps],
                                     gidx // self.ctx.cfg.sample.images_per_prompt)
            self._seen.clear()
            rates = self.ctx.gather(local)
        else:
            r = batch.rewards
            rates = win_rates(torch.sigmoid(r[:, None] - r[None, :]), batch.groups)
        metrics["reward/win_rate_std"] = float(rates.std(unbiased=False))
        spread = [bool((rates[batch.groups == g] != rates[batch.groups == g][0]).any()) for g in batch.groups.unique()]
        metrics["prompts/zero_std_ratio"] = 1 - sum(spread) / len(spread)
        return self.mixed_advantages(rates, batch.rewards, batch.groups)

    def mixed_advantages(self, rates: Tensor, rewards: Tensor, groups: Tensor) -> Tensor:
        """fastvideo/rewards/dispatcher.py compute_weighted_advantages (use_group): each reward
        normalised within its group (std ddof 1 + 1e-8), weighted and summed; with
        batch_normalize, the sum normalised over the batch; then clipped to adv_clip_max, as the
        loss does (train_flux.py)."""
        o, clip = self.options, self.ctx.cfg.train.adv_clip_max
        adv = win_rate_advantages(rates, groups)
        if o.pointwise_weight:
            adv = (1 - o.pointwise_weight) * adv + o.pointwise_weight * win_rate_advantages(rewards, groups)
        if o.batch_normalize:
            a = adv.double()
            adv = ((a - a.mean()) / (a.std(unbiased=True) + 1e-8)).float()
        return adv.clamp(-clip, clip)

    def steps_of(self, g: torch.Generator) -> Tensor:
        if self.options.steps == "first":
            return self.trained
        stochastic = self.ctx.sampler.stochastic.nonzero().flatten()
        return stochastic[torch.randperm(len(stochastic), generator=g)][:len(self.trained)]
