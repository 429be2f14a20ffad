"""ReinFlow (Zhang et al. 2025), as ReinFlow/ReinFlow runs it on Gym (model/flow/ft_ppo/ppoflow.py,
model/flow/mlp_flow.py, agent/finetune/reinflow/train_ppo_flow_agent.py): a rectified-flow policy
of K Euler steps, all fine-tuned, with a learned exploration noise, and one PPO ratio for the whole
denoising chain.

    a^0 ~ N(0, I),  a^{k+1} ~ N(mu_k, sigma_k^2),  mu_k = clamp(a^k + (s_{k+1} - s_k) v_theta(a^k, s_k, o), +-1)
    sigma_k = NoiseNet(embed(s_k) detached, o) in [sigma_min, sigma_max];  a^{k+1} within mu_k +- 3 sigma_k,
    the last clamped to [-1, 1]
    log pi  = [log N(a^0; 0, I) + sum_k sum_{Ta,Da} log N(a^{k+1}; mu_k, sigma_k^2)] / ((K+1) Ta Da),
              clamped to [-1, 1] (logprob_min, logprob_max)
    entropy = [H(N(0, I)) + sum_k H(N(mu_k, sigma_k^2))] / ((K+1) Ta Da),  bonus ent_coef x entropy

s_k = 1 - k/K is ddrl's flow time (1 = noise); the reference's t = k/K. Sampling and scoring use
this one grid (the reference samples on linspace(0, 1, K) and scores on linspace(0, 1 - 1/K, K),
ReinFlow issue #5). sigma_max is held for 35% of the iterations, then cosine-annealed to
0.3 sigma_min + 0.7 sigma_max (its `learn_decay` schedule).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...losses.ppo import clipped_surrogate, normalize_advantages
from ...options import option
from ...sampling import flow_noisy_step, gaussian_log_prob
from ..nets import NoiseNet
from ..policies import NOISE_CLIP, ChunkPolicy
from .base import ControlAlgorithm

LOG_2PI_E = math.log(2 * math.pi * math.e)


@dataclass(frozen=True)
class ReinFlowOptions:
    section: ClassVar[str] = "reinflow"
    clip_range: float = option(0.01, "(0, 1)", "PPO clip")
    sigma_min: float = option(0.10, "(0, inf)", "lower bound of the exploration std")
    sigma_max: float = option(0.24, "(0, inf)", "upper bound of the exploration std at the start")
    hold: float = option(0.35, "[0, 1]", "fraction of iterations sigma_max is held before annealing")
    decay_to: float = option(0.7, "[0, 1]", "sigma_max anneals to sigma_min (1 - decay_to) + sigma_max decay_to")
    ent_coef: float = option(0.03, "[0, inf)", "entropy bonus, same normalisation as the log-prob")
    log_prob_min: float = option(-1.0, "(-inf, inf)", "clamp of the normalised chain log-prob, below")
    log_prob_max: float = option(1.0, "(-inf, inf)", "clamp of the normalised chain log-prob, above")
    noise_hidden: int = option(64, "[1, inf)", "width of the noise network's two Tanh layers")
    initial_term: bool = option(True, None, "count log N(a^0; 0, I) in the chain's log-prob (account_for_initial_stochasticity)")


class ReinFlow(ControlAlgorithm):
    options_class = ReinFlowOptions

    def __init__(self, policy: ChunkPolicy, options: ReinFlowOptions):
        if policy.kind != "flow":
            raise ValueError(f"ReinFlow fine-tunes a flow policy, not {policy.kind!r}")
        if not options.sigma_min <= options.sigma_max:
            raise ValueError(f"reinflow.sigma_min {options.sigma_min:g} exceeds reinflow.sigma_max {options.sigma_max:g}")
        self.policy, self.o = policy, options
        self.calls_per_chunk = 2 * policy.steps
        self.velocity = copy.deepcopy(policy.net).requires_grad_(True)
        shape = (policy.horizon, policy.action_dim)
        self.noise_net = NoiseNet(self.velocity.time_dim + policy.obs_dim, shape, options.noise_hidden,
                                  options.sigma_min, options.sigma_max)
        self.actor = torch.nn.ModuleDict({"velocity": self.velocity, "noise": self.noise_net})
        self.dims = policy.horizon * policy.action_dim

    def start_iteration(self, iteration: int, total: int) -> None:
        o, hold = self.o, self.o.hold * total
        low = o.sigma_min * (1 - o.decay_to) + o.sigma_max * o.decay_to
        if iteration < hold or total <= hold:
            value = o.sigma_max
        else:
            progress = min(1.0, (iteration - hold) / (total - hold))
            value = low + (o.sigma_max - low) * 0.5 * (1 + math.cos(math.pi * progress))
        self.noise_net.sigma_max.fill_(value)

    def _steps(self, chain_or_x: Tensor, obs: Tensor, generator: torch.Generator | None):
        """Walk the chain: sample it (generator given, chain_or_x = a^0) or score a stored one."""
        p, k_steps = self.policy, self.policy.steps
        sampling = generator is not None
        x = chain_or_x if sampling else chain_or_x[:, 0]
        chain, log_prob, entropy = [x], 0.0, 0.0
        for k in range(k_steps):
            s = torch.full((len(obs),), float(p.sigmas[k]))
            v = self.velocity(x, s, obs)
            std = self.noise_net(torch.cat([self.velocity.embed_time(s).detach(), obs], -1))
            if sampling:
                z = p.noise(len(obs), generator).clamp(-NOISE_CLIP, NOISE_CLIP)
                step = flow_noisy_step(x, v, p.sigmas[k], p.sigmas[k + 1], std=std, mean_clip=1.0, noise=z)
                x_next = step.x_prev.clamp(-1, 1) if k == k_steps - 1 else step.x_prev
            else:
                x_next = chain_or_x[:, k + 1]
                step = flow_noisy_step(x, v, p.sigmas[k], p.sigmas[k + 1], std=std, mean_clip=1.0, x_prev=x_next)
            log_prob = log_prob + gaussian_log_prob(x_next, step.mean, step.std).sum((1, 2))
            entropy = entropy + (0.5 * LOG_2PI_E + step.std.log()).sum((1, 2))
            chain.append(x_next)
            x = x_next
        terms = k_steps
        if self.o.initial_term:
            log_prob = log_prob + gaussian_log_prob(chain[0], torch.zeros(()), torch.ones(())).sum((1, 2))
            entropy = entropy + 0.5 * LOG_2PI_E * self.dims
            terms += 1
        norm = terms * self.dims
        return torch.stack(chain, 1), log_prob / norm, entropy / norm

    @torch.no_grad()
    def act(self, obs, generator):
        chain, log_prob, _ = self._steps(self.policy.noise(len(obs), generator), obs, generator)
        return chain[:, -1], {"chain": chain, "old_log_prob": log_prob}

    def policy_loss(self, obs, records, advantages, rows, generator):
        _, new, entropy = self._steps(records["chain"], obs, None)
        lo, hi = self.o.log_prob_min, self.o.log_prob_max
        log_ratio = new.clamp(lo, hi) - records["old_log_prob"].clamp(lo, hi)
        loss, stats = clipped_surrogate(log_ratio, normalize_advantages(advantages), self.o.clip_range)
        stats["train/entropy"] = float(entropy.detach().mean())
        stats["train/noise_std"] = float(self.noise_net.sigma_max)
        return loss - self.o.ent_coef * entropy.mean(), log_ratio, stats

    def evaluation_actor(self):
        return lambda obs, gen: self.policy.evaluate_actions(obs, gen, net=self.velocity)

    def describe(self) -> str:
        return (f"ReinFlow: flow {self.policy.steps} Euler steps, all fine-tuned, noise std in "
                f"[{self.o.sigma_min:g}, {self.o.sigma_max:g}], clip {self.o.clip_range:g}")
