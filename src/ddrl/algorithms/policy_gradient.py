"""The policy-gradient update DDPO and Flow-GRPO share (Black et al. 2023, Algorithm 1; Liu et al.
2025): re-score the stored denoising steps under the current policy, optionally add a KL term to
the reference model, and descend. What differs between them comes in as functions: which steps
each sample trains, the per-step loss, the KL, and which rows are kept.

Loss scale: each optimizer step minimises the mean over its minibatches' kept rows and trained
steps of the per-(sample, step) losses, as ddpo-pytorch and flow_grpo do through accelerate's
gradient accumulation (which divides by accumulation steps x trained steps).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch import Tensor

from ..bounds import uses_guidance
from ..models.policy import guided_prediction
from ..sampling import Step
from ..run.step import Accumulation
from .base import Context, Rollouts, mean_stats, minibatches

StepLoss = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]  # (log_prob, old, adv)
StepKL = Callable[[Step, Tensor, Tensor], Tensor]  # (step, mean under the reference, step indices) -> (B,)


def rescore_update(ctx: Context, ro: Rollouts, adv: Tensor, epoch: int, *, steps_of: Callable[[torch.Generator], Tensor],
                   loss: StepLoss, kl: StepKL | None, keep: Tensor | None = None) -> dict[str, float]:
    """`steps_of(row's generator)` gives the (k,) steps a row trains; `keep` (n,) the rows trained
    (the others are dropped and the rest re-batched)."""
    cfg, t = ctx.cfg, ctx.cfg.train
    policy, sampler = ctx.policy, ctx.sampler
    w = cfg.sample.guidance_scale if t.rescore_with_guidance else 1.0
    stats: dict[str, list[float]] = defaultdict(list)
    acc = ctx.accumulation(stats)
    for inner, mb, rows, gens in minibatches(ctx, ro, epoch, keep):
        if len(rows):
            steps = torch.stack([steps_of(g) for g in gens])  # (B, k)
            k = steps.shape[1]
            for j0 in range(0, k, t.timesteps_per_forward):
                js = steps[:, j0:j0 + t.timesteps_per_forward]  # (B, k')
                r, s = rows[:, None].expand_as(js).flatten(), js.flatten()
                x_t, x_prev = ro.latents[r, s], ro.latents[r, s + 1]
                cond, uncond = ctx.cond_table[ro.prompt_ids[r]], ctx.uncond.repeat(len(r))
                time = sampler.model_time(s).to(x_t.device)
                with ctx.autocast():
                    out = guided_prediction(policy, x_t, time, cond, uncond, w)
                step = sampler.step(s, x_t, out, x_prev=x_prev)
                old = ro.log_probs[r, s]
                if inner == 0 and mb == 0:  # before any update: the sampler's re-scoring gap
                    stats["train/logprob_gap"].append(float((step.log_prob.detach() - old).abs().max()))
                terms, st = loss(step.log_prob, old, adv[r])
                if kl is not None and t.kl_coef > 0:
                    with torch.no_grad(), ctx.reference(), ctx.autocast():
                        out_ref = guided_prediction(policy, x_t, time, cond, uncond, w)
                    mean_ref = sampler.step(s, x_t, out_ref, x_prev=x_prev).mean
                    kl_terms = kl(step, mean_ref, s)
                    terms = terms + t.kl_coef * kl_terms
                    stats["train/kl_ref"].append(float(kl_terms.detach().mean()))
                acc.backward(terms.sum(), len(rows) * k)
                for key, v in st.items():
                    stats[f"train/{key}"].append(float(v))
                stats["train/loss"].append(float(terms.detach().mean()))
        acc.end_minibatch(mb)
    out = mean_stats(stats)
    if stats["train/logprob_gap"]:
        out["train/logprob_gap"] = max(stats["train/logprob_gap"])
    return out


def single_pass_update(ctx: Context, ro: Rollouts, adv: Tensor, loss: StepLoss) -> dict[str, float]:
    """The same update when it is entirely on-policy (one optimizer step over all steps of all
    samples, re-scored as sampled): the log-probs kept with their graph from sampling are the
    ones a re-score would give, the ratio is exactly 1, and the IS and SF gradients both equal
    -A grad log p. So backward through the sampling pass instead of running it again."""
    n, T = ro.log_probs.shape
    stats: dict[str, list[float]] = defaultdict(list)
    acc = Accumulation(ctx.optimizer_step, 1, stats, ctx.after_minibatch)  # one optimizer step over the epoch
    start = 0
    for lp in ro.graph_log_probs:  # (b, T) per sampling batch, with graph
        a = adv[start:start + len(lp), None].expand_as(lp)
        terms, st = loss(lp, lp.detach(), a)
        acc.backward(terms.sum(), n * T)
        for key, v in st.items():
            stats[f"train/{key}"].append(float(v))
        stats["train/loss"].append(float(terms.detach().mean()))
        start += len(lp)
    ro.graph_log_probs.clear()  # free the graphs
    acc.end_minibatch(0)
    return mean_stats(stats) | {"train/logprob_gap": 0.0}


def single_pass_applies(cfg) -> bool:
    """Every update is on-policy and covers every step of every sample, re-scored as sampled:
    one inner epoch, one optimizer step per epoch, all steps stochastic and trained, no KL, and
    guidance in re-scoring equal to sampling's."""
    t, s = cfg.train, cfg.sample
    return (t.single_pass and t.num_inner_epochs == 1 and cfg.optimizer_steps_per_epoch == 1
            and t.timestep_fraction == 1.0 and cfg.stochastic_steps == s.num_steps and t.kl_coef == 0
            and (t.rescore_with_guidance or not uses_guidance(s.guidance_scale)))
