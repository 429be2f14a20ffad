"""What a checkpoint holds of an image run: the trained weights, the optimizer, the epoch and the
optimizer-step count (run/checkpoint.py writes them atomically), the EMA of the trained weights
when the run keeps one, the exported LoRA, the algorithm's own state (its `state_dict`: tensors
in algorithm.safetensors, values in state.json) and a copy of the run's config.yaml."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..run.checkpoint import load_checkpoint, load_optimizer, optimizer_tensors, save_checkpoint
from ..run.sharding import full, full_state, like, shard_optimizer_state
from ..run.step import OptimizerStep
from .export import save_lora


def _save_tensors(tensors: dict, name: str):
    return lambda d: save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(d / name))


def save_state(ckpt_dir: Path, epoch: int, *, weights: dict, step: OptimizerStep, algorithm, config_text: str,
               is_main: bool, keep: int, lora: dict | None = None, policy=None) -> None:
    """Checkpoint `epoch` (every process calls it: under FSDP the tensors are gathered from the
    shards, by every process in the same order; the main process writes)."""
    weights = full_state(weights)
    opt_state = optimizer_tensors(step.optimizer, full)
    ema = full_state(step.ema) if step.ema is not None else None
    tensors, values = algorithm.state_dict()
    tensors = full_state(tensors)  # NFT's old policy, online DPO's reference: copies of the weights
    if not is_main:
        return
    # a copy of the run's config, to name what changed if config.yaml is edited or damaged
    extra = {"config": lambda d: (d / "config.yaml").write_text(config_text)}
    if lora is not None:
        extra["lora"] = lambda d: save_lora(policy, d, lora)
    if ema is not None:
        extra["ema"] = _save_tensors(ema, "ema.safetensors")
    if tensors:
        extra["algorithm"] = _save_tensors(tensors, "algorithm.safetensors")
    save_checkpoint(ckpt_dir, epoch, weights, opt_state, {"optimizer_steps": step.steps, "algorithm": values},
                    extra, keep=keep)


def load_state(path: Path, *, params: dict[str, torch.nn.Parameter], step: OptimizerStep, algorithm, device) -> int:
    """Load checkpoint `path` into the trained `params` (by name), the optimizer step and the
    algorithm; returns the epochs it had completed."""
    weights, opt_tensors, groups, state = load_checkpoint(path)
    if "algorithm" not in state:
        raise ValueError(f"checkpoint {path} was written by an older ddrl (no algorithm state); "
                         "start a new run, or resume it with the ddrl that wrote it")
    missing = [k for k in weights if k not in params]
    if missing or len(weights) != len(step.params):
        raise ValueError(f"checkpoint {path} does not match this model's trainable weights "
                         f"({len(weights)} tensors saved, {len(step.params)} trainable; e.g. {missing[:2]})")
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(like(v, params[k]))  # sharded as the parameter under FSDP
    load_optimizer(step.optimizer, {k: v.to(device) for k, v in opt_tensors.items()}, groups)
    shard_optimizer_state(step.optimizer)
    step.steps = state["optimizer_steps"]
    if step.ema is not None:
        step.ema = {k: like(v, params[k]) for k, v in load_file(str(path / "ema.safetensors")).items()}
    algo_file = path / "algorithm.safetensors"
    tensors = load_file(str(algo_file)) if algo_file.exists() else {}
    # an algorithm's copies of the weights ("old.NAME", "reference.NAME") sharded as NAME under FSDP
    tensors = {k: like(v, params[k.partition(".")[2]]) if k.partition(".")[2] in params else v
               for k, v in tensors.items()}
    algorithm.load_state_dict(tensors, state["algorithm"])
    return state["epoch"]
