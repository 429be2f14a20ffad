"""The DDPO update (Black et al. 2023, Algorithm 1 and section 4): re-score stored denoising
steps under the current policy and descend the SF or IS (PPO-clip) loss. Flow-GRPO (Liu et al.
2025) is the same update over a flow sampler's stochastic steps, with group advantages.

Loss scale: each optimizer step minimises the mean of the per-(sample, trained step) losses of
its minibatches, as ddpo-pytorch does through accelerate's gradient accumulation.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from ..losses.ddpo import gaussian_kl_same_std, ppo_clip_loss, score_function_loss
from ..models.policy import guided_prediction


def _loss(algorithm: str, log_prob: Tensor, old_log_prob: Tensor, adv: Tensor, clip_range: float):
    terms, stats = ppo_clip_loss(log_prob, old_log_prob, adv, clip_range)
    if algorithm == "ddpo-sf":
        terms = score_function_loss(log_prob, adv)
    return terms, stats


def ddpo_update(tr, ro, adv: Tensor, epoch: int) -> dict[str, float]:
    """Recompute-and-update over `num_inner_epochs` passes of the epoch's samples."""
    cfg, t = tr.cfg, tr.cfg.train
    n, T = ro.log_probs.shape
    k_train, ga, bs = cfg.trained_timesteps, t.gradient_accumulation_steps, t.batch_size
    sampler, policy = tr.sampler, tr.policy
    stochastic = sampler.stochastic.nonzero().flatten()  # the steps that have log-probs
    w = cfg.sample.guidance_scale if t.cfg else 1.0
    # GRPO groups whose rewards are all equal have advantage exactly 0: no policy gradient, so
    # (as Flow-GRPO does) they are not re-scored at all
    skip = adv == 0 if (t.filter_zero_std and t.advantages == "group") else torch.zeros_like(adv, dtype=torch.bool)
    stats: dict[str, list[float]] = defaultdict(list)
    for inner in range(t.num_inner_epochs):
        # The first pass keeps sampling order (already random; this keeps processes' minibatches
        # the slices of one global minibatch). Later passes shuffle locally.
        order = torch.arange(n) if inner == 0 else torch.randperm(n, generator=tr.generator(epoch, inner, -1))
        # Each sample trains on its own random subset of steps (timestep_fraction).
        steps = torch.stack([stochastic[torch.randperm(len(stochastic), generator=tr.generator(
            epoch, inner, int(ro.global_idx[i])))] for i in order])[:, :k_train]  # (n, k_train)
        for mb, start in enumerate(range(0, n, bs)):
            rows, mb_steps = order[start:start + bs], steps[start:start + bs]
            n_rows = len(rows)  # the loss is a mean over all rows, skipped ones counting as 0
            keep = ~skip[rows].cpu()
            rows, mb_steps = rows[keep], mb_steps[keep]
            for j0 in range(0, k_train if len(rows) else 0, t.timesteps_per_forward):
                js = mb_steps[:, j0:j0 + t.timesteps_per_forward]  # (B, k)
                r, s = rows[:, None].expand_as(js).flatten(), js.flatten()
                x_t, x_prev = ro.latents[r, s], ro.latents[r, s + 1]
                cond = tr.cond_table[ro.prompt_ids[r]]
                time = sampler.model_time(s).to(x_t.device)
                with tr.accelerator.autocast():
                    out = guided_prediction(policy, x_t, time, cond, tr.uncond.repeat(len(r)), w)
                step = sampler.step(s, x_t, out, x_prev=x_prev)
                old = ro.log_probs[r, s]
                if inner == 0 and mb == 0:  # before any update: the recompute gap of the sampler
                    stats["train/logprob_gap"].append(float((step.log_prob.detach() - old).abs().max()))
                terms, st = _loss(t.algorithm, step.log_prob, old, adv[r], t.clip_range)
                if t.kl_coef > 0:
                    with torch.no_grad(), tr.reference(), tr.accelerator.autocast():
                        out_ref = guided_prediction(policy, x_t, time, cond, tr.uncond.repeat(len(r)), w)
                    mean_ref = sampler.step(s, x_t, out_ref, x_prev=x_prev).mean
                    kl = gaussian_kl_same_std(step.mean, mean_ref, step.std)
                    terms = terms + t.kl_coef * kl
                    stats["train/kl_ref"].append(float(kl.detach().mean()))
                (terms.sum() / (n_rows * ga * k_train)).backward()
                for key, v in st.items():
                    stats[f"train/{key}"].append(float(v))
                stats["train/loss"].append(float(terms.detach().mean()))
            if (mb + 1) % ga == 0:
                stats["train/grad_norm"].append(tr.optimizer_step())
    out = {k: sum(v) / len(v) for k, v in stats.items() if v}
    if stats["train/logprob_gap"]:
        out["train/logprob_gap"] = max(stats["train/logprob_gap"])
    return out


def ddpo_single_pass_update(tr, ro, adv: Tensor, epoch: int) -> dict[str, float]:
    """The same update when it is entirely on-policy (one optimizer step over all steps of all
    samples, re-scored as sampled): the log-probs kept with their graph from sampling are the
    ones a recompute would give, the ratio is exactly 1, and the IS and SF gradients both equal
    -A * grad log p. So backward through the sampling pass instead of running it again."""
    t = tr.cfg.train
    n, T = ro.log_probs.shape
    stats: dict[str, list[float]] = defaultdict(list)
    start = 0
    for lp in ro.graph_log_probs:  # (b, T) per sampling batch, with graph
        a = adv[start:start + len(lp), None].expand_as(lp)
        terms, st = _loss(t.algorithm, lp, lp.detach(), a, t.clip_range)
        (terms.sum() / (n * T)).backward()
        for key, v in st.items():
            stats[f"train/{key}"].append(float(v))
        stats["train/loss"].append(float(terms.detach().mean()))
        start += len(lp)
    ro.graph_log_probs.clear()  # free the graphs
    stats["train/grad_norm"].append(tr.optimizer_step())
    return {k: sum(v) / len(v) for k, v in stats.items()} | {"train/logprob_gap": 0.0}
