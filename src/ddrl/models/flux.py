"""Policy adapter for FLUX.1 pipelines (`FluxPipeline`).

FLUX's transformer works on packed latents: each 2x2 patch of the (C, H, W) latent becomes one
token of 4C channels, with position ids per token. ddrl's samplers keep latents unpacked, so
`predict` packs, runs the transformer and unpacks. Its velocity convention is SD3's (sigma 1 =
noise); diffusers feeds it `timestep = sigma` (the pipeline divides by 1000).

FLUX.1-dev is guidance-distilled: the guidance strength is an input (`guidance`, 3.5 by default),
not a second, unconditional pass, so train and sample it with `sample.guidance_scale` 1.
The schedule shift depends on the image size ("dynamic shifting"): mu grows linearly with the
number of image tokens, and sigma -> e^mu sigma / (1 + (e^mu - 1) sigma) is SD3's shift with
shift = e^mu, which is what `shift` holds.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..sampling import flux_sigmas
from .policy import Cond, ModelError, adapters_disabled, decode_latents


def pack(latents: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches as tokens, FluxPipeline's layout."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


class FluxPolicy:
    prediction = "velocity"

    def __init__(self, pipe, max_sequence_length: int = 512, guidance: float = 3.5, resolution: int | None = None,
                 prompt_check: Callable[[Sequence[str]], None] | None = None):
        self.pipe, self.denoiser, self.vae = pipe, pipe.transformer, pipe.vae
        self.max_sequence_length, self.guidance, self.prompt_check = max_sequence_length, guidance, prompt_check
        cfg = pipe.transformer.config
        channels = cfg.in_channels // 4
        pixels = resolution or pipe.default_sample_size * pipe.vae_scale_factor  # 1024 for FLUX.1
        if pixels % (pipe.vae_scale_factor * 2):
            raise ModelError(f"model.resolution {pixels} must be a multiple of {pipe.vae_scale_factor * 2} (the VAE's "
                             "factor x FLUX's 2x2 latent packing)")
        size = 2 * (pixels // (pipe.vae_scale_factor * 2))  # latent side, even for 2x2 packing
        self.latent_shape = (channels, size, size)
        s = pipe.scheduler.config
        self.num_train_timesteps = int(s.num_train_timesteps)
        if s.get("use_dynamic_shifting", False):
            tokens = (size // 2) ** 2
            slope = (s.max_shift - s.base_shift) / (s.max_image_seq_len - s.base_image_seq_len)
            self.shift = math.exp(s.base_shift + slope * (tokens - s.base_image_seq_len))
        else:
            self.shift = float(s.get("shift", 1.0))

    def sigmas(self, num_steps: int) -> Tensor:
        return flux_sigmas(num_steps, self.shift)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def encode(self, prompts: Sequence[str]) -> Cond:
        if self.prompt_check:
            self.prompt_check(prompts)
        p = list(prompts)
        embeds, pooled, _ = self.pipe.encode_prompt(p, p, device=self.device,
                                                    max_sequence_length=self.max_sequence_length)
        return Cond(embeds, pooled)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        b, _, h, w = x_t.shape
        dtype, device = self.denoiser.dtype, x_t.device
        img_ids = torch.zeros(h // 2, w // 2, 3, device=device)
        img_ids[..., 1] = torch.arange(h // 2, device=device)[:, None]
        img_ids[..., 2] = torch.arange(w // 2, device=device)[None, :]
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=device)
        guidance = (torch.full((b,), self.guidance, device=device, dtype=torch.float32)
                    if self.denoiser.config.guidance_embeds else None)
        out = self.denoiser(hidden_states=pack(x_t).to(dtype), timestep=t.to(dtype), guidance=guidance,
                            pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.embeds.to(dtype),
                            txt_ids=txt_ids.to(dtype), img_ids=img_ids.reshape(-1, 3).to(dtype)).sample
        return unpack(out, h, w)

    def decode(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents)

    def lora_target_modules(self) -> list[str]:
        # attention of the double-stream and single-stream blocks (both streams)
        return ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

    def reference(self):
        return adapters_disabled(self.denoiser)
