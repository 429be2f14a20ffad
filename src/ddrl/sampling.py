"""Sampler steps as pure functions, and the schedules they walk.

DDIM (Song et al. 2021, eq. 12) with stochasticity eta, as DDPO uses it (Black et al. 2023):

    x0_hat  = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
    std     = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)
    mean    = sqrt(alpha_bar_prev) * x0_hat + sqrt(1 - alpha_bar_prev - std^2) * eps
    x_prev  = mean + std * z

Euler step of the rectified-flow ODE dx/dsigma = v (Liu et al. 2023; SD3):

    x_next = x_t + (sigma_next - sigma) * v

Notation: x_t the current latent, eps the predicted noise, v the predicted velocity, alpha_bar the
DDPM cumulative product, sigma the flow time (1 = noise, 0 = data).

A step samples when given `noise` and scores a stored transition when given `x_prev`; never
both. The math runs in fp32 whatever precision the network used. Randomness always comes from
the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Step:
    x_prev: Tensor  # (B, C, H, W) the next, less noisy latent
    log_prob: Tensor  # (B,) Gaussian log-density of x_prev averaged over C*H*W; 0 if deterministic
    mean: Tensor  # (B, C, H, W)
    std: Tensor  # broadcastable to x_prev; 0 for a deterministic step


def gaussian_log_prob_per_dim(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2) averaged over all non-batch dims, the reduction DDPO's clip
    range assumes. Needs std > 0."""
    std = torch.as_tensor(std, dtype=x.dtype).expand_as(x)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: Tensor | float, alpha_bar_prev: Tensor | float,
              *, eta: float, noise: Tensor | None = None, x_prev: Tensor | None = None) -> Step:
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x_t, eps = x_t.float(), eps.float()
    ab_t = torch.as_tensor(alpha_bar_t, dtype=torch.float32)
    ab_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float32)
    x0_hat = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    std = eta * ((1 - ab_prev) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_prev).sqrt()
    mean = ab_prev.sqrt() * x0_hat + (1 - ab_prev - std**2).clamp(min=0).sqrt() * eps
    if eta == 0:  # deterministic DDIM: no density, so nothing to score
        if x_prev is not None:
            raise ValueError("ddim_step with eta 0 is deterministic; there is no log-prob to score")
        return Step(mean, torch.zeros(x_t.shape[0]), mean, torch.zeros(()))
    if (noise is None) == (x_prev is None):
        raise ValueError("ddim_step needs exactly one of `noise` (to sample) or `x_prev` (to score)")
    if x_prev is None:
        x_prev = mean + std * noise.float()
    return Step(x_prev.float(), gaussian_log_prob_per_dim(x_prev.float(), mean, std), mean, std)


def flow_ode_step(x_t: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    return x_t.float() + (sigma_next - sigma) * velocity.float()


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> Tensor:
    """Stable Diffusion's "leading" DDIM spacing, highest first (as DDIMScheduler with
    steps_offset=1): for 50 steps, 981, 961, ..., 1."""
    if num_steps < 1 or num_steps > num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {num_steps}")
    ratio = num_train_timesteps // num_steps
    return (torch.arange(num_steps) * ratio).flip(0) + steps_offset


def flow_sigmas(num_steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> Tensor:
    """The (num_steps + 1,) sigmas of FlowMatchEulerDiscreteScheduler, from 1 down to 0.

    SD3's shift maps sigma to s*sigma / (1 + (s-1)*sigma). As in diffusers, the steps are evenly
    spaced between 1 and the smallest *shifted* training sigma, and then shifted once more."""
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")

    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)

    sigma_min = shifted(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64))
    sigmas = shifted(torch.linspace(1.0, float(sigma_min), num_steps, dtype=torch.float64))
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()
