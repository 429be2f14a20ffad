"""DDPO policy-gradient losses (Black et al. 2023, section 4.2), per trained denoising step.

    DDPO-SF:  L = -A * log p_theta(x_{t-1} | x_t, c)
    DDPO-IS:  rho = exp(log p_theta - log p_old)
              L = max(-A * rho, -A * clip(rho, 1 - clip_range, 1 + clip_range))

Notation: log_prob = log p_theta (per-dim mean, with graph), old_log_prob = log p_old (recorded
when sampling), advantages = A (clipped by the caller). At rho = 1 the two losses have the same
gradient: -A * grad log p. Losses are returned per element; the caller averages.

Diagnostics: approx_kl = 1/2 * mean((log p_theta - log p_old)^2), clipfrac = fraction of
elements with |rho - 1| > clip_range.
"""

from __future__ import annotations

import torch
from torch import Tensor


def score_function_loss(log_prob: Tensor, advantages: Tensor) -> Tensor:
    return -advantages * log_prob


def ppo_clip_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        stats = {
            "approx_kl": 0.5 * ((log_prob - old_log_prob) ** 2).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "ratio": ratio.mean(),
        }
    return loss, stats


def gaussian_kl_same_std(mean: Tensor, mean_ref: Tensor, std: Tensor) -> Tensor:
    """KL(N(mean, std^2) || N(mean_ref, std^2)) per dimension, averaged over non-batch dims:
    mean_D (mean - mean_ref)^2 / (2 std^2). Same reduction as the log-probs."""
    return (((mean - mean_ref) ** 2) / (2 * std**2)).flatten(1).mean(1)
