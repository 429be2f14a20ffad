"""`train.advantages` over an epoch's gathered rewards, clipped to +-adv_clip_max; the per-prompt
reward buffers (DDPO's stat tracking) are its state, kept in checkpoints as JSON."""

from __future__ import annotations

from torch import Tensor

from ..advantages import batch_advantages, group_advantages, per_prompt_advantages
from .base import EpochRewards


class AdvantageTracker:
    def __init__(self, train_cfg):
        self.t = train_cfg
        self.prompt_buffers: dict[str, list[float]] = {}

    def __call__(self, batch: EpochRewards, metrics: dict[str, float]) -> Tensor:
        t, r = self.t, batch.rewards
        if t.advantages == "batch":
            adv = batch_advantages(r)
        elif t.advantages == "group":
            adv = group_advantages(r, batch.groups, global_std=t.global_std)
            spread = [bool((r[batch.groups == g] != r[batch.groups == g][0]).any()) for g in batch.groups.unique()]
            metrics["prompts/zero_std_ratio"] = 1 - sum(spread) / len(spread)
        else:
            adv, self.prompt_buffers = per_prompt_advantages(batch.prompts, r, self.prompt_buffers,
                                                             buffer_size=t.buffer_size, min_count=t.min_count)
            unique = set(batch.prompts)
            metrics["prompts/unique"] = len(unique)
            metrics["prompts/tracked_fraction"] = sum(
                len(self.prompt_buffers[p]) >= t.min_count for p in unique) / len(unique)
        return adv.clamp(-t.adv_clip_max, t.adv_clip_max)

    def state_dict(self) -> dict:
        return {"prompt_buffers": self.prompt_buffers}

    def load_state_dict(self, values: dict) -> None:
        self.prompt_buffers = values["prompt_buffers"]
