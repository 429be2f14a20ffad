"""Advantages: rewards normalised into a learning signal (DDPO, Black et al. 2023, section 4.3).

Batch:       A_i = (r_i - mean(r)) / (std(r) + 1e-8)
Per prompt:  A_i = (r_i - mean_c) / (std_c + 1e-6), over a FIFO buffer of the last `buffer_size`
             rewards of prompt c (the current ones included), once it holds `min_count` rewards;
             before that, the batch statistics are used. std is the population std (ddof 0).

Group (GRPO; Flow-GRPO, Liu et al. 2025): each prompt is sampled G times in the same batch, and
             A_i = (r_i - mean_group) / (std + 1e-4), with the std of the group or, with
             global_std (Flow-GRPO's default), of the whole batch. A group whose rewards are all
             equal carries no signal: its advantages are exactly 0.
Win rates (Pref-GRPO, Wang et al. 2025): the reward of sample i is the fraction of the others in
             its group it beats, r_i = mean_{j != i} (1[i beats j] + 1/2 1[tie]), and
             A_i = (r_i - mean_group) / (std_group + 1e-8) with the group's own std, ddof 1
             (Pref-GRPO, fastvideo/rewards/dispatcher.py, compute_weighted_advantages).

The per-prompt buffers are explicit state: `per_prompt_advantages(state, ...)` returns the new
state instead of mutating a tracker, so checkpoints hold it as plain JSON and every process,
given the same gathered rewards in the same order, computes the same advantages.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

PromptBuffers = dict[str, list[float]]


def batch_advantages(rewards: Tensor) -> Tensor:
    r = rewards.double()
    return ((r - r.mean()) / (r.std(unbiased=False) + 1e-8)).float()


def per_prompt_advantages(prompts: Sequence[str], rewards: Tensor, state: PromptBuffers, *,
                          buffer_size: int, min_count: int) -> tuple[Tensor, PromptBuffers]:
    if len(prompts) != len(rewards):
        raise ValueError(f"{len(prompts)} prompts but {len(rewards)} rewards")
    r = rewards.double()
    adv = torch.empty_like(r)
    new_state = {k: list(v) for k, v in state.items()}
    batch_mean, batch_std = r.mean(), r.std(unbiased=False) + 1e-6
    for prompt in dict.fromkeys(prompts):  # unique, in first-seen order
        idx = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
        buf = (new_state.get(prompt, []) + r[idx].tolist())[-buffer_size:]
        new_state[prompt] = buf
        if len(buf) < min_count:
            mean, std = batch_mean, batch_std
        else:
            b = torch.tensor(buf, dtype=torch.float64)
            mean, std = b.mean(), b.std(unbiased=False) + 1e-6
        adv[idx] = (r[idx] - mean) / std
    return adv.float(), new_state


def group_advantages(rewards: Tensor, groups: Tensor, *, global_std: bool = True) -> Tensor:
    """GRPO advantages; `groups` (B,) labels the samples that share a prompt in this batch."""
    r = rewards.double()
    adv = torch.zeros_like(r)
    batch_std = r.std(unbiased=False)
    for g in groups.unique():
        m = groups == g
        spread = r[m].max() - r[m].min()
        if spread == 0:
            continue  # no signal: exactly 0, whatever the std
        std = batch_std if global_std else r[m].std(unbiased=False)
        adv[m] = (r[m] - r[m].mean()) / (std + 1e-4)
    return adv.float()


def win_rate_advantages(rates: Tensor, groups: Tensor) -> Tensor:
    """Pref-GRPO's advantages of win rates: each group normalised by its own std (ddof 1) + 1e-8.
    A group of equal win rates (all ties) gives exactly 0."""
    r = rates.double()
    adv = torch.zeros_like(r)
    for g in groups.unique():
        m = groups == g
        if m.sum() < 2:
            raise ValueError("win-rate advantages need at least two samples in every group")
        adv[m] = (r[m] - r[m].mean()) / (r[m].std(unbiased=True) + 1e-8)
    return adv.float()


def win_rates(beats: Tensor, groups: Tensor) -> Tensor:
    """Pref-GRPO rewards from a (B, B) matrix of P(i beats j): within each group, the mean over
    j != i of 1 when P > 1/2, 1/2 when P = 1/2, 0 otherwise."""
    wins = (beats > 0.5).double() + 0.5 * (beats == 0.5).double()
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(len(groups), dtype=torch.bool)
    counts = same.sum(1)
    if (counts == 0).any():
        raise ValueError("win rates need at least two samples in every group")
    return ((wins * same).sum(1) / counts).float()


def judged_win_rates(compare, images: Tensor, prompts: list[str], groups: Tensor) -> Tensor:
    """Pref-GRPO win rates from a pairwise judge. Every pair i < j within a group is judged once,
    all in one batched call: compare(images[i], images[j], prompts[i]) = P(i beats j), and
    P(j beats i) = 1 - P(i beats j)."""
    n = len(groups)
    i, j = torch.triu_indices(n, n, 1)
    same = groups[i] == groups[j]
    i, j = i[same], j[same]
    p = compare(images[i], images[j], [prompts[k] for k in i.tolist()]).detach().float().cpu()
    beats = torch.full((n, n), 0.5)
    beats[i, j], beats[j, i] = p, 1 - p
    return win_rates(beats, groups)


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor, *,
        gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016) over (S, B) steps of B environments,
    with the episode ends of a gymnasium vector environment:

        delta_s = r_s + gamma (1 - terminated_s) V(o'_s) - V(o_s)
        A_s     = delta_s + gamma lam (1 - done_s) A_{s+1},   done = terminated or truncated

    o'_s is the observation the step led to: the episode's last one when it ended (so a truncated
    episode is bootstrapped from where it stopped, not treated as terminal), and V(o'_{S-1}) closes
    the window. Returns = A + V."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    done = terminated | truncated
    for s in reversed(range(len(rewards))):
        delta = rewards[s] + gamma * (~terminated[s]) * next_values[s] - values[s]
        running = delta + gamma * lam * (~done[s]) * running
        adv[s] = running
    return adv
