"""DiffusionNFT (Zheng et al. 2025; losses/nft.py): flow matching on the epoch's final samples,
noised afresh, with implicit positive and negative policies weighted by optimality. As the
reference (NVlabs/DiffusionNFT, scripts/train_nft_sd3.py):

- rollouts come from the old policy, with any sampler (the reference: DPM-Solver++(2M),
  `sample.sampler flow-dpm2`, CFG-free); only final latents and rewards are used;
- each sample trains floor(T * timestep_fraction) of the rollout's noise levels, its own random
  ones, with fresh noise at each;
- the loss is the x0-space adaptive form scaled by C / beta (`nft.loss x0-adaptive`), the
  paper's velocity form one option away; plus kl_coef times an anchor ||v_theta - v_ref||^2;
- after each epoch the old policy moves toward the trained one, theta_old <- d theta_old +
  (1 - d) theta, with d scheduled in optimizer steps (`old_policy_decay`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..config import ConfigError
from ..losses.nft import nft_velocity_loss, nft_x0_loss, optimality_weights
from ..options import option
from ..run.ema import ema_update_
from ..sampling import flow_noised
from .advantage_tracker import AdvantageTracker
from .base import Context, EpochRewards, RolloutAlgorithm, Rollouts, mean_stats, minibatches


@dataclass(frozen=True)
class NFTOptions:
    section: ClassVar[str] = "nft"
    beta: float = option(1.0, "(0, inf)", "strength beta of the implicit positive/negative policies")
    loss: Literal["x0-adaptive", "velocity"] = option(
        "x0-adaptive", None, "x0-adaptive (the reference code: x0 errors over their stop-gradient mean absolute "
        "error, times adv_clip_max / beta) or velocity (the paper's plain velocity errors)")
    old_decay: Literal["none", "ramp", "delayed"] = option(
        "ramp", None, "decay d of the old (sampling) policy's EMA after each epoch, by optimizer steps s: none "
        "(old = current), ramp (min(0.001 s, 0.5)) or delayed (0 for 75 steps, then min(0.0075 (s - 75), 0.999))")
    integer_timesteps: bool = option(
        True, None, "rollouts feed the network the timestep floor(1000 sigma), as the reference's sampler does "
        "(a long tensor); training always feeds 1000 sigma unrounded, as the reference's training step")


def integer_time(t: Tensor, num_train_timesteps: int) -> Tensor:
    """DiffusionNFT flow_grpo/diffusers_patch/pipeline_with_logprob.py (v_pred_fn): the SD3
    transformer gets torch.full([B], sigma * 1000, dtype=torch.long), the timestep truncated to
    an integer; as a flow time, floor(N sigma) / N (float64, so the policy's N t is the integer
    once cast to the transformer's float32)."""
    return torch.floor(t.float() * num_train_timesteps).double() / num_train_timesteps


def old_policy_decay(kind: str, step: int) -> float:
    """d after `step` optimizer steps (the reference's return_decay): none keeps old = current
    (type 0), ramp is min(0.001 step, 0.5) (type 1), delayed is 0 for 75 steps, then
    min(0.0075 (step - 75), 0.999) (type 2)."""
    if kind == "none":
        return 0.0
    if kind == "ramp":
        return min(0.001 * step, 0.5)
    return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)


class NFT(RolloutAlgorithm):
    Options = NFTOptions
    prediction = "velocity"

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg.sample.sampler == "ddim":
            raise ConfigError("train.algorithm nft trains flow-matching models: set sample.sampler to flow-dpm2 "
                              "(the reference's solver), flow-ode, flow-sde or flow-cps")

    @classmethod
    def trained_steps(cls, cfg) -> int:
        # the rollout's noise levels, noised afresh: a noise window does not apply
        return max(1, int(cfg.sample.num_steps * cfg.train.timestep_fraction))

    def __init__(self, options: NFTOptions, ctx: Context):
        super().__init__(options, ctx)
        self.advantages = AdvantageTracker(ctx.cfg.train)
        self.old = {k: v.clone() for k, v in ctx.trainable_state().items()}  # the sampling policy's weights

    def sampling_weights(self):
        return self.ctx.swapped(self.old)

    def rollout_time(self, t: Tensor) -> Tensor:
        if not self.options.integer_timesteps:
            return t
        return integer_time(t, self.ctx.policy.num_train_timesteps)

    def signal(self, batch: EpochRewards, metrics: dict) -> Tensor:
        return self.advantages(batch, metrics)

    def update(self, ro: Rollouts, adv: Tensor, epoch: int) -> dict[str, float]:
        ctx, t, o = self.ctx, self.ctx.cfg.train, self.options
        k = self.trained_steps(ctx.cfg)
        sigmas = ctx.sampler.sigmas[:-1]  # the rollout's noise levels, without the final 0
        r = optimality_weights(adv, t.adv_clip_max)
        x0_all = ro.latents[:, -1]
        stats: dict[str, list[float]] = defaultdict(list)
        acc = ctx.accumulation(stats)
        for _, mb, rows, gens in minibatches(ctx, ro, epoch):
            levels = torch.stack([torch.randperm(len(sigmas), generator=g)[:k] for g in gens])  # (B, k)
            x1 = torch.stack([torch.randn((k, *x0_all.shape[1:]), generator=g) for g in gens])
            rr = rows[:, None].expand_as(levels).flatten()
            sigma = sigmas[levels.flatten()].to(x0_all.device)
            x0, x1 = x0_all[rr], x1.flatten(0, 1).to(x0_all.device)
            x_t = flow_noised(x0, sigma, x1)
            cond = ctx.cond_table[ro.prompt_ids[rr]]
            with torch.no_grad(), self.sampling_weights(), ctx.autocast():
                v_old = ctx.policy.predict(x_t, sigma, cond).float()
            with ctx.autocast():
                v_theta = ctx.policy.predict(x_t, sigma, cond).float()
            w = r[rr].to(v_theta.device)
            if o.loss == "x0-adaptive":
                terms = nft_x0_loss(v_theta, v_old, x_t, x0, sigma, w, o.beta, t.adv_clip_max)
            else:
                terms = nft_velocity_loss(v_theta, v_old, x1 - x0, w, o.beta)
            if t.kl_coef > 0:  # the reference's small anchor to the base model
                with torch.no_grad(), ctx.reference(), ctx.autocast():
                    v_ref = ctx.policy.predict(x_t, sigma, cond).float()
                anchor = ((v_theta - v_ref) ** 2).flatten(1).mean(1)
                terms = terms + t.kl_coef * anchor
                stats["train/kl_ref"].append(float(anchor.detach().mean()))
            acc.backward(terms.sum(), len(rows) * k)
            stats["train/loss"].append(float(terms.detach().mean()))
            acc.end_minibatch(mb)
        d = old_policy_decay(o.old_decay, ctx.optimizer_steps())
        ema_update_(self.old, ctx.trainable_state(), d)
        stats["train/nft_old_decay"].append(d)
        stats["train/optimality_weight_mean"].append(float(r.mean()))
        return mean_stats(stats)

    def state_dict(self):
        return {f"old.{k}": v for k, v in self.old.items()}, self.advantages.state_dict()

    def load_state_dict(self, tensors, values) -> None:
        device = next(iter(self.old.values())).device
        self.old = {k.removeprefix("old."): v.to(device) for k, v in tensors.items()}
        self.advantages.load_state_dict(values)
