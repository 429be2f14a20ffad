"""The DiffusionNFT update (Zheng et al. 2025; losses/nft.py): flow matching on the epoch's final
samples, noised afresh, with the implicit positive/negative policies weighted by optimality.

Rollouts come from the old policy (Trainer.old_policy), with any sampler; only the final latents
and the rewards are used, so neither log-probs nor guidance enter the update. After each epoch the
old policy moves toward the trained one: theta_old <- d theta_old + (1 - d) theta.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from ..losses.nft import nft_loss, optimality_weights
from .minibatches import minibatches


def old_policy_decay(kind: str, epoch: int) -> float:
    """d after `epoch` completed epochs: none keeps old = current; ramp and delayed are the
    reference code's schedules 1 and 2."""
    if kind == "none":
        return 0.0
    if kind == "ramp":
        return min(0.001 * epoch, 0.5)
    return 0.0 if epoch < 75 else min(0.0075 * (epoch - 75), 0.999)


def nft_update(tr, ro, adv: Tensor, epoch: int) -> dict[str, float]:
    cfg, t = tr.cfg, tr.cfg.train
    k_train, ga = cfg.trained_timesteps, t.gradient_accumulation_steps
    sigmas = tr.sampler.sigmas[:-1]  # the rollout's noise levels, without the final 0
    r = optimality_weights(adv, t.adv_clip_max)
    x0_all = ro.latents[:, -1]
    stats: dict[str, list[float]] = defaultdict(list)
    for mb, rows, gens in minibatches(tr, ro, epoch):
        # each sample: its own random k_train noise levels and fresh noise at each
        levels = torch.stack([torch.randperm(len(sigmas), generator=g)[:k_train] for g in gens])  # (B, k)
        x1 = torch.stack([torch.randn((k_train, *x0_all.shape[1:]), generator=g) for g in gens])
        rr = rows[:, None].expand_as(levels).flatten()
        sigma = sigmas[levels.flatten()].to(x0_all.device)
        x0, x1 = x0_all[rr], x1.flatten(0, 1).to(x0_all.device)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        x_t, target = (1 - s) * x0 + s * x1, x1 - x0
        cond = tr.cond_table[ro.prompt_ids[rr]]
        with torch.no_grad(), tr.old_policy(), tr.accelerator.autocast():
            v_old = tr.policy.predict(x_t, sigma, cond).float()
        with tr.accelerator.autocast():
            v_theta = tr.policy.predict(x_t, sigma, cond).float()
        terms = nft_loss(v_theta, v_old, target, r[rr].to(v_theta.device), t.nft_beta)
        if t.kl_coef > 0:  # the reference code's small anchor to the base model
            with torch.no_grad(), tr.reference(), tr.accelerator.autocast():
                v_ref = tr.policy.predict(x_t, sigma, cond).float()
            anchor = ((v_theta - v_ref) ** 2).flatten(1).mean(1)
            terms = terms + t.kl_coef * anchor
            stats["train/kl_ref"].append(float(anchor.detach().mean()))
        (terms.sum() / (len(rows) * ga * k_train)).backward()
        stats["train/loss"].append(float(terms.detach().mean()))
        if (mb + 1) % ga == 0:
            stats["train/grad_norm"].append(tr.optimizer_step())
    d = old_policy_decay(t.nft_old_decay, epoch + 1)
    with torch.no_grad():
        for k, v in tr.trainable_state().items():
            tr.nft_old[k].mul_(d).add_(v, alpha=1 - d)
    stats["train/nft_old_decay"].append(d)
    stats["train/optimality_weight_mean"].append(float(r.mean()))
    return {k: sum(v) / len(v) for k, v in stats.items()}
