"""Policy adapter for Stable Diffusion 3 / 3.5 pipelines (and the built-in `shapes-flow`).

The transformer predicts the rectified-flow velocity v = x_1 - x_0 at flow time sigma, with
x_sigma = (1 - sigma) * x_0 + sigma * x_1; diffusers feeds it `timestep = 1000 * sigma`.
Prompts go through the pipeline's own `encode_prompt` (two CLIPs and, when present, T5), so
embeddings match what `StableDiffusion3Pipeline` would compute.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..sampling import flow_sigmas
from .policy import Cond, ModelError, adapters_disabled, decode_latents


class SD3Policy:
    prediction = "velocity"

    def __init__(self, pipe, max_sequence_length: int = 256, resolution: int | None = None,
                 prompt_check: Callable[[Sequence[str]], None] | None = None):
        self.pipe = pipe
        self.denoiser = pipe.transformer
        self.vae = pipe.vae
        self.max_sequence_length = max_sequence_length
        self.prompt_check = prompt_check
        self.shift = float(pipe.scheduler.config.get("shift", 1.0))
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        size = pipe.transformer.config.sample_size  # latent side: 128 (1024 px) for SD3.5
        if resolution:
            unit = pipe.vae_scale_factor * pipe.transformer.config.patch_size
            if resolution % unit:
                raise ModelError(f"model.resolution {resolution} must be a multiple of {unit} (the VAE's factor "
                                 f"{pipe.vae_scale_factor} x the transformer's patch size)")
            size = resolution // pipe.vae_scale_factor
        self.latent_shape = (pipe.transformer.config.in_channels, size, size)

    def sigmas(self, num_steps: int) -> Tensor:
        """The (num_steps + 1,) flow times of StableDiffusion3Pipeline's scheduler, 1 -> 0."""
        return flow_sigmas(num_steps, self.shift, self.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def encode(self, prompts: Sequence[str]) -> Cond:
        if self.prompt_check:
            self.prompt_check(prompts)
        p = list(prompts)
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            p, p, p, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length)
        return Cond(embeds, pooled)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        dtype = self.denoiser.dtype
        return self.denoiser(hidden_states=x_t.to(dtype), timestep=t * self.num_train_timesteps,
                             encoder_hidden_states=cond.embeds.to(dtype),
                             pooled_projections=cond.pooled.to(dtype)).sample

    def decode(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents)

    def lora_target_modules(self) -> list[str]:
        # The joint attention of every MMDiT block, both streams (Flow-GRPO's choice for SD3.5).
        return ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                "to_add_out"]

    def reference(self):
        return adapters_disabled(self.denoiser)
