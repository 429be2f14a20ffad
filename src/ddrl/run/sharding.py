"""Sharded training: FSDP2 through accelerate (`accelerate launch --config_file
examples/accelerate/fsdp2.yaml`).

Under FSDP2 the denoiser's parameters, gradients and optimizer state are DTensors, each process
holding a shard; a forward all-gathers each block's parameters and the backward pass
reduce-scatters (averages) the gradients, so ddrl's own gradient averaging is skipped. Every
forward is a collective: all processes must run the same forwards, so under sharding the
evaluation and the grids run on every process (only the main process writes them). Checkpoints
hold full tensors, gathered from the shards, so a sharded run resumes on any number of processes
and its LoRA exports as usual.

DeepSpeed is refused: its engine owns the backward pass and the optimizer step, which ddrl's
algorithms call themselves.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor


class ShardingError(ValueError):
    """A distributed setup ddrl cannot train under; the message says what to use."""


NO_DEEPSPEED = ("DeepSpeed is not supported: its engine owns the backward pass and the optimizer step, which ddrl's "
                "algorithms run themselves. Shard with FSDP2 instead: accelerate launch --config_file "
                "examples/accelerate/fsdp2.yaml -m ddrl.cli train ...")
NO_FSDP1 = "FSDP1 is not supported; set fsdp_version: 2 in the accelerate config (examples/accelerate/fsdp2.yaml)"


def _flag(environ, name: str) -> bool:
    return environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def check_launch(environ=os.environ) -> None:
    """The refusals of `is_sharded`, read from the environment that `accelerate launch` gives each
    process (ACCELERATE_USE_DEEPSPEED, ACCELERATE_USE_FSDP and FSDP_VERSION, which accelerate's
    plugins read too), so they come before an Accelerator is built: building one under a
    DeepSpeed config without deepspeed installed, or under FSDP1, fails inside accelerate."""
    if _flag(environ, "ACCELERATE_USE_DEEPSPEED"):
        raise ShardingError(NO_DEEPSPEED)
    if _flag(environ, "ACCELERATE_USE_FSDP") and environ.get("FSDP_VERSION", "1").strip() != "2":
        raise ShardingError(NO_FSDP1)


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ShardingError(NO_DEEPSPEED)
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ShardingError(NO_FSDP1)
    return accelerator.distributed_type == DistributedType.FSDP


def shard(accelerator, net: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """accelerate's FSDP2: the auto-wrap policy of the accelerate config shards the chosen blocks
    and then the root, in place, and the optimizer is switched to the sharded parameters."""
    return accelerator.prepare(net, optimizer)


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: Tensor) -> Tensor:
    """The whole tensor (all-gathered: every process must call it, in the same order)."""
    return t.full_tensor() if is_dtensor(t) else t


def local(t: Tensor) -> Tensor:
    """This process's shard (the tensor itself when not sharded)."""
    return t.to_local() if is_dtensor(t) else t


def like(value: Tensor, ref: Tensor) -> Tensor:
    """A whole tensor laid out as `ref`: sharded the same way when `ref` is a DTensor."""
    if not is_dtensor(ref):
        return value.to(ref.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)


def full_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: full(v) for k, v in tensors.items()}


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After `load_state_dict` of whole tensors: each parameter's state tensors of the parameter's
    shape laid out as the (sharded) parameter."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and not is_dtensor(v) and v.shape == p.shape and is_dtensor(p):
                    optimizer.state[p][k] = like(v, p)
