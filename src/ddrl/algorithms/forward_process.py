"""The forward process q(x_t | x_0) and the denoising error of the model's native output, for the
algorithms that train on clean samples (Diffusion-DPO, SFT): one noise level and one noise per
sample, drawn from a keyed generator.

- Diffusion models (epsilon, v or x0 prediction): t ~ U{0, ..., T_train - 1}, as the Diffusion-DPO
  references; x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps. `policy.predict` returns eps (v- and
  x0-models are converted), and eps_hat - eps = sqrt(ab) (v_hat - v) = -sqrt(ab / (1 - ab))
  (x0_hat - x0), so the error of the native target is the eps error times 1 / ab (v) or
  (1 - ab) / ab (x0): diffusers' DPO script regresses v for v-prediction models.
- Flow models: sigma at a logit-normal position u = sigmoid(N(0, 1)) of the scheduler's
  1000-step training schedule (flow_grpo scripts/train_sd3_dpo.py: compute_density_for_timestep_sampling
  'logit_normal', index floor(1000 u)); x_t = (1 - sigma) x_0 + sigma eps, target eps - x_0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sampling import diffusion_noised, flow_noised

class ForwardProcess:
    def __init__(self, policy):
        self.policy = policy
        self.velocity = policy.prediction == "velocity"
        if self.velocity:
            # the training schedule: a fresh scheduler's sigmas, 1 -> shift(1/1000) (not an inference schedule)
            sched = policy.pipe.scheduler
            self.sigmas = type(sched).from_config(sched.config).sigmas.float()  # (1000,)
        else:
            self.alphas_cumprod = policy.alphas_cumprod.float()
            kind = getattr(policy, "scheduler_prediction", "epsilon")
            self.native = {"epsilon": lambda ab: torch.ones_like(ab), "v_prediction": lambda ab: 1 / ab,
                           "sample": lambda ab: (1 - ab) / ab}[kind]

    def draw(self, shape: tuple[int, ...], gens: list[torch.Generator]) -> tuple[Tensor, Tensor]:
        """(noise level per generator: the DDPM timestep or the flow sigma, (B,); noise (B, *shape))."""
        if self.velocity:
            u = torch.sigmoid(torch.stack([torch.randn((), generator=g) for g in gens]))
            level = self.sigmas[(u * len(self.sigmas)).long().clamp(max=len(self.sigmas) - 1)]
        else:
            level = torch.stack([torch.randint(0, len(self.alphas_cumprod), (), generator=g) for g in gens])
        return level, torch.stack([torch.randn(shape, generator=g) for g in gens])

    def noised(self, x0: Tensor, level: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, the regression target of `policy.predict`: eps, or the velocity eps - x_0)."""
        if self.velocity:
            return flow_noised(x0, level.to(x0.device), noise), noise - x0
        return diffusion_noised(x0, self.alphas_cumprod.to(x0.device)[level.long()], noise), noise

    def error(self, pred: Tensor, target: Tensor, level: Tensor) -> Tensor:
        """mean_D ||native target - native prediction||^2 per sample, fp32, (B,)."""
        err = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
        if self.velocity:
            return err
        return err * self.native(self.alphas_cumprod.to(err.device)[level.long()])
