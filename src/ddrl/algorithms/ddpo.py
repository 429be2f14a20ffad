"""DDPO (Black et al. 2023): policy gradients over the denoising MDP of a DDIM sampler.

    DDPO-SF (REINFORCE):  L = -A log p_theta(x_{t-1} | x_t, c)
    DDPO-IS (PPO clip):   L = max(-A rho, -A clip(rho, 1 - eps, 1 + eps)),  rho = p_theta / p_old

Advantages per prompt (stat tracking), or over the batch, clipped to +-adv_clip_max. Which steps
train: as ddpo-pytorch (scripts/train.py), each sample's steps are shuffled independently and
the first floor(T * timestep_fraction) of the permutation are trained. The KL to the reference
(an extension; ddpo-pytorch has none) is the exact per-step Gaussian KL.
"""

from __future__ import annotations

from torch import Tensor
import torch

from ..config import ConfigError
from ..losses.ddpo import gaussian_kl_same_std, ppo_clip_loss, score_function_loss
from .advantage_tracker import AdvantageTracker
from .base import Context, EpochRewards, RolloutAlgorithm, Rollouts
from .policy_gradient import rescore_update, single_pass_applies, single_pass_update


class DDPO(RolloutAlgorithm):
    prediction = "epsilon"
    score_function = False  # DDPO-IS; DDPO-SF sets it

    @classmethod
    def validate(cls, cfg) -> None:
        name = "ddpo-sf" if cls.score_function else "ddpo-is"
        if cfg.sample.sampler != "ddim":
            raise ConfigError(f"train.algorithm {name} trains DDIM diffusion models: set sample.sampler ddim "
                              "(flow-matching models train with flow-grpo, pref-grpo or nft)")
        if cfg.sample.eta == 0:
            raise ConfigError(f"sample.eta must be > 0 for {name}: its log-probs need a stochastic sampler")
        if cls.score_function and cfg.optimizer_steps_per_epoch != 1:
            # REINFORCE's gradient holds only at the sampling policy: after one step the samples are
            # off-policy and nothing corrects for it (DDPO-IS's importance ratio does)
            need = cfg.minibatches_per_epoch * cfg.train.num_inner_epochs
            raise ConfigError(
                f"ddpo-sf takes one optimizer step per epoch of fresh samples (the DDPO paper), but this "
                f"config takes {cfg.optimizer_steps_per_epoch}: set train.gradient_accumulation_steps {need} "
                f"(with train.num_inner_epochs 1), or use ddpo-is for several steps per epoch")

    @classmethod
    def keeps_sampling_graph(cls, cfg) -> bool:
        return single_pass_applies(cfg)

    def __init__(self, options, ctx: Context):
        super().__init__(options, ctx)
        self.advantages = AdvantageTracker(ctx.cfg.train)
        self.stochastic = ctx.sampler.stochastic.nonzero().flatten()  # the steps that have log-probs
        self.k = self.trained_steps(ctx.cfg)

    def loss(self, log_prob: Tensor, old_log_prob: Tensor, adv: Tensor):
        terms, stats = ppo_clip_loss(log_prob, old_log_prob, adv, self.ctx.cfg.train.clip_range)
        return (score_function_loss(log_prob, adv) if self.score_function else terms), stats

    def signal(self, batch: EpochRewards, metrics: dict) -> Tensor:
        return self.advantages(batch, metrics)

    def steps_of(self, g: torch.Generator) -> Tensor:
        return self.stochastic[torch.randperm(len(self.stochastic), generator=g)][:self.k]

    def update(self, ro: Rollouts, adv: Tensor, epoch: int) -> dict[str, float]:
        if self.keeps_sampling_graph(self.ctx.cfg):
            return single_pass_update(self.ctx, ro, adv, self.loss)
        return rescore_update(self.ctx, ro, adv, epoch, steps_of=self.steps_of, loss=self.loss,
                              kl=lambda step, mean_ref, s: gaussian_kl_same_std(step.mean, mean_ref, step.std))

    def state_dict(self):
        return {}, self.advantages.state_dict()

    def load_state_dict(self, tensors, values) -> None:
        self.advantages.load_state_dict(values)


class DDPOSF(DDPO):
    score_function = True
