"""Reward-weighted regression, the DDPO paper's baseline (Peters & Schaal 2007; Lee et al. 2023;
Black et al. 2023, section 4.1 and appendix).

The final sample x_0 is the action of a one-step MDP. The ordinary denoising loss is trained on
the model's own samples, weighted per sample:

    exponential:  w_i = exp(beta * r_i) / sum_j exp(beta * r_j)    (jannerm/ddpo: beta = 5)
    sparse:       w_i = 1[r_i >= C],  C the `percentile`-th percentile of the batch's rewards

Both are normalised here to mean 1 over the batch, so the weighted loss mean(w_i * l_i) has the
scale of the plain denoising loss. l_i = mean_D ||eps - eps_theta(sqrt(ab) x_0 + sqrt(1-ab) eps, c, t)||^2.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rwr_weights(rewards: Tensor, beta: float) -> Tensor:
    return torch.softmax(beta * rewards.double(), 0).float() * len(rewards)


def rwr_sparse_weights(rewards: Tensor, percentile: float) -> Tensor:
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    threshold = torch.quantile(rewards.double(), percentile / 100)
    keep = (rewards.double() >= threshold).float()
    return keep * len(rewards) / keep.sum()


def weighted_denoising_loss(eps_pred: Tensor, eps: Tensor, weights: Tensor) -> Tensor:
    """(B,) per-sample weighted MSE; the caller averages."""
    return weights * ((eps_pred.float() - eps.float()) ** 2).flatten(1).mean(1)
