"""Diffusion-DPO (Wallace et al. 2023, eq. 14; ALGORITHMS.md section 5).

For a pair (c, x_0^w, x_0^l) noised with one t and one noise shared by winner and loser,

    e^z_theta = mean_D ||target - f_theta(x_t^z, c, t)||^2     (z in {w, l}; f the model's native output)
    e^z_ref   = the same under the frozen reference
    Delta     = (e^w_theta - e^w_ref) - (e^l_theta - e^l_ref)
    s         = -beta * Delta                                 (the implicit reward margin)
    L         = -log sigmoid(s)                               (mean over pairs)

`beta` here is the effective one. The references write the scale differently on the same
per-element-mean errors: SalesforceAIResearch/DiffusionDPO train.py has `-0.5 * beta_dpo` with
beta_dpo = 5000 (effective 2500); diffusers' examples/research_projects/diffusion_dpo/
train_diffusion_dpo.py has `-beta_dpo` with 2500; flow_grpo scripts/train_sd3_dpo.py has
`-0.5 * train.beta` with 100 (effective 50).

Notation: err_* are the (B,) per-pair mean squared errors, reference ones detached by the caller.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dpo_margin(err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, beta: float) -> Tensor:
    """s = -beta * ((e^w - e^w_ref) - (e^l - e^l_ref)), (B,). s > 0: the policy prefers the
    winner more than the reference does (counted in the implicit accuracy)."""
    return -beta * ((err_w - ref_err_w) - (err_l - ref_err_l))


def diffusion_dpo_loss(err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor,
                       beta: float) -> tuple[Tensor, Tensor]:
    """(per-pair loss -log sigmoid(s), s), both (B,); the caller averages the loss."""
    s = dpo_margin(err_w, err_l, ref_err_w, ref_err_l, beta)
    return -F.logsigmoid(s), s

