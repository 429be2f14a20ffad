"""Generate images from any `Policy` with ddrl's own sampler steps (no pipeline `__call__`).

Each sample's starting noise (and, for stochastic DDIM, its step noise) comes from its own
generator seeded with that sample's seed, so an image depends on its seed only, not on the
batch it was drawn in.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from .models.policy import Policy, guided_prediction
from .sampling import DDIMSampler, FlowSampler, rollout


def _randn(shape: tuple[int, ...], gens: Sequence[torch.Generator]) -> Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens])  # (B, *shape)


def sampler_for(policy: Policy, num_steps: int, eta: float = 0.0) -> DDIMSampler | FlowSampler:
    """DDIM with `eta` for epsilon models, the Euler ODE for flow models."""
    if policy.prediction == "epsilon":
        return DDIMSampler(policy.schedule(num_steps), eta)
    return FlowSampler(policy.sigmas(num_steps), "ode", 0.0)


@torch.no_grad()
def generate(policy: Policy, prompts: Sequence[str], seeds: Sequence[int], *, num_steps: int = 20,
             guidance_scale: float = 5.0, eta: float = 0.0, batch_size: int = 64,
             progress: bool = True) -> Tensor:
    """(B, 3, H, W) images in [0, 1], one per (prompt, seed)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    if num_steps < 1:
        raise ValueError(f"steps must be a positive integer, got {num_steps}")
    if eta > 0 and policy.prediction != "epsilon":
        raise ValueError(f"eta (DDIM stochasticity) applies to epsilon-prediction models; this "
                         f"model predicts {policy.prediction}, so use eta 0")
    sampler = sampler_for(policy, num_steps, eta)
    cond_all = policy.encode(prompts)  # also validates every prompt before any sampling work
    uncond1 = policy.encode([""])
    images = []
    starts = range(0, len(prompts), batch_size)
    with tqdm(total=len(starts) * num_steps, desc=f"sampling {len(prompts)} images",
              unit="step", disable=not progress) as bar:
        for i in starts:
            p, s = list(prompts[i:i + batch_size]), seeds[i:i + batch_size]
            gens = [torch.Generator().manual_seed(int(x)) for x in s]
            x = _randn(policy.latent_shape, gens).to(policy.device)
            cond, uncond = cond_all[i:i + batch_size], uncond1.repeat(len(p))
            traj = rollout(lambda z, t: guided_prediction(policy, z, t, cond, uncond, guidance_scale), x, sampler,
                           noise=lambda gens=gens: _randn(policy.latent_shape, gens), on_step=lambda: bar.update(1))
            images.append(policy.decode(traj.final).cpu())
    return torch.cat(images)
