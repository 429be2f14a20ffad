"""DiffusionNFT (Zheng et al. 2025): reinforcement on the forward process.

For a clean sample x_0 with optimality weight r in [0, 1], fresh noise x_1 and time t,
x_t = (1 - t) x_0 + t x_1 and the flow-matching target is v = x_1 - x_0. With v_old the sampling
("old") policy's velocity and v_theta the trained one, the implicit positive and negative
policies are

    v_plus  = (1 - beta) v_old + beta v_theta
    v_minus = (1 + beta) v_old - beta v_theta

and the loss pulls v_plus toward v on good samples and v_minus toward v on bad ones:

    L = r ||v_plus - v||^2 + (1 - r) ||v_minus - v||^2      (per-dim mean)

With r = 1 and beta = 1 it is plain flow matching, ||v_theta - v||^2. The weight comes from the
clipped advantage: r = clamp(A / (2 adv_clip_max) + 1/2, 0, 1).
"""

from __future__ import annotations

from torch import Tensor


def optimality_weights(advantages: Tensor, adv_clip_max: float) -> Tensor:
    return (advantages.clamp(-adv_clip_max, adv_clip_max) / (2 * adv_clip_max) + 0.5).clamp(0, 1)


def nft_loss(v_theta: Tensor, v_old: Tensor, target: Tensor, r: Tensor, beta: float) -> Tensor:
    """(B,) per-sample losses; `r` (B,) optimality weights in [0, 1]."""
    v_old = v_old.detach()
    v_plus = (1 - beta) * v_old + beta * v_theta
    v_minus = (1 + beta) * v_old - beta * v_theta
    pos = ((v_plus - target) ** 2).flatten(1).mean(1)
    neg = ((v_minus - target) ** 2).flatten(1).mean(1)
    return r * pos + (1 - r) * neg
