"""What a run trains: a LoRA adapter or every weight of the denoiser, the frozen reference copy
full fine-tuning keeps for a KL term, and gradient checkpointing."""

from __future__ import annotations

import copy

import torch

from ..models.policy import ModelError


def make_trainable(policy, cfg, needs_reference: bool) -> tuple[list[torch.nn.Parameter], torch.nn.Module | None]:
    """(the trained parameters, the frozen reference denoiser or None), set up in place on
    `policy.denoiser`. With LoRA the reference is the same network with the adapter off."""
    net, m = policy.denoiser, cfg.model
    frozen = None
    if m.lora:
        from peft import LoraConfig

        lora = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, init_lora_weights="gaussian",
                          target_modules=policy.lora_target_modules())
        with torch.random.fork_rng(devices=[]):  # LoRA A init is random: seed it, leave the global RNG alone
            torch.manual_seed(cfg.run.seed)
            net.add_adapter(lora)
    else:
        if needs_reference:
            frozen = copy.deepcopy(net).requires_grad_(False)
        net.requires_grad_(True)
    if m.gradient_checkpointing:
        if not getattr(net, "_supports_gradient_checkpointing", False):
            raise ModelError(f"model.gradient_checkpointing: {type(net).__name__} does not support it")
        net.enable_gradient_checkpointing()  # non-reentrant torch.utils.checkpoint per block
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ModelError("no trainable parameters: LoRA found no target modules in the denoiser")
    return params, frozen
