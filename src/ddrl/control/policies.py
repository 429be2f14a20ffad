"""Action-chunk policies: o -> Ta actions of Da dims, in normalised units ([-1, 1]).

- `ddpm`: an epsilon-network denoised by DDPM over K steps (cosine schedule), DPPO's policy;
- `flow`: a rectified-flow velocity network integrated by K Euler steps from sigma = 1 (noise)
  to 0 (data), with v = noise - data (ddrl's flow convention; ReinFlow's t = 1 - sigma);
- `gaussian`: a mean chunk from an MLP and a learned per-element std, the baseline.

A policy file is a folder: `config.json` (kind, sizes, steps, the environment id, the chunk
length), `model.safetensors` (the network and the fixed min/max normalisers), and a README.md
model card. Only safetensors and JSON are read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..sampling import cosine_alpha_bar, ddpm_step, flow_ode_step
from .nets import Denoiser, GaussianHead
from .normalize import MinMax

KINDS = ("ddpm", "flow", "gaussian")
NOISE_CLIP = 3.0  # DPPO's randn_clip_value: each standard-normal draw clamped to +-3
EVAL_STD_MIN = 1e-3  # DPPO's deterministic DDPM: the schedule's std, floored at 1e-3, 0 at the last step


class PolicyError(ValueError):
    """A policy folder that cannot be used here, in one line."""


class ChunkPolicy(nn.Module):
    def __init__(self, kind: str, obs_dim: int, action_dim: int, horizon: int, *, width: int = 128, depth: int = 3,
                 steps: int = 20, init_std: float = 0.1, env: str = "ddrl/Routes-v0",
                 obs_low=None, obs_high=None, act_low=None, act_high=None):
        super().__init__()
        if kind not in KINDS:
            raise PolicyError(f"policy kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.config = dict(kind=kind, obs_dim=obs_dim, action_dim=action_dim, horizon=horizon, width=width,
                           depth=depth, steps=steps, init_std=init_std, env=env)
        self.kind, self.obs_dim, self.action_dim, self.horizon, self.steps = kind, obs_dim, action_dim, horizon, steps
        if kind == "gaussian":
            self.net = GaussianHead(obs_dim, action_dim, horizon, width, depth, init_std)
        else:
            self.net = Denoiser(obs_dim, action_dim, horizon, width, depth)
        ones = torch.ones
        self.obs_norm = MinMax(obs_low if obs_low is not None else -ones(obs_dim),
                               obs_high if obs_high is not None else ones(obs_dim))
        self.act_norm = MinMax(act_low if act_low is not None else -ones(action_dim),
                               act_high if act_high is not None else ones(action_dim))
        if kind == "ddpm":
            ab = cosine_alpha_bar(steps)
            self.register_buffer("alpha_bar", ab.float(), persistent=False)
            self.register_buffer("alpha_bar_prev", torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]]).float(),
                                 persistent=False)
        self.register_buffer("sigmas", torch.linspace(1, 0, steps + 1), persistent=False)  # the flow's grid

    # ------------------------------------------------------------------ behaviour cloning
    def bc_loss(self, obs: Tensor, actions: Tensor, generator: torch.Generator) -> Tensor:
        """The pretraining loss on normalised (o, action chunk) pairs: epsilon MSE (DDPM),
        velocity MSE at sigma ~ U[0, 1] (flow), or the mean's MSE (Gaussian, the NLL at a fixed std)."""
        if self.kind == "gaussian":
            return ((self.net(obs) - actions) ** 2).mean()
        noise = torch.randn(actions.shape, generator=generator)
        if self.kind == "ddpm":
            t = torch.randint(0, self.steps, (len(obs),), generator=generator)
            ab = self.alpha_bar[t].view(-1, 1, 1)
            x_t = ab.sqrt() * actions + (1 - ab).sqrt() * noise
            return ((self.net(x_t, t.float(), obs) - noise) ** 2).mean()
        sigma = torch.rand(len(obs), generator=generator)
        x_t = (1 - sigma.view(-1, 1, 1)) * actions + sigma.view(-1, 1, 1) * noise
        return ((self.net(x_t, sigma, obs) - (noise - actions)) ** 2).mean()

    # ------------------------------------------------------------------ evaluation sampling
    def noise(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn((n, self.horizon, self.action_dim), generator=generator, dtype=self.sigmas.dtype)

    @torch.no_grad()
    def evaluate_actions(self, obs: Tensor, generator: torch.Generator, net: nn.Module | None = None) -> Tensor:
        """Evaluation actions (B, Ta, Da): DPPO's deterministic DDPM (the schedule's std floored at
        1e-3, none at the last step, x0 clamped to +-1); the flow's noise-free Euler ODE from random
        noise, intermediate points clamped to +-1 (ReinFlow); the Gaussian's mean. `net` replaces
        the policy's network (a fine-tuned copy)."""
        net = net if net is not None else self.net
        if self.kind == "gaussian":
            return net(obs).clamp(-1, 1)
        x = self.noise(len(obs), generator)
        if self.kind == "ddpm":
            for t in reversed(range(self.steps)):
                eps = net(x, torch.full((len(obs),), float(t)), obs)
                z = self.noise(len(obs), generator).clamp(-NOISE_CLIP, NOISE_CLIP)
                x = ddpm_step(x, eps, self.alpha_bar[t], self.alpha_bar_prev[t], x0_clip=1.0,
                              std_min=EVAL_STD_MIN, noise=z if t > 0 else torch.zeros_like(z)).x_prev
            return x.clamp(-1, 1)
        for k in range(self.steps):
            sigma = torch.full((len(obs),), float(self.sigmas[k]))
            x = flow_ode_step(x, net(x, sigma, obs), self.sigmas[k], self.sigmas[k + 1]).clamp(-1, 1)
        return x

    def to_env(self, actions: Tensor) -> Tensor:
        """Normalised chunk -> the environment's action units."""
        return self.act_norm.inverse(actions.clamp(-1, 1))


def save_policy(policy: ChunkPolicy, folder: Path, card: str = "") -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(policy.config, indent=1) + "\n")
    if card:
        (folder / "README.md").write_text(card)


def load_policy(folder: str | Path) -> ChunkPolicy:
    """A policy folder (config.json + model.safetensors), checked: a clear PolicyError otherwise."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise PolicyError(f"{folder} is not a ddrl control policy (expected config.json and model.safetensors)")
    try:
        config = json.loads((folder / "config.json").read_text())
        kind, obs_dim, action_dim, horizon = (config.pop(k) for k in ("kind", "obs_dim", "action_dim", "horizon"))
        policy = ChunkPolicy(kind, obs_dim, action_dim, horizon, **config)
        state = load_file(str(folder / "model.safetensors"))
        policy.load_state_dict(state)
    except PolicyError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign folder gets one line
        raise PolicyError(f"{folder}: cannot load the policy ({type(e).__name__}: {str(e)[:160]})") from None
    return policy
