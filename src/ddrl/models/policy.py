"""The one boundary between ddrl and a generative model: the `Policy` protocol.

Everything else in ddrl (samplers, losses, training) sees a model only through this protocol:
encode prompts into a condition, predict epsilon or velocity, decode latents to images, name
the modules LoRA should adapt, and give the reference model (the LoRA adapter switched off).
Adapters in this package implement it for diffusers Stable Diffusion 1.x/2.x and SD3 folders.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Literal, Protocol, Sequence

import torch
from torch import Tensor

from ..bounds import uses_guidance
from ..sampling import DDIMSchedule


class ModelError(ValueError):
    """A model could not be found, loaded or used as asked; the message says what is accepted."""


@dataclass(frozen=True)
class Cond:
    """An encoded prompt batch: token embeddings and, for SD3-style models, pooled embeddings."""

    embeds: Tensor  # (B, L, D)
    pooled: Tensor | None = None  # (B, P)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def __getitem__(self, idx) -> "Cond":
        return Cond(self.embeds[idx], None if self.pooled is None else self.pooled[idx])

    @staticmethod
    def cat(conds: Sequence["Cond"]) -> "Cond":
        pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
        return Cond(torch.cat([c.embeds for c in conds]), pooled)

    def repeat(self, n: int) -> "Cond":
        """Repeat a batch-1 condition n times (e.g. the empty prompt for guidance)."""
        pooled = None if self.pooled is None else self.pooled.expand(n, -1)
        return Cond(self.embeds.expand(n, -1, -1), pooled)


class Policy(Protocol):
    """What ddrl uses of a model. Epsilon models (Stable Diffusion) provide `schedule` and
    `alphas_cumprod`; velocity models (SD3, FLUX, shapes-flow) provide `sigmas`."""

    prediction: Literal["epsilon", "velocity"]
    """epsilon: `predict` returns the noise and `t` is the DDPM timestep (0..999);
    velocity: `predict` returns x_1 - x_0 and `t` is the flow time sigma in [0, 1]."""
    denoiser: torch.nn.Module
    """the network RL trains (UNet or transformer)"""
    latent_shape: tuple[int, int, int]
    """(C, H, W) of one latent"""
    pipe: object
    """the diffusers pipeline the components came from (its class saves LoRA weights)"""

    @property
    def device(self) -> torch.device: ...

    def encode(self, prompts: Sequence[str]) -> Cond: ...

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [0, 1]."""

    def lora_target_modules(self) -> list[str]: ...

    def reference(self) -> contextlib.AbstractContextManager: ...

    def schedule(self, num_steps: int) -> DDIMSchedule:
        """epsilon models: the DDIM schedule of `num_steps` steps."""

    alphas_cumprod: Tensor
    """epsilon models: (T_train,) the DDPM cumulative products (RWR noises samples with them)"""

    def sigmas(self, num_steps: int) -> Tensor:
        """velocity models: the (num_steps + 1,) flow times of the pipeline's scheduler, 1 -> 0."""


def decode_latents(vae, latents: Tensor) -> Tensor:
    """Images in [0, 1] from latents, undoing the VAE's scaling and (SD3, FLUX) shift factors."""
    cfg = vae.config
    z = latents.to(vae.dtype) / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    return ((vae.decode(z).sample.float() + 1) / 2).clamp(0, 1)


def guided_prediction(policy: Policy, x_t: Tensor, t: Tensor, cond: Cond, uncond: Cond,
                      guidance_scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): u + w * (c - u), one batched forward.
    A scale of 0 or 1 is the plain conditional prediction and skips the unconditional half
    (ddrl.bounds.GUIDANCE_RULE)."""
    if not uses_guidance(guidance_scale):
        return policy.predict(x_t, t, cond)
    out = policy.predict(torch.cat([x_t, x_t]), torch.cat([t, t]), Cond.cat([uncond, cond]))
    u, c = out.chunk(2)
    return u + guidance_scale * (c - u)


@contextlib.contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """The reference model: the same network with its LoRA adapters switched off. A module
    without adapters is its own reference (then RL needs a frozen copy instead)."""
    has_adapters = getattr(module, "_hf_peft_config_loaded", False)
    if has_adapters:
        module.disable_adapters()
    try:
        yield
    finally:
        if has_adapters:
            module.enable_adapters()
