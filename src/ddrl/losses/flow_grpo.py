"""Flow-GRPO's KL penalty to the reference model (Liu et al. 2025, eq. 8).

Both policies take a Flow-SDE step from the same x_t with the same std, so their KL is that of
two Gaussians with equal std: mean_D (mean - mean_ref)^2 / (2 var). Which variance:

    paper:  var = (s sqrt(dt))^2, the step's full variance (the exact per-step KL)
    code:   var = s^2, the SDE's diffusion coefficient without dt (flow_grpo
            scripts/train_sd3.py: `/ (2 * std_dev_t ** 2)`; flow_grpo issue #78)

so code = paper * dt per step. The papers' beta (0.04 GenEval/OCR, 0.01 PickScore) was tuned
with the code's form. For steps whose std has no sqrt(dt) factor (CPS: sigma' sin(eta pi/2)) the
two forms coincide.

Notation: mean, mean_ref the step means under the policy and the reference, std the step's
std, dt = sigma - sigma_next > 0, s = std / sqrt(dt).
"""

from __future__ import annotations

from torch import Tensor

from .ddpo import gaussian_kl_same_std

KL_FORMS = ("code", "paper")


def flow_grpo_kl(mean: Tensor, mean_ref: Tensor, std: Tensor, dt: Tensor, form: str) -> Tensor:
    """(B,) KL per sample of Flow-SDE steps; `std` the step's std s sqrt(dt), `dt` broadcastable."""
    if form == "paper":
        return gaussian_kl_same_std(mean, mean_ref, std)
    if form == "code":
        return gaussian_kl_same_std(mean, mean_ref, std / dt.sqrt())
    raise ValueError(f"unknown KL form {form!r}; expected one of {KL_FORMS}")
