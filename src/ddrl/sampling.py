"""Sampler steps as pure functions, and the schedules they walk.

DDIM (Song et al. 2021, eq. 12) with stochasticity eta, as DDPO uses it (Black et al. 2023):

    x0_hat  = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
    std     = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)
    mean    = sqrt(alpha_bar_prev) * x0_hat + sqrt(1 - alpha_bar_prev - std^2) * eps
    x_prev  = mean + std * z

Euler step of the rectified-flow ODE dx/dsigma = v (Liu et al. 2023; SD3):

    x_next = x_t + (sigma_next - sigma) * v

Flow-SDE (Flow-GRPO, Liu et al. 2025): the reverse-time SDE with the ODE's marginals, by
Euler-Maruyama from sigma to sigma' = sigma - dt, with s = noise_level * sqrt(sigma / (1 - sigma)):

    x_next = x_t - [v + s^2 / (2 sigma) * (x_t + (1 - sigma) v)] dt + s sqrt(dt) z

(at sigma = 1 the denominator's sigma becomes the schedule's second sigma, as in flow_grpo).

Coefficients-preserving sampling (CPS, Wang & Yu 2025), eta = noise_level in [0, 1]:

    x0_hat = x_t - sigma v,  x1_hat = x_t + (1 - sigma) v
    x_next = (1 - sigma') x0_hat + sigma' cos(eta pi/2) x1_hat + sigma' sin(eta pi/2) z

DPM-Solver++(2M) on the flow (DiffusionNFT's rollout solver): a deterministic multistep step
from the current and previous data predictions x0 = x_t - sigma v (`flow_dpm2_step`).

v- and x0-prediction models convert to eps first (`eps_from_prediction`), so one DDIM step
serves all three parameterisations.

Notation: x_t the current latent, eps the predicted noise, v the predicted velocity, alpha_bar the
DDPM cumulative product, sigma the flow time (1 = noise, 0 = data).

A step samples when given `noise` and scores a stored transition when given `x_prev`; never
both. The math runs in fp32 whatever precision the network used. Randomness always comes from
the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Step:
    x_prev: Tensor  # (B, C, H, W) the next, less noisy latent
    log_prob: Tensor  # (B,) Gaussian log-density of x_prev averaged over C*H*W; 0 if deterministic
    mean: Tensor  # (B, C, H, W)
    std: Tensor  # broadcastable to x_prev; 0 for a deterministic step


def _fp32(x: Tensor) -> Tensor:
    """At least fp32: half precision is promoted, float64 (gradient checks) is kept."""
    return x if x.dtype == torch.float64 else x.float()


def gaussian_log_prob_per_dim(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2) averaged over all non-batch dims, the reduction DDPO's clip
    range assumes. Needs std > 0."""
    std = torch.as_tensor(std, dtype=x.dtype).expand_as(x)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def eps_from_prediction(pred: Tensor, x_t: Tensor, alpha_bar_t: Tensor | float,
                        prediction_type: str) -> Tensor:
    """The noise eps implied by a network output, with x_t = sqrt(ab)*x0 + sqrt(1-ab)*eps.

    epsilon: eps itself. v_prediction (Salimans & Ho 2022): v = sqrt(ab)*eps - sqrt(1-ab)*x0,
    so eps = sqrt(ab)*v + sqrt(1-ab)*x_t. sample (x0): eps = (x_t - sqrt(ab)*x0) / sqrt(1-ab)."""
    ab = torch.as_tensor(alpha_bar_t, dtype=torch.float32)
    pred, x_t = pred.float(), x_t.float()
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        return ab.sqrt() * pred + (1 - ab).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - ab.sqrt() * pred) / (1 - ab).sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample")


def _per_sample(level: Tensor | float, x0: Tensor) -> Tensor | float:
    """A (B,) noise level viewed to broadcast over x0's (B, ...) dims; a scalar as it is."""
    if isinstance(level, Tensor) and level.ndim == 1:
        return level.view(-1, *([1] * (x0.ndim - 1)))
    return level


def diffusion_noised(x0: Tensor, alpha_bar: Tensor | float, noise: Tensor) -> Tensor:
    """The forward process of a diffusion model, q(x_t | x_0): x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps.
    `alpha_bar` is a scalar or one level per sample, (B,)."""
    ab = _per_sample(alpha_bar, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def flow_noised(x0: Tensor, sigma: Tensor | float, noise: Tensor) -> Tensor:
    """The forward process of a rectified flow: x_t = (1 - sigma) x_0 + sigma x_1, x_1 the noise.
    `sigma` is a scalar or one level per sample, (B,)."""
    s = _per_sample(sigma, x0)
    return (1 - s) * x0 + s * noise


def ddim_x0(x_t: Tensor, eps: Tensor, alpha_bar_t: Tensor | float) -> Tensor:
    """The data prediction x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) (diffusers' pred_original_sample)."""
    ab_t = torch.as_tensor(alpha_bar_t, dtype=torch.float32)
    return (_fp32(x_t) - (1 - ab_t).sqrt() * _fp32(eps)) / ab_t.sqrt()


def ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: Tensor | float, alpha_bar_prev: Tensor | float,
              *, eta: float, noise: Tensor | None = None, x_prev: Tensor | None = None) -> Step:
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x_t, eps = _fp32(x_t), _fp32(eps)
    ab_t = torch.as_tensor(alpha_bar_t, dtype=torch.float32)
    ab_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float32)
    x0_hat = ddim_x0(x_t, eps, ab_t)
    std = eta * ((1 - ab_prev) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_prev).sqrt()
    mean = ab_prev.sqrt() * x0_hat + (1 - ab_prev - std**2).clamp(min=0).sqrt() * eps
    if eta == 0:  # deterministic DDIM: no density, so nothing to score
        if x_prev is not None:
            raise ValueError("ddim_step with eta 0 is deterministic; there is no log-prob to score")
        return Step(mean, torch.zeros(x_t.shape[0]), mean, torch.zeros(()))
    if (noise is None) == (x_prev is None):
        raise ValueError("ddim_step needs exactly one of `noise` (to sample) or `x_prev` (to score)")
    if x_prev is None:
        x_prev = mean + std * _fp32(noise)
    # The density is evaluated at the detached sample: log p_theta(x_prev) as a function of theta,
    # the score-function gradient. (Through a reparameterised x_prev, (x_prev - mean) = std*z
    # would not depend on theta at all.) x_prev itself keeps its graph for reward backprop.
    return Step(_fp32(x_prev), gaussian_log_prob_per_dim(_fp32(x_prev.detach()), mean, std), mean, std)


def flow_ode_step(x_t: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    return _fp32(x_t) + (sigma_next - sigma) * _fp32(velocity)


def flow_dpm2_step(x_t: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, *,
                   sigma_prev: Tensor | float | None = None, x0_prev: Tensor | None = None) -> Tensor:
    """One step of multistep DPM-Solver++(2M) on a rectified flow (alpha = 1 - sigma), in data
    prediction, the rollout solver of DiffusionNFT's reference (solver.py, solver "dpm2").

    With x0 = x_t - sigma v, lambda(sigma) = log((1 - sigma) / sigma), h = lambda(sigma_next) -
    lambda(sigma), r = (lambda(sigma) - lambda(sigma_prev)) / h and D1 = (x0 - x0_prev) / r, where
    x0_prev is the previous step's data prediction (made at sigma_prev):

        x_next = (sigma_next / sigma) x_t - (1 - sigma_next) (e^-h - 1) (x0 + D1 / 2)

    The first step (no previous output) and the step to sigma_next = 0 are Euler steps, as in
    the reference (its first-order DDIM update with eta 0 is the Euler step)."""
    x_t, v = x_t.float(), velocity.float()
    sigma, sigma_next = torch.as_tensor(sigma, dtype=torch.float64), torch.as_tensor(sigma_next, dtype=torch.float64)
    if x0_prev is None or bool((sigma_next == 0).any()):
        return flow_ode_step(x_t, v, sigma.float(), sigma_next.float())
    sigma_prev = torch.as_tensor(sigma_prev, dtype=torch.float64)

    def lam(s):
        return torch.log(1 - s) - torch.log(s)

    x0 = x_t - sigma.float() * v
    h = lam(sigma_next) - lam(sigma)
    r = (lam(sigma) - lam(sigma_prev)) / h
    d1 = (x0 - x0_prev.float()) / r.float()
    return ((sigma_next / sigma).float() * x_t
            - ((1 - sigma_next) * (torch.exp(-h) - 1)).float() * (x0 + 0.5 * d1))


def _sample_or_score(name: str, mean: Tensor, std: Tensor, noise: Tensor | None, x_prev: Tensor | None) -> Tensor:
    if (noise is None) == (x_prev is None):
        raise ValueError(f"{name} needs exactly one of `noise` (to sample) or `x_prev` (to score)")
    return mean + std * _fp32(noise) if x_prev is None else _fp32(x_prev)


def flow_sde_step(x_t: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, *,
                  noise_level: float, sigma_max: Tensor | float | None = None, noise: Tensor | None = None,
                  x_prev: Tensor | None = None) -> Step:
    """One Flow-SDE step. At sigma = 1, sqrt(sigma / (1 - sigma)) is infinite; flow_grpo
    (sd3_sde_with_logprob.py) puts `sigma_max`, the schedule's second sigma, in the denominator
    only: s = noise_level * sqrt(1 / (1 - sigma_max)) there. noise_level 0 is the Euler ODE step,
    with a zero log-prob."""
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    x_t, v = _fp32(x_t), _fp32(velocity)
    sigma, sigma_next = torch.as_tensor(sigma, dtype=torch.float32), torch.as_tensor(sigma_next, dtype=torch.float32)
    if noise_level == 0:
        if x_prev is not None:
            raise ValueError("flow_sde_step with noise_level 0 is the ODE; there is no log-prob to score")
        x = flow_ode_step(x_t, v, sigma, sigma_next)
        return Step(x, torch.zeros(x_t.shape[0]), x, torch.zeros(()))
    at_one = sigma >= 1
    if bool(at_one.any()) and sigma_max is None:
        raise ValueError("flow_sde_step at sigma = 1 needs sigma_max (the schedule's second sigma)")
    denominator = 1 - torch.where(at_one, torch.as_tensor(sigma_max if sigma_max is not None else 0.0), sigma)
    s = noise_level * (sigma / denominator).sqrt()
    dt = sigma - sigma_next  # > 0
    mean = x_t - (v + s**2 / (2 * sigma) * (x_t + (1 - sigma) * v)) * dt
    std = s * dt.sqrt()
    x = _sample_or_score("flow_sde_step", mean, std, noise, x_prev)
    return Step(x, gaussian_log_prob_per_dim(x.detach(), mean, std), mean, std)


def flow_cps_step(x_t: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, *,
                  noise_level: float, noise: Tensor | None = None, x_prev: Tensor | None = None) -> Step:
    """One CPS step. Its log-prob is Flow-GRPO's: -mean_D (x_next - mean)^2, the Gaussian's
    theta-dependent part without the 1/(2 std^2) scale, which stays finite at the last step
    (std = sigma' sin(eta pi/2) = 0 there). eta 0 is the Euler ODE step."""
    if not 0 <= noise_level <= 1:
        raise ValueError(f"CPS needs noise_level (eta) in [0, 1], got {noise_level}")
    x_t, v = _fp32(x_t), _fp32(velocity)
    sigma, sigma_next = torch.as_tensor(sigma, dtype=torch.float32), torch.as_tensor(sigma_next, dtype=torch.float32)
    x0_hat, x1_hat = x_t - sigma * v, x_t + (1 - sigma) * v
    angle = noise_level * math.pi / 2
    mean = (1 - sigma_next) * x0_hat + sigma_next * math.cos(angle) * x1_hat
    std = sigma_next * math.sin(angle)
    if noise_level == 0:
        if x_prev is not None:
            raise ValueError("flow_cps_step with noise_level 0 is the ODE; there is no log-prob to score")
        return Step(mean, torch.zeros(x_t.shape[0]), mean, torch.zeros(()))
    x = _sample_or_score("flow_cps_step", mean, std, noise, x_prev)
    return Step(x, -((x.detach() - mean) ** 2).flatten(1).mean(1), mean, std)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """log N(x; mean, std^2) per element, no reduction: the control methods reduce it their own
    way (DPPO clamps each element, then averages; ReinFlow sums)."""
    std = torch.as_tensor(std, dtype=x.dtype)
    return -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)


def cosine_alpha_bar(num_steps: int, s: float = 0.008) -> Tensor:
    """The (K,) alpha_bar of the cosine schedule (Nichol & Dhariwal 2021) as DPPO builds it
    (model/diffusion/sampling.py): alpha_bar(x) = cos((x/(K+1) + s)/(1 + s) pi/2)^2 on K+1 points,
    betas = 1 - ratios clipped to [0, 0.999], alpha_bar = cumprod(1 - beta). Index 0 is the least
    noisy step. Float64, as the reference's numpy."""
    x = torch.linspace(0, num_steps + 1, num_steps + 1, dtype=torch.float64)
    f = torch.cos(((x / (num_steps + 1)) + s) / (1 + s) * math.pi * 0.5) ** 2
    f = f / f[0]
    betas = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
    return torch.cumprod(1 - betas, 0)


def ddpm_step(x_t: Tensor, eps: Tensor, alpha_bar_t: Tensor | float, alpha_bar_prev: Tensor | float, *,
              x0_clip: float | None = None, std_min: float = 0.0, noise: Tensor | None = None,
              x_prev: Tensor | None = None) -> Step:
    """One DDPM ancestral step (Ho et al. 2020, eq. 7) with DPPO's two guards
    (model/diffusion/diffusion_vpg.py, p_mean_var and forward):

        x0_hat = x_t / sqrt(ab_t) - sqrt(1/ab_t - 1) eps,   clamped to +-x0_clip
        mean   = beta_t sqrt(ab_prev) / (1 - ab_t) x0_hat + (1 - ab_prev) sqrt(alpha_t) / (1 - ab_t) x_t
        std    = max(sqrt(beta_t (1 - ab_prev) / (1 - ab_t)), std_min)

    with alpha_t = ab_t / ab_prev and beta_t = 1 - alpha_t. Without the clamp and the floor this is
    DDIM with eta = 1 (`ddim_step`); with them it is not. The caller clamps `noise` (DPPO: +-3).
    `log_prob` is the per-dimension mean; DPPO's own reduction is `gaussian_log_prob` clamped per
    element, then averaged."""
    x_t, eps = _fp32(x_t), _fp32(eps)
    ab_t = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype)
    ab_prev = torch.as_tensor(alpha_bar_prev, dtype=x_t.dtype)
    alpha_t = ab_t / ab_prev
    beta_t = 1 - alpha_t
    x0_hat = x_t / ab_t.sqrt() - (1 / ab_t - 1).sqrt() * eps
    if x0_clip is not None:
        x0_hat = x0_hat.clamp(-x0_clip, x0_clip)
    mean = beta_t * ab_prev.sqrt() / (1 - ab_t) * x0_hat + (1 - ab_prev) * alpha_t.sqrt() / (1 - ab_t) * x_t
    var = (beta_t * (1 - ab_prev) / (1 - ab_t)).clamp(min=1e-20)
    std = var.sqrt().clamp(min=std_min) if std_min > 0 else var.sqrt()
    x = _sample_or_score("ddpm_step", mean, std, noise, x_prev)
    return Step(x, gaussian_log_prob_per_dim(x.detach(), mean, std), mean, std)


def flow_noisy_step(x_t: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, *,
                    std: Tensor | float, mean_clip: float | None = None, noise: Tensor | None = None,
                    x_prev: Tensor | None = None) -> Step:
    """An Euler step of the flow with Gaussian noise of a given std (ReinFlow, ppoflow.py):

        x_next ~ N(clamp(x_t + (sigma_next - sigma) v, +-mean_clip), std^2)

    `std` is the exploration noise network's output (or a constant); at std = 0 use
    `flow_ode_step`. `log_prob` is the per-dimension mean; ReinFlow sums `gaussian_log_prob`."""
    mean = flow_ode_step(x_t, velocity, sigma, sigma_next)
    if mean_clip is not None:
        mean = mean.clamp(-mean_clip, mean_clip)
    std = torch.as_tensor(std, dtype=mean.dtype)
    x = _sample_or_score("flow_noisy_step", mean, std, noise, x_prev)
    return Step(x, gaussian_log_prob_per_dim(x.detach(), mean, std.expand_as(x)), mean, std)


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


def flux_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """FluxPipeline's (num_steps + 1,) sigmas: linspace(1, 1/num_steps), shifted, then 0."""
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    s = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    s = shift * s / (1 + (shift - 1) * s)
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).float()


@dataclass(frozen=True)
class DDIMSchedule:
    """The T sampling steps of DDIM as tensors, highest timestep first."""

    timesteps: Tensor  # (T,) DDPM timesteps, long
    alpha_bar: Tensor  # (T,) alpha_bar at each timestep
    alpha_bar_prev: Tensor  # (T,) alpha_bar of the step each one moves to

    def __len__(self) -> int:
        return len(self.timesteps)


def ddim_schedule(num_steps: int, alphas_cumprod: Tensor, steps_offset: int = 1) -> DDIMSchedule:
    """The last step moves to timestep max(t - 1000 // T, 0): like ddpo-pytorch
    (ddim_with_logprob.py) the previous timestep is clamped to 0, so alpha_bar_prev is
    alpha_bar[0] < 1 and the last step keeps std > 0 whatever the scheduler's set_alpha_to_one
    (with alpha_bar_prev = 1 its std would be 0 and its log-prob NaN)."""
    n_train = len(alphas_cumprod)
    ts = ddim_timesteps(num_steps, n_train, steps_offset)
    prev = (ts - n_train // num_steps).clamp(min=0)
    ab = alphas_cumprod.float()
    return DDIMSchedule(ts.long(), ab[ts], ab[prev])


class DDIMSampler:
    """DDIM with stochasticity eta over a DDIMSchedule; the network is fed DDPM timesteps."""

    def __init__(self, schedule: DDIMSchedule, eta: float):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule, self.eta = schedule, eta
        self.stochastic = torch.full((len(schedule),), eta > 0)

    def __len__(self) -> int:
        return len(self.schedule)

    def model_time(self, j: Tensor) -> Tensor:
        return self.schedule.timesteps[j]

    def x0_prediction(self, j: Tensor, x_t: Tensor, eps: Tensor) -> Tensor:
        """The data prediction at step j (what ReFL scores)."""
        view = (-1,) + (1,) * (x_t.ndim - 1) if j.ndim else ()
        return ddim_x0(x_t, eps, self.schedule.alpha_bar[j].view(view))

    def noise_to(self, j: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
        """q(x_t | x0) at step j's noise level."""
        return diffusion_noised(x0, self.schedule.alpha_bar[j], noise)

    def step(self, j: Tensor, x_t: Tensor, eps: Tensor, *, noise: Tensor | None = None,
             x_prev: Tensor | None = None, previous: tuple[Tensor, Tensor] | None = None) -> Step:
        """`previous` (the last step's x_t and output) is for multistep solvers; DDIM has none."""
        view = (-1,) + (1,) * (x_t.ndim - 1) if j.ndim else ()
        return ddim_step(x_t, eps, self.schedule.alpha_bar[j].view(view), self.schedule.alpha_bar_prev[j].view(view),
                         eta=self.eta, noise=noise, x_prev=x_prev)


FLOW_KINDS = ("ode", "sde", "cps", "dpm2")


class FlowSampler:
    """A flow-matching sampler over shifted sigmas (1 -> 0): Euler ODE, Flow-SDE, CPS, or the
    deterministic DPM-Solver++(2M) (dpm2). With a window, only steps window_start ..
    window_start + window_size - 1 are stochastic and the others are ODE steps (Flow-GRPO-Fast
    trains those steps only). The network is fed sigma."""

    def __init__(self, sigmas: Tensor, kind: str = "sde", noise_level: float = 0.7, window_start: int = 0,
                 window_size: int = 0):
        if kind not in FLOW_KINDS:
            raise ValueError(f"unknown flow sampler {kind!r}; expected one of {FLOW_KINDS}")
        if kind == "cps" and not 0 <= noise_level <= 1:
            raise ValueError(f"CPS needs noise_level (eta) in [0, 1], got {noise_level}")
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        T = len(sigmas) - 1
        size = window_size or T - window_start
        if window_start < 0 or size < 1 or window_start + size > T:
            raise ValueError(f"noise window [{window_start}, {window_start + size}) is outside the {T} steps")
        self.sigmas, self.kind, self.noise_level = sigmas.float(), kind, noise_level
        noisy = kind in ("sde", "cps") and noise_level > 0
        self.stochastic = torch.zeros(T, dtype=torch.bool)
        self.stochastic[window_start:window_start + size] = noisy
        if kind == "cps":  # CPS's std is sigma' sin(eta pi/2): the step to sigma' = 0 adds no noise
            self.stochastic &= self.sigmas[1:] > 0

    def __len__(self) -> int:
        return len(self.sigmas) - 1

    def model_time(self, j: Tensor) -> Tensor:
        return self.sigmas[j]

    def x0_prediction(self, j: Tensor, x_t: Tensor, v: Tensor) -> Tensor:
        """The data prediction at step j: x0_hat = x_t - sigma v."""
        view = (-1,) + (1,) * (x_t.ndim - 1) if j.ndim else ()
        return _fp32(x_t) - self.sigmas[j].view(view) * _fp32(v)

    def noise_to(self, j: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
        """The flow's forward process at step j's level."""
        return flow_noised(x0, self.sigmas[j], noise)

    def step_size(self, j: Tensor) -> Tensor:
        """dt = sigma_j - sigma_{j+1} > 0 of step j."""
        return self.sigmas[j] - self.sigmas[j + 1]

    def step(self, j: Tensor, x_t: Tensor, v: Tensor, *, noise: Tensor | None = None,
             x_prev: Tensor | None = None, previous: tuple[Tensor, Tensor] | None = None) -> Step:
        """`previous`: the last step's (x_t, velocity), which dpm2 uses from its second step on."""
        j = torch.as_tensor(j)
        view = (-1,) + (1,) * (x_t.ndim - 1) if j.ndim else ()
        stochastic = self.stochastic[j]
        if not bool(stochastic.all()):
            if bool(stochastic.any()):
                raise ValueError("a batch of steps mixes ODE and stochastic steps; score them separately")
            if x_prev is not None:
                raise ValueError("ODE steps are deterministic; there is no log-prob to score")
            sigma, sigma_next = self.sigmas[j].view(view), self.sigmas[j + 1].view(view)
            if self.kind == "dpm2" and previous is not None:
                if j.ndim:
                    raise ValueError("dpm2 steps depend on the previous step; take them one at a time")
                sigma_prev = self.sigmas[j - 1]
                x0_prev = previous[0].float() - sigma_prev * previous[1].float()
                x = flow_dpm2_step(x_t, v, sigma, sigma_next, sigma_prev=sigma_prev, x0_prev=x0_prev)
            else:
                x = flow_ode_step(x_t, v, sigma, sigma_next)
            return Step(x, torch.zeros(x_t.shape[0]), x, torch.zeros(()))
        sigma, sigma_next = self.sigmas[j].view(view), self.sigmas[j + 1].view(view)
        if self.kind == "sde":
            return flow_sde_step(x_t, v, sigma, sigma_next, noise_level=self.noise_level, sigma_max=self.sigmas[1],
                                 noise=noise, x_prev=x_prev)
        return flow_cps_step(x_t, v, sigma, sigma_next, noise_level=self.noise_level, noise=noise, x_prev=x_prev)


@dataclass(frozen=True)
class Trajectory:
    """One batch of rollouts: the states and actions of the denoising MDP."""

    latents: Tensor  # (B, T+1, C, H, W) x_T ... x_0, detached
    log_probs: Tensor  # (B, T) log p(x_next | x_t) per-dim mean (0 at deterministic steps); graph if rolled out with grad
    sampler: DDIMSampler | FlowSampler

    @property
    def final(self) -> Tensor:
        return self.latents[:, -1]  # (B, C, H, W)


def rollout(predict: Callable[[Tensor, Tensor], Tensor], x_T: Tensor, sampler: DDIMSampler | FlowSampler | DDIMSchedule,
            *, noise: Callable[[], Tensor], eta: float | None = None,
            on_step: Callable[[], None] = lambda: None) -> Trajectory:
    """Run a sampler from x_T and record the trajectory (a DDIMSchedule with `eta` is DDIM).

    `predict(x_t, t)` returns the network output (eps, or velocity for flow samplers) for the
    batch, with guidance, if any, applied by the caller; `noise()` returns the step noise z,
    shaped like x_t, from the caller's generators. Under torch.no_grad the log-probs are plain
    numbers; with grad enabled each log-prob keeps its graph to the network (x_t itself is
    always detached: the MDP's state is not a function of the parameters being differentiated).
    Each step also gets the previous step's (x_t, output), which multistep solvers (dpm2) use."""
    if isinstance(sampler, DDIMSchedule):
        sampler = DDIMSampler(sampler, eta if eta is not None else 0.0)
    x = x_T.float()
    latents, log_probs, previous = [x], [], None
    for j in range(len(sampler)):
        jt = torch.tensor(j)
        t = sampler.model_time(jt).expand(x.shape[0]).to(x.device)
        out = predict(x, t)
        z = noise().to(x.device) if sampler.stochastic[j] else None  # deterministic steps: log-prob 0
        step = sampler.step(jt, x, out, noise=z, previous=previous)
        previous = (x, out.detach())
        x = step.x_prev.detach()
        latents.append(x)
        log_probs.append(step.log_prob)
        on_step()
    return Trajectory(torch.stack(latents, 1), torch.stack(log_probs, 1), sampler)
