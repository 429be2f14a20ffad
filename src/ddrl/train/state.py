"""What a checkpoint holds of a Trainer: the trained weights, the optimizer, the epoch and the
optimizer-step count (checkpoint.py writes them atomically), the EMA of the trained weights when
the run keeps one, the exported LoRA, the algorithm's own state (its `state_dict`: tensors in
algorithm.safetensors, values in state.json) and a copy of the run's config.yaml."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import (DamagedCheckpoint, list_checkpoints, load_checkpoint, load_optimizer, optimizer_tensors,
                         save_checkpoint)
from .export import save_lora
from .resume import run_config_text
from .sharding import full, full_state, like, shard_optimizer_state


def _save_tensors(tensors: dict, name: str):
    return lambda d: save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(d / name))


def save_trainer(tr, epoch: int) -> None:
    # whole tensors: under FSDP each is gathered from the shards, by every process in the same order
    weights = full_state(tr.trainable_state())
    opt_state = optimizer_tensors(tr.optimizer, full)
    ema = full_state(tr.ema) if tr.ema is not None else None
    lora = tr.lora_layers() if tr.cfg.model.lora else None
    tensors, values = tr.algorithm.state_dict()
    tensors = full_state(tensors)  # NFT's old policy, online DPO's reference: copies of the weights
    if tr.is_main:
        # a copy of the run's config, to name what changed if config.yaml is edited or damaged
        extra = {"config": lambda d: (d / "config.yaml").write_text(run_config_text(tr.cfg))}
        if lora is not None:
            extra["lora"] = lambda d: save_lora(tr.policy, d, lora)
        if ema is not None:
            extra["ema"] = _save_tensors(ema, "ema.safetensors")
        if tensors:
            extra["algorithm"] = _save_tensors(tensors, "algorithm.safetensors")
        save_checkpoint(tr.run_dir / "checkpoints", epoch, weights, opt_state,
                        {"optimizer_steps": tr.optimizer_steps, "algorithm": values}, extra,
                        keep=tr.cfg.run.keep_checkpoints)
    tr.accelerator.wait_for_everyone()


def load_trainer(tr, path: Path) -> None:
    weights, opt_tensors, groups, state = load_checkpoint(path)
    if "algorithm" not in state:
        raise ValueError(f"checkpoint {path} was written by an older ddrl (no algorithm state); "
                         "start a new run, or resume it with the ddrl that wrote it")
    params = dict(tr.policy.denoiser.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing or len(weights) != len(tr.params):
        raise ValueError(f"checkpoint {path} does not match this model's trainable weights "
                         f"({len(weights)} tensors saved, {len(tr.params)} trainable; e.g. {missing[:2]})")
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(like(v, params[k]))  # sharded as the parameter under FSDP
    device = tr.accelerator.device
    load_optimizer(tr.optimizer, {k: v.to(device) for k, v in opt_tensors.items()}, groups)
    shard_optimizer_state(tr.optimizer)
    tr.epoch, tr.optimizer_steps = state["epoch"], state["optimizer_steps"]
    if tr.ema is not None:
        tr.ema = {k: like(v, params[k]) for k, v in load_file(str(path / "ema.safetensors")).items()}
    algo_file = path / "algorithm.safetensors"
    tensors = load_file(str(algo_file)) if algo_file.exists() else {}
    # an algorithm's copies of the weights ("old.NAME", "reference.NAME") sharded as NAME under FSDP
    tensors = {k: like(v, params[k.partition(".")[2]]) if k.partition(".")[2] in params else v
               for k, v in tensors.items()}
    tr.algorithm.load_state_dict(tensors, state["algorithm"])


def load_latest_intact(tr) -> None:
    """Load the newest checkpoint that passes its hash manifest. A damaged one is renamed
    `damaged_epoch_N` (kept for inspection, never loaded or pruned) and the previous one used."""
    ckpts = list_checkpoints(tr.run_dir / "checkpoints")
    for ckpt in reversed(ckpts):
        try:
            load_trainer(tr, ckpt)
            return
        except DamagedCheckpoint as e:
            tr.accelerator.wait_for_everyone()
            if tr.is_main:
                ckpt.rename(ckpt.with_name(f"damaged_{ckpt.name}"))
                print(f"warning: {e}; moved it to damaged_{ckpt.name} and resuming from the checkpoint before it")
    if ckpts:
        raise ValueError(f"no intact checkpoint in {tr.run_dir / 'checkpoints'} (each was moved aside as "
                         "damaged_*); resuming again starts the run from epoch 0")
