"""Policy adapter for Stable Diffusion 1.x / 2.x pipelines (and the built-in `shapes-sd`; SDXL in sdxl.py).

Only the pipeline's components are used (tokenizer, text encoder, UNet, VAE) plus its
scheduler's `alphas_cumprod`, converted to a tensor once; the scheduler's stateful `step()` and
the pipeline's `__call__` are never used, so stored steps can be re-scored in any order.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..sampling import DDIMSchedule, ddim_schedule, eps_from_prediction
from .policy import Cond, adapters_disabled, decode_latents


class StableDiffusionPolicy:
    prediction = "epsilon"

    def __init__(self, pipe, prompt_check: Callable[[Sequence[str]], None] | None = None):
        self.pipe = pipe
        self.denoiser = pipe.unet
        self.vae = pipe.vae
        self.prompt_check = prompt_check
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.float().clone()  # (T_train,)
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.steps_offset = int(pipe.scheduler.config.get("steps_offset", 0))
        pred = pipe.scheduler.config.get("prediction_type", "epsilon")
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {pred!r}; expected epsilon, v_prediction or sample")
        self.scheduler_prediction = pred
        size = pipe.unet.config.sample_size
        self.latent_shape = (pipe.unet.config.in_channels, size, size)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def encode(self, prompts: Sequence[str]) -> Cond:
        if self.prompt_check:
            self.prompt_check(prompts)
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return Cond(embeds)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """eps at DDPM timestep t, whatever the UNet predicts (v- and x0-models are converted)."""
        return self._to_eps(self.denoiser(x_t.to(self.denoiser.dtype), t, cond.embeds).sample, x_t, t)

    def _to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        if self.scheduler_prediction == "epsilon":
            return out
        ab = self.alphas_cumprod.to(x_t.device)[t.long()].view(-1, 1, 1, 1)
        return eps_from_prediction(out, x_t, ab, self.scheduler_prediction)

    def schedule(self, num_steps: int) -> DDIMSchedule:
        return ddim_schedule(num_steps, self.alphas_cumprod, self.steps_offset)

    def decode(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents)

    def lora_target_modules(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0"]

    def reference(self):
        return adapters_disabled(self.denoiser)
