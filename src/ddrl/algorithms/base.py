"""The contract between the training loop and an algorithm.

The loop (train/loop.py) samples rollouts, gathers rewards and calls, every epoch,

    signal = algorithm.signal(EpochRewards, metrics)     # advantages, weights or win rates, (N,)
    metrics |= algorithm.update(Rollouts, signal[local], epoch)

through a typed `Context` of what it shares (policy, sampler, conditions, optimizer step, keyed
random generators, gathering across processes). It never asks an algorithm's name: traits it
needs (sampling weights, whether to keep the sampling graph, a pairwise judge) are methods and
attributes here, with defaults for the algorithms that do not use them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
from torch import Tensor

from ..models.policy import Cond, Policy
from ..rewards import RewardFn
from ..sampling import DDIMSampler, FlowSampler

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class Rollouts:
    """One epoch's samples on this process, in global-index order."""

    latents: Tensor  # (n, T+1, C, H, W) x_T ... x_0
    log_probs: Tensor  # (n, T) as sampled, detached; 0 at deterministic steps
    prompt_ids: Tensor  # (n,) index into the training prompts
    global_idx: Tensor  # (n,)
    graph_log_probs: list[Tensor] = field(default_factory=list)  # when sampled with grad: (b, T) per batch


@dataclass(frozen=True)
class EpochRewards:
    """The epoch's rewards from every process, ordered by global sample index."""

    rewards: Tensor  # (N,)
    prompt_ids: Tensor  # (N,)
    prompts: list[str]  # (N,) the prompt of each sample
    groups: Tensor  # (N,) samples with equal labels share a prompt (sample.images_per_prompt consecutive)


@dataclass(frozen=True)
class Context:
    """What the loop lends an algorithm."""

    cfg: Config
    policy: Policy
    sampler: DDIMSampler | FlowSampler
    cond_table: Cond  # the encoded training prompts, indexed by prompt id
    uncond: Cond  # the empty prompt, batch 1
    autocast: Callable[[], contextlib.AbstractContextManager]  # mixed precision for network passes
    reference: Callable[[], contextlib.AbstractContextManager]  # the KL reference: LoRA off or a frozen copy
    optimizer_step: Callable[[], float]  # average gradients over processes, clip, step; returns the norm
    optimizer_steps: Callable[[], int]  # optimizer steps taken so far in the run
    generator: Callable[..., torch.Generator]  # generator(epoch, *key): a draw keyed by its purpose
    gather: Callable[[Tensor], Tensor]  # (n,) per local sample -> (N,) of all processes, global order
    trainable_state: Callable[[], dict[str, Tensor]]  # the trained weights (live, detached)
    swapped: Callable[[dict[str, Tensor]], contextlib.AbstractContextManager]  # these weights for a while
    num_processes: int = 1
    process_index: int = 0
    is_main: bool = True
    any_process: Callable[[bool], bool] = bool  # whether a flag is true on any process; every process must call it
    # for algorithms that sample and score themselves (reward backpropagation):
    reward: RewardFn | None = None
    plan: Callable[[int], tuple[Tensor, Tensor]] | None = None  # epoch -> this process's (global indices, prompt ids)
    prompts_of: Callable[[Tensor], tuple[list[str], list[dict]]] | None = None  # prompt ids -> (prompts, metadata)


class Algorithm:
    """Defaults of the optional parts; each algorithm module overrides what it uses."""

    prediction: ClassVar[str | None]  # "epsilon" (DDIM samplers), "velocity" (flow samplers), None: either
    uses_pairwise_judge: ClassVar[bool] = False  # reads reward.pairwise

    @classmethod
    def validate(cls, cfg: Config) -> None:
        """Raise ConfigError for settings this algorithm cannot run."""

    @classmethod
    def trained_steps(cls, cfg: Config) -> int:
        """Denoising steps trained per sample per pass (printed at start)."""
        return max(1, int(cfg.stochastic_steps * cfg.train.timestep_fraction))

    @classmethod
    def uses_rollouts(cls, cfg: Config) -> bool:
        """Whether epochs sample and score rollouts; an offline algorithm trains on its own data in
        `train_epoch` instead."""
        return True

    @classmethod
    def needs_reference(cls, cfg: Config) -> bool:
        """Whether the reference model is used (under full fine-tuning it is a frozen copy)."""
        return cfg.train.kl_coef > 0

    @classmethod
    def keeps_sampling_graph(cls, cfg: Config) -> bool:
        """Sample with grad and train on that graph (no second forward)."""
        return False

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        """The weights rollouts are sampled with (the trained ones unless overridden)."""
        return contextlib.nullcontext()

    def observe(self, images: Tensor, prompts: list[str], global_idx: Tensor) -> None:
        """Each sampling batch's decoded images, for algorithms that judge them themselves."""

    def signal(self, batch: EpochRewards, metrics: dict[str, float]) -> Tensor:
        raise NotImplementedError

    def update(self, ro: Rollouts, signal: Tensor, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """An offline algorithm's epoch (`uses_rollouts` false): its updates and their metrics."""
        raise NotImplementedError

    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """(tensors, JSON-able values) a checkpoint keeps."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict) -> None:
        pass


def minibatches(ctx: Context, ro: Rollouts, epoch: int, keep: Tensor | None = None
                ) -> Iterator[tuple[int, int, Tensor, list[torch.Generator]]]:
    """(pass, minibatch index within the pass, rows of `ro`, a generator per row) over
    `num_inner_epochs` passes: the first in sampling order (so processes' minibatches stay slices
    of one global minibatch), later ones shuffled. Rows outside `keep` are dropped and the rest
    re-batched into the same number of minibatches, each a mean over its own rows. A row's
    generator is keyed by (epoch, pass, global index): draws do not depend on batch sizes or the
    number of processes."""
    cfg = ctx.cfg
    n = len(ro.latents)
    for inner in range(cfg.train.num_inner_epochs):
        order = torch.arange(n) if inner == 0 else torch.randperm(n, generator=ctx.generator(epoch, inner, -1))
        if keep is not None:
            order = order[keep[order].cpu()]
        for mb, rows in enumerate(torch.tensor_split(order, cfg.minibatches_per_epoch)):
            yield inner, mb, rows, [ctx.generator(epoch, inner, int(ro.global_idx[i])) for i in rows]


def mean_stats(stats: dict[str, list[float]]) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in stats.items() if v}
