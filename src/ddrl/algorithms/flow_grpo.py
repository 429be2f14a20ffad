"""Flow-GRPO (Liu et al. 2025): DDPO's PPO-clip update over a flow sampler's stochastic steps
(Flow-SDE or CPS), with group advantages and the reference code's choices
(yifan123/flow_grpo, scripts/train_sd3.py):

- which steps train: the first floor(S * timestep_fraction) stochastic steps, in order, the same
  for every sample (with the reference's 0.99 and no noise window: all but the last step);
- zero-advantage samples (groups whose rewards are all equal) are dropped, KL term included, and
  the rest re-batched, so the gradient is a mean over the kept samples;
- the KL to the reference divides by the SDE's s^2 without dt (`train.kl_form code`;
  losses/flow_grpo.py), with the paper's exact per-step KL one option away.
"""

from __future__ import annotations

from torch import Tensor

from ..config import ConfigError
from ..losses.ddpo import ppo_clip_loss
from ..losses.flow_grpo import flow_grpo_kl
from .advantage_tracker import AdvantageTracker
from .base import Context, EpochRewards, RolloutAlgorithm, Rollouts
from .policy_gradient import rescore_update, single_pass_applies, single_pass_update


class FlowGRPO(RolloutAlgorithm):
    prediction = "velocity"
    name = "flow-grpo"

    @classmethod
    def validate(cls, cfg) -> None:
        s = cfg.sample
        if s.sampler not in ("flow-sde", "flow-cps") or s.noise_level == 0:
            raise ConfigError(f"{cls.name} needs a stochastic flow sampler (sample.sampler flow-sde or flow-cps "
                              "with sample.noise_level > 0) for its log-probs; nft can use flow-ode")
        if cfg.stochastic_steps < 1:
            raise ConfigError("the noise window holds only CPS's last step, which adds no noise: no step to train")

    @classmethod
    def filters(cls, cfg) -> bool:
        return cfg.train.filter_zero_std

    @classmethod
    def keeps_sampling_graph(cls, cfg) -> bool:
        return single_pass_applies(cfg) and not cls.filters(cfg)

    def __init__(self, options, ctx: Context):
        super().__init__(options, ctx)
        self.advantages = AdvantageTracker(ctx.cfg.train)
        stochastic = ctx.sampler.stochastic.nonzero().flatten()
        self.trained = stochastic[:self.trained_steps(ctx.cfg)]  # in order, every sample alike

    def signal(self, batch: EpochRewards, metrics: dict) -> Tensor:
        return self.advantages(batch, metrics)

    def steps_of(self, g) -> Tensor:
        """The steps a sample trains (its generator unused: every sample alike)."""
        return self.trained

    def loss(self, log_prob: Tensor, old_log_prob: Tensor, adv: Tensor):
        return ppo_clip_loss(log_prob, old_log_prob, adv, self.ctx.cfg.train.clip_range)

    def kl(self, step, mean_ref: Tensor, s: Tensor) -> Tensor:
        dt = self.ctx.sampler.step_size(s).view(-1, *([1] * (mean_ref.ndim - 1))).to(mean_ref.device)
        # CPS's std has no sqrt(dt) factor: both forms are its exact KL
        form = self.ctx.cfg.train.kl_form if self.ctx.sampler.kind == "sde" else "paper"
        return flow_grpo_kl(step.mean, mean_ref, step.std, dt, form)

    def update(self, ro: Rollouts, adv: Tensor, epoch: int) -> dict[str, float]:
        if self.keeps_sampling_graph(self.ctx.cfg):
            return single_pass_update(self.ctx, ro, adv, self.loss)
        keep = adv != 0 if self.filters(self.ctx.cfg) else None
        out = rescore_update(self.ctx, ro, adv, epoch, steps_of=self.steps_of, loss=self.loss, kl=self.kl, keep=keep)
        if keep is not None:
            out["train/kept_fraction"] = float(keep.float().mean())
        return out

    def state_dict(self):
        return {}, self.advantages.state_dict()

    def load_state_dict(self, tensors, values) -> None:
        self.advantages.load_state_dict(values)
