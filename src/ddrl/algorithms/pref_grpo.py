"""Pref-GRPO (Wang et al. 2025): Flow-GRPO on win rates within each group instead of pointwise
scores. Each sample's reward is the fraction of its group it beats, judged by a pairwise reward
(`reward.pairwise`, e.g. a VLM judge) or, without one, by comparing the pointwise rewards; the
advantages divide by each group's own std (ddof 1, + 1e-8), as the reference does
(CodeGoat24/Pref-GRPO, fastvideo/rewards/dispatcher.py). The rest is Flow-GRPO's update.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..advantages import judged_win_rates, win_rate_advantages, win_rates
from ..config import ConfigError
from .base import Context, EpochRewards
from .flow_grpo import FlowGRPO


class PrefGRPO(FlowGRPO):
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
        clip = self.ctx.cfg.train.adv_clip_max
        return win_rate_advantages(rates, batch.groups).clamp(-clip, clip)
