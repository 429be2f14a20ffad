"""The memory estimate printed at the start of a run.

    weights      every module of the pipeline (denoiser, VAE, text encoders) as loaded, plus the
                 frozen reference copy that full fine-tuning with a KL keeps; under FSDP the
                 denoiser's shard (the blocks all-gathered during a forward are not counted)
    gradients    4 bytes per trainable parameter (fp32 master weights)
    optimizer    AdamW 8 bytes per trainable parameter (m, v); 8-bit AdamW 2 bytes (tensors under
                 4096 elements keep fp32 state); Adafactor (rows + columns) x 4 bytes per matrix
    EMA          4 bytes per trainable parameter when train.ema_decay > 0
    activations  measured, not modelled: one denoiser forward with gradients on one sample at the
                 run's latent size, counting the distinct tensors autograd saves for the backward
                 pass that are not parameters (under the run's autocast and gradient
                 checkpointing), times the samples of one training forward: train.batch_size x
                 train.timesteps_per_forward, doubled when the update re-scores with guidance.
                 Under gradient checkpointing the largest checkpointed unit's own activations are
                 added: its recomputation holds them during the backward pass.

The sum is what the update step holds at its peak; sampling without gradients needs less.
benchmarks/memory_estimate.py checks it against measured peak memory on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bounds import uses_guidance
from ..models.policy import Cond
from ..run.sharding import local

MiB = 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    ema: int
    activations_per_sample: int
    samples_per_forward: int
    recomputed_per_sample: int = 0

    @property
    def activations(self) -> int:
        return (self.activations_per_sample + self.recomputed_per_sample) * self.samples_per_forward

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.ema + self.activations

    def line(self) -> str:
        def f(b: int) -> str:
            return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / MiB:.1f} MiB"

        return (f"memory estimate per process: {f(self.total)} = weights {f(self.weights)} + gradients "
                f"{f(self.gradients)} + optimizer state {f(self.optimizer)}"
                + (f" + EMA {f(self.ema)}" if self.ema else "")
                + f" + activations {f(self.activations_per_sample)} per sample"
                + (f" (+ {f(self.recomputed_per_sample)} recomputed by checkpointing)" if self.recomputed_per_sample else "")
                + f" x {self.samples_per_forward} per forward")


def module_bytes(modules) -> int:
    """Bytes of the modules' parameters and buffers on this process (its shards under FSDP)."""
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            t = local(t)
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def optimizer_bytes(params: list[torch.Tensor], kind: str) -> int:
    if kind == "adamw8bit":  # bitsandbytes: 8-bit blocks (+ one fp32 absmax per 256) from 4096 elements
        return sum(2 * p.numel() + 8 * (p.numel() // 256 + 1) if p.numel() >= 4096 else 8 * p.numel()
                   for p in params)
    if kind == "adafactor":  # factored second moment, no first moment (beta1 None)
        return sum(4 * (p.shape[-2] + p.shape[-1]) if p.dim() >= 2 else 4 * p.numel() for p in params)
    return 8 * sum(p.numel() for p in params)


class SavedTensors:
    """Bytes of the distinct tensors autograd saves for backward while active, those sharing
    storage with `param_ptrs` (parameters) excluded."""

    def __init__(self, param_ptrs: set[int] = frozenset()):
        self.param_ptrs, self.saved = param_ptrs, {}

    def pack(self, t: torch.Tensor):
        if t.data_ptr() not in self.param_ptrs:
            self.saved[t.data_ptr()] = max(self.saved.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.saved.values())


def activation_bytes_per_sample(policy, sampler, cond: Cond, uncond: Cond, autocast) -> tuple[int, int]:
    """(kept, recomputed): one forward with gradients on one sample, counting what autograd keeps
    for the backward pass; and, under gradient checkpointing, the largest checkpointed unit's own
    activations, which its recomputation holds during the backward pass (each unit is run once
    more without checkpointing to count them)."""
    from ..models.policy import guided_prediction

    param_ptrs = {local(p).data_ptr() for m in _modules(policy) for p in m.parameters()}
    recomputed = [0]
    patched = [m for m in policy.denoiser.modules() if getattr(m, "gradient_checkpointing", False)
               and hasattr(m, "_gradient_checkpointing_func")]

    def counting(checkpointed):
        def call(unit, *args):
            with SavedTensors(param_ptrs) as inner:
                unit(*args)
            recomputed[0] = max(recomputed[0], inner.total)
            return checkpointed(unit, *args)
        return call

    originals = [m._gradient_checkpointing_func for m in patched]
    for m, f in zip(patched, originals):
        m._gradient_checkpointing_func = counting(f)
    x = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0)).to(policy.device)
    t = sampler.model_time(torch.zeros(1, dtype=torch.long)).to(policy.device)
    try:
        with SavedTensors(param_ptrs) as kept, autocast():
            out = guided_prediction(policy, x, t, cond[:1], uncond, 1.0)
        del out
    finally:
        for m, f in zip(patched, originals):
            m._gradient_checkpointing_func = f
    return kept.total, recomputed[0]


def _modules(policy) -> list[torch.nn.Module]:
    comps = getattr(policy.pipe, "components", {}) or {}
    mods = [m for m in comps.values() if isinstance(m, torch.nn.Module)]
    return mods if any(m is policy.denoiser for m in mods) else mods + [policy.denoiser]


def estimate(cfg, policy, sampler, params: list, frozen_reference, cond: Cond, uncond: Cond, autocast) -> MemoryEstimate:
    """The run's memory: `params` trained, a `frozen_reference` copy (or None), one sample's activations."""
    t = cfg.train
    weights = module_bytes(_modules(policy))
    if frozen_reference is not None:
        weights += module_bytes([frozen_reference])
    shards = [local(p.detach()) for p in params]
    n = sum(p.numel() for p in shards)
    guided = t.rescore_with_guidance and uses_guidance(cfg.sample.guidance_scale)
    kept, recomputed = activation_bytes_per_sample(policy, sampler, cond, uncond, autocast)
    return MemoryEstimate(
        weights=weights, gradients=4 * n, optimizer=optimizer_bytes(shards, t.optimizer),
        ema=4 * n if t.ema_decay > 0 else 0, activations_per_sample=kept, recomputed_per_sample=recomputed,
        samples_per_forward=t.batch_size * t.timesteps_per_forward * (2 if guided else 1))
