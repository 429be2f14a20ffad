"""DiffusionNFT (Zheng et al. 2025): reinforcement on the forward process.

For a clean sample x_0 with optimality weight r in [0, 1], fresh noise x_1 and time t,
x_t = (1 - t) x_0 + t x_1 and the flow-matching target is v = x_1 - x_0. With v_old the sampling
("old") policy's velocity and v_theta the trained one, the implicit positive and negative
policies are

    v_plus  = (1 - beta) v_old + beta v_theta
    v_minus = (1 + beta) v_old - beta v_theta

The paper's loss pulls v_plus toward v on good samples and v_minus toward v on bad ones
(`nft_velocity_loss`, per-dim means):

    L = r ||v_plus - v||^2 + (1 - r) ||v_minus - v||^2

The reference code (NVlabs/DiffusionNFT scripts/train_nft_sd3.py) computes it in x0 space, with
x0_hat^± = x_t - t v^±, each branch divided by the stop-gradient of its own mean absolute error
(per sample, clipped below at 1e-5), and the whole scaled by C / beta (`nft_x0_loss`):

    L = (C / beta) [ r ||x0_hat^+ - x_0||^2 / sg(mean|x0_hat^+ - x_0|)
                     + (1 - r) ||x0_hat^- - x_0||^2 / sg(mean|x0_hat^- - x_0|) ]

Since x0_hat^± - x_0 = -t (v^± - v), this is the velocity loss times t / sg(MAE) per branch and
sample: an adaptive weight, not a constant rescaling. The weight comes from the clipped
advantage: r = clamp(A / (2 C) + 1/2, 0, 1), C = adv_clip_max.
"""

from __future__ import annotations

from torch import Tensor

NFT_LOSSES = ("x0-adaptive", "velocity")


def optimality_weights(advantages: Tensor, adv_clip_max: float) -> Tensor:
    return (advantages.clamp(-adv_clip_max, adv_clip_max) / (2 * adv_clip_max) + 0.5).clamp(0, 1)


def _branches(v_theta: Tensor, v_old: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    v_old = v_old.detach()
    return (1 - beta) * v_old + beta * v_theta, (1 + beta) * v_old - beta * v_theta


def nft_velocity_loss(v_theta: Tensor, v_old: Tensor, target: Tensor, r: Tensor, beta: float) -> Tensor:
    """(B,) per-sample losses of the paper's form; `r` (B,) optimality weights in [0, 1]."""
    v_plus, v_minus = _branches(v_theta, v_old, beta)
    pos = ((v_plus - target) ** 2).flatten(1).mean(1)
    neg = ((v_minus - target) ** 2).flatten(1).mean(1)
    return r * pos + (1 - r) * neg


def nft_x0_loss(v_theta: Tensor, v_old: Tensor, x_t: Tensor, x0: Tensor, t: Tensor, r: Tensor, beta: float,
                adv_clip_max: float) -> Tensor:
    """(B,) per-sample losses of the reference code's form; `t` (B,) the flow times."""
    v_plus, v_minus = _branches(v_theta, v_old, beta)
    t = t.view(-1, *([1] * (x_t.ndim - 1)))

    def branch(v: Tensor) -> Tensor:
        err = x_t - t * v - x0
        scale = err.detach().double().abs().flatten(1).mean(1).clamp(min=1e-5).to(err.dtype)
        return (err**2).flatten(1).mean(1) / scale

    return (r * branch(v_plus) + (1 - r) * branch(v_minus)) * adv_clip_max / beta
