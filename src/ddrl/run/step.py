"""The optimizer step as an object, and the one accumulate-and-step helper every update uses.

`OptimizerStep` owns one parameter group and its optimizer: gradients averaged across processes,
clipped to a max norm, a step whose gradient norm is non-finite stopped or skipped, linear
warm-up of the learning rate, and an EMA of the weights. A run holds one per group (a policy; an
actor and a critic).

`Accumulation` owns the gradient-accumulation scale: each minibatch's loss is a sum over `count`
terms, back-propagated as sum / (count x accumulation steps), so every optimizer step descends the
mean over its window; the step runs after every `every`-th minibatch, and its gradient norm is
kept in the statistics as train/grad_norm.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch import Tensor

from .ema import ema_step_
from .sharding import full


class OptimizerStep:
    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, *, lr: float,
                 max_grad_norm: float, warmup_steps: int = 0, skip_nonfinite: bool = False,
                 on_nonfinite: Callable[[float], Exception] | None = None,
                 average: Callable[[list[torch.nn.Parameter]], None] | None = None,
                 named: Callable[[], dict[str, Tensor]] | None = None, ema_decay: float = 0.0,
                 ema_interval: int = 1, ema_per: str = "step"):
        """`average(params)` averages gradients across processes (None: one process, or FSDP, which
        averages in backward); `on_nonfinite(norm)` is the error raised for a non-finite norm
        unless `skip_nonfinite`; `named()` gives the live weights the EMA follows. `ema_per` "step"
        checks the EMA after each optimizer step (DiffusionNFT); "minibatch" after each training
        minibatch (`after_minibatch`) with the steps taken so far, as flow_grpo's GRPO script, so
        under gradient accumulation one step count is checked once per minibatch of its window."""
        self.params, self.optimizer, self.lr = params, optimizer, lr
        self.max_grad_norm, self.warmup_steps = max_grad_norm, warmup_steps
        self.skip_nonfinite, self.on_nonfinite, self.average = skip_nonfinite, on_nonfinite, average
        self.named, self.ema_decay, self.ema_interval, self.ema_per = named, ema_decay, ema_interval, ema_per
        self.ema = {k: v.clone() for k, v in named().items()} if ema_decay > 0 and named is not None else None
        self.steps = 0  # optimizer steps taken in the run (checkpointed)
        self.skipped = 0  # steps skipped since the counter was last reset

    def __call__(self) -> float:
        """Average, clip, step (or skip) and zero the gradients; returns the gradient norm."""
        if self.average is not None:
            self.average(self.params)
        norm = full(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        if not torch.isfinite(norm):
            if not self.skip_nonfinite and self.on_nonfinite is not None:
                raise self.on_nonfinite(float(norm))
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return float(norm)
        if self.warmup_steps:  # diffusers' constant_with_warmup: step k (from 0) at lr * min(1, k / warm-up)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * min(1.0, self.steps / self.warmup_steps)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        if self.ema is not None and self.ema_per == "step":
            ema_step_(self.ema, self.named(), self.steps, self.ema_decay, self.ema_interval)
        return float(norm)

    def after_minibatch(self) -> None:
        """The end of a training minibatch (after its optimizer step, if it took one)."""
        if self.ema is not None and self.ema_per == "minibatch":
            ema_step_(self.ema, self.named(), self.steps, self.ema_decay, self.ema_interval)


class Accumulation:
    """Backward passes scaled for gradient accumulation, and the optimizer step every `every`
    minibatches (see the module docstring)."""

    def __init__(self, step: Callable[[], float], every: int, stats: dict[str, list[float]] | None = None,
                 after_minibatch: Callable[[], None] = lambda: None):
        self.step, self.every, self.after_minibatch = step, every, after_minibatch
        self.stats = stats if stats is not None else defaultdict(list)

    def backward(self, loss: Tensor, count: int = 1) -> None:
        """Back-propagate `loss`, a sum over `count` terms of this minibatch, as its share of the
        mean over the accumulation window."""
        (loss / (count * self.every)).backward()

    def end_minibatch(self, index: int) -> None:
        """After minibatch `index` (from 0 in the epoch): step when a window is complete."""
        if (index + 1) % self.every == 0:
            self.stats["train/grad_norm"].append(self.step())
        self.after_minibatch()
