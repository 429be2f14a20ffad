"""The contract between the image loop and an algorithm.

An algorithm is a class with its own options dataclass (`Options`, with its config section) and
is constructed with those options and a typed `Context` of what the loop lends it. Each epoch the
loop calls

    metrics = algorithm.train_epoch(epoch)

and checkpoints `state_dict()` / `load_state_dict(...)`. It never asks an algorithm's name or
traits. Rollout algorithms (`RolloutAlgorithm`) call `ctx.collect(epoch, ...)`, which samples,
scores and gathers the epoch, and then give a per-sample signal (advantages, weights, win rates)
and an update; offline algorithms (DPO on pairs) and self-sampling ones (reward
backpropagation) simply do not call it. Every algorithm describes its epoch in one line
(`describe`), for the run header and the report.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import Tensor

from ..models.policy import Cond, Policy
from ..options import NoOptions
from ..rewards import RewardFn
from ..run.step import Accumulation
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


@dataclass
class Collected:
    """What `Context.collect` returns: this process's rollouts, every process's rewards, and the
    epoch's reward and timing metrics."""

    rollouts: Rollouts
    rewards: EpochRewards
    metrics: dict[str, float]


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
    generator: Callable[..., torch.Generator]  # generator(epoch, *key, purpose=...): a keyed draw
    gather: Callable[[Tensor], Tensor]  # (n,) per local sample -> (N,) of all processes, global order
    trainable_state: Callable[[], dict[str, Tensor]]  # the trained weights (live, detached)
    swapped: Callable[[dict[str, Tensor]], contextlib.AbstractContextManager]  # these weights for a while
    collect: Callable[..., Collected]  # collect(epoch, sampling_weights=, with_graph=, observe=)
    reward: RewardFn
    plan: Callable[[int], tuple[Tensor, Tensor]]  # epoch -> this process's (global indices, prompt ids)
    prompts_of: Callable[[Tensor], tuple[list[str], list[dict]]]  # prompt ids -> (prompts, metadata)
    num_processes: int = 1
    process_index: int = 0
    is_main: bool = True
    any_process: Callable[[bool], bool] = bool  # whether a flag is true on any process; every process must call it
    after_minibatch: Callable[[], None] = lambda: None  # the end of a training minibatch (train.ema_per minibatch)

    def accumulation(self, stats: dict[str, list[float]]) -> Accumulation:
        """The run's accumulate-and-step helper over `train.gradient_accumulation_steps`."""
        return Accumulation(self.optimizer_step, self.cfg.train.gradient_accumulation_steps, stats,
                            after_minibatch=self.after_minibatch)


class Algorithm:
    """An algorithm's class-level description, and defaults of its optional parts."""

    Options: ClassVar[type] = NoOptions  # its options dataclass; Options.section names its config section
    prediction: ClassVar[str | None] = None  # "epsilon" (DDIM samplers), "velocity" (flow samplers), None: either
    uses_pairwise_judge: ClassVar[bool] = False  # reads reward.pairwise

    @classmethod
    def check(cls, cfg: Config) -> None:
        """The checks every algorithm gets, then its own `validate`."""
        from ..config import ConfigError

        if cfg.reward.pairwise and not cls.uses_pairwise_judge:
            from .registry import ALGORITHMS

            users = [n for n, a in ALGORITHMS.items() if a.uses_pairwise_judge]
            raise ConfigError(f"reward.pairwise is read by {', '.join(users)} only; train.algorithm is "
                              f"{cfg.train.algorithm}")
        cls.validate(cfg)

    @classmethod
    def validate(cls, cfg: Config) -> None:
        """Raise ConfigError for settings this algorithm cannot run (its options are cfg.options)."""

    @classmethod
    def trained_steps(cls, cfg: Config) -> int:
        """Denoising steps trained per sample per pass."""
        return max(1, int(cfg.stochastic_steps * cfg.train.timestep_fraction))

    @classmethod
    def needs_reference(cls, cfg: Config) -> bool:
        """Whether the reference model is used (under full fine-tuning it is a frozen copy)."""
        return cfg.train.kl_coef > 0

    @classmethod
    def describe(cls, cfg: Config, num_processes: int = 1) -> str:
        """What an epoch trains on, one line for the run header and the report."""
        s, t = cfg.sample, cfg.train
        return (f"{cfg.global_samples_per_epoch(num_processes)} samples per epoch ({num_processes} process(es) x "
                f"{s.num_batches_per_epoch} batches x {s.batch_size}), {s.num_steps} steps each, "
                f"{cls.trained_steps(cfg)} trained; {cfg.optimizer_steps_per_epoch} optimizer step(s) of "
                f"{t.batch_size * t.gradient_accumulation_steps * num_processes} samples")

    def __init__(self, options: Any, ctx: Context):
        self.options, self.ctx = options, ctx

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch: its updates, and their metrics."""
        raise NotImplementedError

    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """(tensors, JSON-able values) a checkpoint keeps."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict) -> None:
        pass


class RolloutAlgorithm(Algorithm):
    """An algorithm trained on each epoch's rollouts: collect, a per-sample signal, an update."""

    @classmethod
    def check(cls, cfg: Config) -> None:
        """The shared checks, the epoch's sizes a rollout epoch needs, then the algorithm's own."""
        from ..config import ConfigError

        s, t, n = cfg.sample, cfg.train, cfg.samples_per_epoch
        if n % s.images_per_prompt:  # a prompt's images (a GRPO group) all belong to one epoch
            raise ConfigError(f"sample.images_per_prompt ({s.images_per_prompt}) must divide the samples per "
                              f"epoch per process: sample.batch_size {s.batch_size} x sample.num_batches_per_epoch "
                              f"{s.num_batches_per_epoch} = {n}")
        if n % t.batch_size:
            raise ConfigError(f"train.batch_size ({t.batch_size}) must divide the samples per epoch per process: "
                              f"sample.batch_size {s.batch_size} x sample.num_batches_per_epoch "
                              f"{s.num_batches_per_epoch} = {n}")
        if cfg.minibatches_per_epoch % t.gradient_accumulation_steps:
            raise ConfigError(f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps}) must divide "
                              f"the minibatches per epoch: {n} samples / train.batch_size {t.batch_size} "
                              f"= {cfg.minibatches_per_epoch}")
        super().check(cfg)

    @classmethod
    def keeps_sampling_graph(cls, cfg: Config) -> bool:
        """Sample with grad and train on that graph (no second forward)."""
        return False

    @classmethod
    def describe(cls, cfg: Config, num_processes: int = 1) -> str:
        line = super().describe(cfg, num_processes)
        if cls.keeps_sampling_graph(cfg):
            line += "; every update is on-policy: training reuses the sampling pass (no second forward)"
        return line

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        """The weights rollouts are sampled with (the trained ones unless overridden)."""
        return contextlib.nullcontext()

    def observe(self, images: Tensor, prompts: list[str], global_idx: Tensor) -> None:
        """Each sampling batch's decoded images, for algorithms that judge them themselves."""

    rollout_time = None  # t -> the time the network sees in rollouts (None: the sampler's own)

    def signal(self, batch: EpochRewards, metrics: dict[str, float]) -> Tensor:
        raise NotImplementedError

    def update(self, ro: Rollouts, signal: Tensor, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def train_epoch(self, epoch: int) -> dict[str, float]:
        t0 = time.perf_counter()
        got = self.ctx.collect(epoch, sampling_weights=self.sampling_weights,
                               with_graph=self.keeps_sampling_graph(self.ctx.cfg), observe=self.observe,
                               model_time=self.rollout_time)
        t1 = time.perf_counter()
        ro, metrics = got.rollouts, got.metrics
        per_sample = self.signal(got.rewards, metrics)[ro.global_idx]  # this process's samples
        metrics |= self.update(ro, per_sample.to(ro.latents.device), epoch)
        t2 = time.perf_counter()
        return metrics | {"perf/train_s": t2 - t1, "perf/samples_per_s": len(got.rewards.rewards) / (t2 - t0)}


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
