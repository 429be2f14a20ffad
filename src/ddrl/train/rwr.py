"""The RWR update (DDPO paper's baseline): the denoising loss on the epoch's final samples,
weighted by their rewards (losses/rwr.py), at a fresh random timestep and noise per sample."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from ..losses.rwr import weighted_denoising_loss
from .minibatches import minibatches


def rwr_update(tr, ro, weights: Tensor, epoch: int) -> dict[str, float]:
    ga = tr.cfg.train.gradient_accumulation_steps
    ab_all = tr.policy.alphas_cumprod
    stats: dict[str, list[float]] = defaultdict(list)
    for mb, rows, gens in minibatches(tr, ro, epoch):
        ts = torch.stack([torch.randint(0, len(ab_all), (), generator=g) for g in gens])
        eps = torch.stack([torch.randn(ro.latents.shape[2:], generator=g) for g in gens])
        x0 = ro.latents[rows, -1]
        ab = ab_all[ts].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        with tr.accelerator.autocast():
            pred = tr.policy.predict(x_t, ts.to(x_t.device), tr.cond_table[ro.prompt_ids[rows]])
        terms = weighted_denoising_loss(pred, eps, weights[rows])
        (terms.sum() / (len(rows) * ga)).backward()
        stats["train/loss"].append(float(terms.detach().mean()))
        if (mb + 1) % ga == 0:
            stats["train/grad_norm"].append(tr.optimizer_step())
    return {k: sum(v) / len(v) for k, v in stats.items()}
