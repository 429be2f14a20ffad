"""What a checkpoint holds of a Trainer: the trained weights, the optimizer, the per-prompt reward
buffers and the epoch (checkpoint.py writes them atomically), plus the exported LoRA and, when the
run has them, DiffusionNFT's old policy and the EMA of the trained weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import load_checkpoint, load_optimizer, save_checkpoint
from .export import save_lora


def save_trainer(tr, epoch: int) -> None:
    if tr.is_main:
        extra = {}
        if tr.cfg.model.lora:
            def lora(d):
                with tr.eval_weights():
                    save_lora(tr.policy, d)
            extra["lora"] = lora
        for name, weights in (("nft_old", tr.nft_old), ("ema", tr.ema)):
            if weights is not None:
                extra[name] = lambda d, name=name, weights=weights: save_file(
                    {k: v.contiguous().cpu() for k, v in weights.items()}, str(d / f"{name}.safetensors"))
        save_checkpoint(tr.run_dir / "checkpoints", epoch, tr.trainable_state(), tr.optimizer,
                        {"prompt_buffers": tr.prompt_buffers}, extra, keep=tr.cfg.run.keep_checkpoints)
    tr.accelerator.wait_for_everyone()


def load_trainer(tr, path: Path) -> None:
    weights, opt_tensors, groups, state = load_checkpoint(path)
    params = dict(tr.policy.denoiser.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing or len(weights) != len(tr.params):
        raise ValueError(f"checkpoint {path} does not match this model's trainable weights "
                         f"({len(weights)} tensors saved, {len(tr.params)} trainable; e.g. {missing[:2]})")
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(v)
    device = tr.accelerator.device
    load_optimizer(tr.optimizer, {k: v.to(device) for k, v in opt_tensors.items()}, groups)
    tr.prompt_buffers = state["prompt_buffers"]
    tr.epoch = state["epoch"]
    if tr.nft_old is not None:
        tr.nft_old = {k: v.to(device) for k, v in load_file(str(path / "nft_old.safetensors")).items()}
    if tr.ema is not None:
        tr.ema = {k: v.to(device) for k, v in load_file(str(path / "ema.safetensors")).items()}
