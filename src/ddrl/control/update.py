"""One iteration's PPO update, shared by every control algorithm (DPPO
agent/finetune/train_ppo_diffusion_agent.py): `update_epochs` passes over the rows in shuffled
minibatches (a remainder smaller than a minibatch is skipped, as there); per minibatch one backward
of policy loss + vf_coef x value loss, then an actor step (not during critic warm-up) and a critic
step; the update stops once a minibatch's approx-KL exceeds target_kl.

Before the first step, re-scoring the stored samples must give ratio 1 (ReinFlow raises on its
first minibatch too): a sampler and a scorer that disagree (ReinFlow issue #5: two time grids)
would otherwise train on a biased ratio without a sign.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from .algorithms.base import RATIO_TOLERANCE, Batch, PPOOptions, RatioCheckError


def ppo_update(algo, critic, batch: Batch, opts: PPOOptions, actor_step, critic_step, generator: torch.Generator,
               train_actor: bool) -> dict[str, float]:
    rows = algo.rows(len(batch))
    size = max(1, rows // opts.minibatches)
    stats: dict[str, list[float]] = defaultdict(list)
    first, stopped = True, False
    for _ in range(opts.update_epochs):
        perm = torch.randperm(rows, generator=generator)
        for b in range(max(1, rows // size)):
            r = perm[b * size:(b + 1) * size]
            s = algo.sample_of(r)
            records = {k: v[s] for k, v in batch.records.items()}
            loss_pi, log_ratio, st = algo.policy_loss(batch.obs[s], records, batch.advantages[s], r, generator)
            if first:
                gap = float((log_ratio.detach().exp() - 1).abs().max())
                stats["train/first_ratio_error"].append(gap)
                if not gap <= RATIO_TOLERANCE:
                    raise RatioCheckError(f"{algo.describe()}: re-scoring the rollout's samples before any update gives "
                                          f"|ratio - 1| = {gap:.2e} > {RATIO_TOLERANCE:g}; sampling and scoring disagree")
                first = False
            value_loss = 0.5 * ((critic(batch.obs[s]) - batch.returns[s]) ** 2).mean()
            (loss_pi + opts.vf_coef * value_loss).backward()
            if train_actor:
                stats["train/actor_grad_norm"].append(actor_step())
            else:
                actor_step.optimizer.zero_grad(set_to_none=True)
            critic_step()
            for k, v in st.items():
                stats[k].append(v)
            stats["train/policy_loss"].append(float(loss_pi.detach()))
            stats["train/value_loss"].append(float(value_loss))
            if st.get("train/approx_kl", 0.0) > opts.target_kl:
                stopped = True
                break
        if stopped:
            break
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["train/minibatches"] = float(len(stats["train/value_loss"]))
    out["train/kl_stop"] = float(stopped)
    return out
