"""The clipped surrogate of PPO (Schulman et al. 2017) as the control methods use it (DPPO
model/diffusion/diffusion_ppo.py, ReinFlow model/flow/ft_ppo/ppoflow.py):

    rho = exp(log_ratio),   L = mean( max(-A rho, -A clip(rho, 1 - eps, 1 + eps)) )

`clip_range` may differ per row (DPPO's clip per denoising step). Diagnostics as the references
log them: approx_kl = mean((rho - 1) - log rho) (Schulman's k3 estimator), clipfrac = the fraction
of rows with |rho - 1| > eps.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize_advantages(advantages: Tensor) -> Tensor:
    """Per-minibatch normalisation, (A - mean) / (std + 1e-8), as DPPO and ReinFlow."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, clip_range: Tensor | float) -> tuple[Tensor, dict[str, float]]:
    ratio = log_ratio.exp()
    clipped = torch.clamp(ratio, 1 - torch.as_tensor(clip_range), 1 + torch.as_tensor(clip_range))
    loss = torch.maximum(-advantages * ratio, -advantages * clipped).mean()
    with torch.no_grad():
        stats = {"train/approx_kl": float(((ratio - 1) - log_ratio).mean()),
                 "train/clipfrac": float(((ratio - 1).abs() > torch.as_tensor(clip_range)).float().mean()),
                 "train/ratio": float(ratio.mean())}
    return loss, stats
