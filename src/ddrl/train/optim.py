"""The optimizer of a run: AdamW (or bitsandbytes' 8-bit AdamW) or Adafactor, the learning rate's warm-up, and gradients averaged
across processes before each step."""

from __future__ import annotations

import torch


def make_optimizer(params: list[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adafactor":  # SalesforceAIResearch/DiffusionDPO's SDXL settings
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=cfg.learning_rate, weight_decay=t.weight_decay, clip_threshold=1.0,
                         scale_parameter=False, relative_step=False)
    if t.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("train.optimizer adamw8bit needs bitsandbytes: pip install 'ddrl[scale]' "
                              "(or pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=t.weight_decay,
                                   betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=t.weight_decay,
                             betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)


def set_warmup_lr(optimizer: torch.optim.Optimizer, cfg, steps_taken: int) -> None:
    """diffusers' constant_with_warmup: optimizer step k (from 0) uses lr * min(1, k / warm-up)."""
    if cfg.train.lr_warmup_steps:
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate * min(1.0, steps_taken / cfg.train.lr_warmup_steps)


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
