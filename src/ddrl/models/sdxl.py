"""Policy adapter for Stable Diffusion XL pipelines: the SD adapter's schedule, sampling and
LoRA targets, with SDXL's conditioning.

- Prompts go through `StableDiffusionXLPipeline.encode_prompt`: both CLIP text encoders'
  penultimate states concatenated, and the second encoder's pooled projection.
- The UNet also reads `add_time_ids` = (original H, W, crop top, crop left, target H, W) in pixels.
  Images here are generated and trained at the model's own size uncropped, so they are
  (R, R, 0, 0, R, R), as the pipeline's default and SalesforceAIResearch/DiffusionDPO's
  hard-coded ids.
- The empty prompt, the unconditional input of classifier-free guidance, is all zeros when the
  pipeline's `force_zeros_for_empty_prompt` is set (SDXL base), as the pipeline's default negative
  prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .policy import Cond
from .stable_diffusion import StableDiffusionPolicy


class StableDiffusionXLPolicy(StableDiffusionPolicy):
    def __init__(self, pipe, prompt_check=None):
        super().__init__(pipe, prompt_check)
        side = self.latent_shape[-1] * pipe.vae_scale_factor
        self.add_time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32)
        self.zeros_for_empty = bool(pipe.config.get("force_zeros_for_empty_prompt", False))

    def encode(self, prompts) -> Cond:
        if self.prompt_check:
            self.prompt_check(prompts)
        embeds, _, pooled, _ = self.pipe.encode_prompt(list(prompts), device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        if self.zeros_for_empty:
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return Cond(embeds, pooled)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        dtype = self.denoiser.dtype
        time_ids = self.add_time_ids.to(x_t.device, dtype).expand(len(x_t), -1)
        out = self.denoiser(x_t.to(dtype), t, cond.embeds.to(dtype),
                            added_cond_kwargs={"text_embeds": cond.pooled.to(dtype), "time_ids": time_ids}).sample
        return self._to_eps(out, x_t, t)
