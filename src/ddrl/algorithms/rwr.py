"""Reward-weighted regression, the DDPO paper's baseline (losses/rwr.py): the ordinary denoising
loss on the epoch's final samples, weighted by their rewards, at a fresh random timestep and
noise per sample."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from ..config import ConfigError
from ..losses.rwr import rwr_sparse_weights, rwr_weights, weighted_denoising_loss
from .base import Algorithm, EpochRewards, Rollouts, mean_stats, minibatches


class RWR(Algorithm):
    prediction = "epsilon"

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg.sample.sampler != "ddim":
            raise ConfigError("train.algorithm rwr trains DDIM diffusion models: set sample.sampler ddim")

    @classmethod
    def trained_steps(cls, cfg) -> int:
        return 1  # one fresh noise level per sample

    def signal(self, batch: EpochRewards, metrics: dict) -> Tensor:
        t = self.ctx.cfg.train
        if t.rwr_percentile is not None:
            return rwr_sparse_weights(batch.rewards, t.rwr_percentile)
        return rwr_weights(batch.rewards, t.rwr_beta)

    def update(self, ro: Rollouts, weights: Tensor, epoch: int) -> dict[str, float]:
        ctx = self.ctx
        ga = ctx.cfg.train.gradient_accumulation_steps
        ab_all = ctx.policy.alphas_cumprod
        stats: dict[str, list[float]] = defaultdict(list)
        for _, mb, rows, gens in minibatches(ctx, ro, epoch):
            ts = torch.stack([torch.randint(0, len(ab_all), (), generator=g) for g in gens])
            eps = torch.stack([torch.randn(ro.latents.shape[2:], generator=g) for g in gens]).to(ro.latents.device)
            x0 = ro.latents[rows, -1]
            ab = ab_all[ts].view(-1, 1, 1, 1).to(x0.device)
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            with ctx.autocast():
                pred = ctx.policy.predict(x_t, ts.to(x_t.device), ctx.cond_table[ro.prompt_ids[rows]])
            terms = weighted_denoising_loss(pred, eps, weights[rows])
            (terms.sum() / (len(rows) * ga)).backward()
            stats["train/loss"].append(float(terms.detach().mean()))
            if (mb + 1) % ga == 0:
                stats["train/grad_norm"].append(ctx.optimizer_step())
        return mean_stats(stats)
