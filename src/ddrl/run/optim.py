"""Optimizers: AdamW (or bitsandbytes' 8-bit AdamW) or Adafactor, and gradients averaged across
processes before each step (run/step.py takes the step itself)."""

from __future__ import annotations

import torch


def make_optimizer(params: list[torch.nn.Parameter], kind: str, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """`kind` adamw, adamw8bit or adafactor."""
    if kind == "adafactor":  # SalesforceAIResearch/DiffusionDPO's SDXL settings
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=weight_decay, clip_threshold=1.0,
                         scale_parameter=False, relative_step=False)
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("train.optimizer adamw8bit needs bitsandbytes: pip install 'ddrl[scale]' "
                              "(or pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


def average_gradients(params: list[torch.nn.Parameter], accelerator) -> None:
    """Each parameter's gradient replaced by its mean over processes, in one all-reduce."""
    if accelerator.num_processes == 1:
        return
    flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), device=p.device)
                      for p in params])
    flat = accelerator.reduce(flat, reduction="mean")
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
