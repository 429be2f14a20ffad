"""Exporting a trained LoRA in the diffusers format."""

from __future__ import annotations

from pathlib import Path


def save_lora(policy, folder: Path, layers: dict | None = None) -> None:
    """The LoRA in the diffusers format `pipe.load_lora_weights(folder)` reads: `layers` (peft's
    state dict, whole tensors) or the denoiser's current adapter."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    if layers is None:
        layers = get_peft_model_state_dict(policy.denoiser)
    if policy.prediction == "velocity":  # SD3 family: a transformer, whose loader reads peft's names
        type(policy.pipe).save_lora_weights(str(folder), transformer_lora_layers=layers, safe_serialization=True)
    else:  # StableDiffusionPipeline or StableDiffusionXLPipeline: a UNet
        type(policy.pipe).save_lora_weights(str(folder), unet_lora_layers=convert_state_dict_to_diffusers(layers),
                                            safe_serialization=True)
