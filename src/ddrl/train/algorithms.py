"""Each algorithm as a pair: the per-sample training signal computed from the epoch's gathered
rewards (advantages, win-rate advantages or RWR weights), and the update that consumes it."""

from __future__ import annotations

import torch
from torch import Tensor

from ..advantages import win_rates
from ..losses.rwr import rwr_sparse_weights, rwr_weights
from .ddpo import ddpo_single_pass_update, ddpo_update
from .nft import nft_update
from .rwr import rwr_update


def _clipped_advantages(tr, rewards: Tensor, pids: Tensor, metrics: dict) -> Tensor:
    clip = tr.cfg.train.adv_clip_max
    return tr._advantages(rewards, pids, metrics).clamp(-clip, clip)


def _win_rate_advantages(tr, rewards: Tensor, pids: Tensor, metrics: dict, judged: Tensor | None = None) -> Tensor:
    """Pref-GRPO: each sample's reward becomes the fraction of its group it beats, by the pairwise
    judge (`judged`, computed where the images are) or else by comparing the rewards."""
    groups = tr.groups(len(rewards))
    rates = judged if judged is not None else win_rates(torch.sigmoid(rewards[:, None] - rewards[None, :]), groups)
    metrics["reward/win_rate_std"] = float(rates.std(unbiased=False))
    return _clipped_advantages(tr, rates, pids, metrics)


def _rwr_weights(tr, rewards: Tensor, pids: Tensor, metrics: dict) -> Tensor:
    t = tr.cfg.train
    return rwr_sparse_weights(rewards, t.rwr_percentile) if t.rwr_percentile is not None else rwr_weights(rewards, t.rwr_beta)


def _ddpo(tr, ro, adv: Tensor, epoch: int) -> dict[str, float]:
    return (ddpo_single_pass_update if tr.cfg.single_pass else ddpo_update)(tr, ro, adv, epoch)


# algorithm -> (per-sample training signal from the gathered rewards, update)
UPDATES = {"ddpo-is": (_clipped_advantages, _ddpo), "ddpo-sf": (_clipped_advantages, _ddpo),
           "rwr": (_rwr_weights, rwr_update), "flow-grpo": (_clipped_advantages, _ddpo),
           "pref-grpo": (_win_rate_advantages, _ddpo), "nft": (_clipped_advantages, nft_update)}
