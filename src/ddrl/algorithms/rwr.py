"""Reward-weighted regression, the DDPO paper's baseline (losses/rwr.py): the ordinary denoising
loss on the epoch's final samples, weighted by their rewards, at a fresh random timestep and
noise per sample."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..config import ConfigError
from ..losses.rwr import rwr_sparse_weights, rwr_weights, weighted_denoising_loss
from ..options import option
from ..sampling import diffusion_noised
from .base import EpochRewards, RolloutAlgorithm, Rollouts, mean_stats, minibatches


@dataclass(frozen=True)
class RWROptions:
    section: ClassVar[str] = "rwr"
    beta: float = option(5.0, "(0, inf)", "inverse temperature of the exponential weights exp(beta r)")
    percentile: float | None = option(None, "[0, 100)", "RWR-sparse: keep samples at or above this percentile "
                                      "of the batch, weight 1 (None: exponential weights)")


class RWR(RolloutAlgorithm):
    Options = RWROptions
    prediction = "epsilon"

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg.sample.sampler != "ddim":
            raise ConfigError("train.algorithm rwr trains DDIM diffusion models: set sample.sampler ddim")

    @classmethod
    def trained_steps(cls, cfg) -> int:
        return 1  # one fresh noise level per sample

    def signal(self, batch: EpochRewards, metrics: dict) -> Tensor:
        o = self.options
        if o.percentile is not None:
            return rwr_sparse_weights(batch.rewards, o.percentile)
        return rwr_weights(batch.rewards, o.beta)

    def update(self, ro: Rollouts, weights: Tensor, epoch: int) -> dict[str, float]:
        ctx = self.ctx
        ab_all = ctx.policy.alphas_cumprod
        stats: dict[str, list[float]] = defaultdict(list)
        acc = ctx.accumulation(stats)
        for _, mb, rows, gens in minibatches(ctx, ro, epoch):
            ts = torch.stack([torch.randint(0, len(ab_all), (), generator=g) for g in gens])
            eps = torch.stack([torch.randn(ro.latents.shape[2:], generator=g) for g in gens]).to(ro.latents.device)
            x0 = ro.latents[rows, -1]
            x_t = diffusion_noised(x0, ab_all[ts].to(x0.device), eps)
            with ctx.autocast():
                pred = ctx.policy.predict(x_t, ts.to(x_t.device), ctx.cond_table[ro.prompt_ids[rows]])
            terms = weighted_denoising_loss(pred, eps, weights[rows])
            acc.backward(terms.sum(), len(rows))
            stats["train/loss"].append(float(terms.detach().mean()))
            acc.end_minibatch(mb)
        return mean_stats(stats)
