"""The networks of the control policies: a residual MLP (DPPO's model/common/mlp.py
ResidualMLP), a sinusoidal time embedding (DPPO's SinusoidalPosEmb, then Linear-Mish-Linear as in
its DiffusionMLP), the denoiser that maps (x, t, o) to an action chunk's epsilon or velocity, the
value critic V(o), and ReinFlow's exploration-noise network.

Shapes: o (B, Do) normalised observation; x (B, Ta, Da) a noisy action chunk; t (B,) the
denoising time (DDPM: the step index 0..K-1; flow: sigma in [0, 1], 1 = noise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ResidualMLP(nn.Module):
    """Linear in, `depth` residual blocks of two layers each, linear out."""

    def __init__(self, d_in: int, d_out: int, width: int, depth: int, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(activation(), nn.Linear(width, width), activation(),
                                                  nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Sequential(activation(), nn.Linear(width, d_out))

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def sinusoidal(t: Tensor, dim: int) -> Tensor:
    """(B,) -> (B, dim): [sin(t f_i), cos(t f_i)], f_i = 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 1))
    arg = t.float()[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Denoiser(nn.Module):
    """(x (B, Ta, Da), t (B,), o (B, Do)) -> (B, Ta, Da): epsilon (DDPM) or velocity (flow)."""

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, width: int, depth: int, time_dim: int = 16):
        super().__init__()
        self.horizon, self.action_dim, self.time_dim = horizon, action_dim, time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, 2 * time_dim), nn.Mish(), nn.Linear(2 * time_dim, time_dim))
        self.mlp = ResidualMLP(horizon * action_dim + time_dim + obs_dim, horizon * action_dim, width, depth)

    def embed_time(self, t: Tensor) -> Tensor:
        return self.time(sinusoidal(t, self.time_dim).to(self.time[0].weight.dtype))

    def forward(self, x: Tensor, t: Tensor, obs: Tensor) -> Tensor:
        h = torch.cat([x.flatten(1), self.embed_time(t), obs], dim=-1)
        return self.mlp(h).view(x.shape)


class GaussianHead(nn.Module):
    """The Gaussian policy: mean chunk from o, and one learned log-std per action element
    (DPPO's `fixed_std` with `learn_fixed_std`), clamped to [std_min, std_max] when used."""

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, width: int, depth: int, init_std: float):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.mlp = ResidualMLP(obs_dim, horizon * action_dim, width, depth)
        self.log_std = nn.Parameter(torch.full((horizon, action_dim), math.log(init_std)))

    def forward(self, obs: Tensor) -> Tensor:
        return self.mlp(obs).view(-1, self.horizon, self.action_dim)


class Critic(nn.Module):
    """V(o): a residual Mish MLP (DPPO's CriticObs)."""

    def __init__(self, obs_dim: int, width: int, depth: int):
        super().__init__()
        self.mlp = ResidualMLP(obs_dim, 1, width, depth, nn.Mish)

    def forward(self, obs: Tensor) -> Tensor:
        return self.mlp(obs).squeeze(-1)


class NoiseNet(nn.Module):
    """ReinFlow's exploration noise sigma(t, o) (model/flow/mlp_flow.py, ExploreNoiseNet): an MLP
    with Tanh on the detached time embedding and the observation, squashed to

        log sigma^2 = log sigma_min^2 + (log sigma_max^2 - log sigma_min^2) (tanh(h) + 1) / 2

    The bounds are buffers, so annealing sigma_max is a change of state, saved with the run."""

    def __init__(self, in_dim: int, out_shape: tuple[int, int], hidden: int, sigma_min: float, sigma_max: float):
        super().__init__()
        self.out_shape = out_shape
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, out_shape[0] * out_shape[1]))
        self.register_buffer("sigma_min", torch.tensor(float(sigma_min)))
        self.register_buffer("sigma_max", torch.tensor(float(sigma_max)))

    def forward(self, features: Tensor) -> Tensor:
        lo, hi = 2 * self.sigma_min.log(), 2 * self.sigma_max.log()
        log_var = lo + (hi - lo) * (torch.tanh(self.mlp(features)) + 1) / 2
        return (0.5 * log_var).exp().view(-1, *self.out_shape)
