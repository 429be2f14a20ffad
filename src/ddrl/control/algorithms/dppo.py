"""DPPO (Ren et al. 2024), as irom-princeton/dppo v0.8 (model/diffusion/diffusion_ppo.py,
diffusion_vpg.py) runs it on Gym: a DDPM policy of K steps whose last K' steps are fine-tuned
(a trainable copy; the earlier steps keep the frozen base network), each denoising step its own
PPO term.

    sampling:  x_{t-1} ~ N(mu_theta(x_t, t, o), max(sigma_t, 0.1)^2), noise clamped +-3, x0_hat clamped +-1
    log-prob:  lp_i = mean_{Ta, Da} clamp(log N(x_{t-1}; mu, max(sigma_t, 0.1)^2), -5, 2)   (per element)
    advantage: A_i = normalize(A) * gamma_d^(K'-1-i),  i = 0..K'-1 the fine-tuned step (i = K'-1 the last)
    clip:      eps_i = base + (coef - base) (e^{rate i/(K'-1)} - 1) / (e^rate - 1)   (constant if base = coef)

Notation: i indexes the stored chain x^0..x^{K'} (x^0 the input of the first fine-tuned step),
step i moves x^i -> x^{i+1} at DDPM time t = K'-1-i.
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
from ...sampling import ddpm_step, gaussian_log_prob
from ..policies import NOISE_CLIP, ChunkPolicy
from .base import ControlAlgorithm

LOG_PROB_CLAMP = (-5.0, 2.0)


@dataclass(frozen=True)
class DPPOOptions:
    section: ClassVar[str] = "dppo"
    ft_steps: int = option(10, "[1, inf)", "fine-tuned denoising steps K', the last ones (DPPO Gym: 10 of 20)")
    gamma_denoising: float = option(0.99, "(0, 1]", "denoising discount of the advantage per step before the last")
    clip_range: float = option(0.01, "(0, 1)", "PPO clip at the last denoising step (clip_ploss_coef)")
    clip_range_base: float = option(0.01, "(0, 1)", "PPO clip at the first fine-tuned step (Gym: = clip_range)")
    clip_range_rate: float = option(3.0, "(0, inf)", "growth rate of the clip over denoising steps")
    min_std: float = option(0.1, "[0, inf)", "std floor of sampling and log-probs (min_*_denoising_std)")
    x0_clip: float = option(1.0, "(0, inf)", "clamp of the predicted clean action (denoised_clip_value)")


class _SplitDenoiser(torch.nn.Module):
    """The frozen base network at DDPM times t >= K', the fine-tuned copy below."""

    def __init__(self, base, ft, ft_steps: int):
        super().__init__()
        self.base, self.ft, self.ft_steps = base, ft, ft_steps

    def forward(self, x: Tensor, t: Tensor, obs: Tensor) -> Tensor:
        return self.ft(x, t, obs) if float(t[0]) < self.ft_steps else self.base(x, t, obs)


class DPPO(ControlAlgorithm):
    options_class = DPPOOptions

    def __init__(self, policy: ChunkPolicy, options: DPPOOptions):
        if policy.kind != "ddpm":
            raise ValueError(f"DPPO fine-tunes a ddpm policy; {policy.config['env']} policy is {policy.kind!r}")
        if options.ft_steps > policy.steps:
            raise ValueError(f"dppo.ft_steps {options.ft_steps} exceeds the policy's {policy.steps} denoising steps")
        self.policy, self.o = policy, options
        self.calls_per_chunk = policy.steps
        self.base = policy.net.requires_grad_(False)
        self.actor = copy.deepcopy(policy.net).requires_grad_(True)
        self.net = _SplitDenoiser(self.base, self.actor, options.ft_steps)

    def rows(self, n: int) -> int:
        return n * self.o.ft_steps

    def sample_of(self, rows: Tensor) -> Tensor:
        return rows // self.o.ft_steps

    def clip_ranges(self, i: Tensor) -> Tensor:
        k, base, coef, rate = self.o.ft_steps, self.o.clip_range_base, self.o.clip_range, self.o.clip_range_rate
        if k == 1:  # the reference divides 0 by 0 here; one fine-tuned step takes the clip itself
            return torch.full(i.shape, coef)
        return base + (coef - base) * (torch.exp(rate * i.double() / (k - 1)) - 1) / (math.exp(rate) - 1)

    def _step(self, x: Tensor, t: int, obs: Tensor, **kw):
        p = self.policy
        eps = self.net(x, torch.full((len(x),), float(t)), obs)
        return ddpm_step(x, eps, p.alpha_bar[t], p.alpha_bar_prev[t], x0_clip=self.o.x0_clip, std_min=self.o.min_std, **kw)

    @torch.no_grad()
    def act(self, obs: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.policy.noise(len(obs), generator)
        chain, old = [], []
        for t in reversed(range(self.policy.steps)):
            if t == self.o.ft_steps - 1:
                chain.append(x)
            z = self.policy.noise(len(obs), generator).clamp(-NOISE_CLIP, NOISE_CLIP)
            step = self._step(x, t, obs, noise=z)
            if t < self.o.ft_steps:
                old.append(gaussian_log_prob(step.x_prev, step.mean, step.std))
                chain.append(step.x_prev)
            x = step.x_prev
        return x, {"chain": torch.stack(chain, 1), "old_log_prob": torch.stack(old, 1)}  # (B, K'+1, Ta, Da), (B, K', Ta, Da)

    def policy_loss(self, obs, records, advantages, rows, generator):
        i = rows % self.o.ft_steps
        n = torch.arange(len(rows))
        prev, nxt = records["chain"][n, i], records["chain"][n, i + 1]
        t = self.o.ft_steps - 1 - i
        eps = self.actor(prev, t.float(), obs)
        p = self.policy
        step = ddpm_step(prev, eps, p.alpha_bar[t].view(-1, 1, 1), p.alpha_bar_prev[t].view(-1, 1, 1),
                         x0_clip=self.o.x0_clip, std_min=self.o.min_std, x_prev=nxt)
        new = gaussian_log_prob(nxt, step.mean, step.std).clamp(*LOG_PROB_CLAMP).mean((1, 2))
        old = records["old_log_prob"][n, i].clamp(*LOG_PROB_CLAMP).mean((1, 2))
        adv = normalize_advantages(advantages) * self.o.gamma_denoising ** (self.o.ft_steps - 1 - i).float()
        log_ratio = new - old
        loss, stats = clipped_surrogate(log_ratio, adv, self.clip_ranges(i).float())
        return loss, log_ratio, stats

    def evaluation_actor(self):
        return lambda obs, gen: self.policy.evaluate_actions(obs, gen, net=self.net)

    def describe(self) -> str:
        return (f"DPPO: DDPM {self.policy.steps} steps, the last {self.o.ft_steps} fine-tuned, clip {self.o.clip_range:g}, "
                f"std floor {self.o.min_std:g}")
