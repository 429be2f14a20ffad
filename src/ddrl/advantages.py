"""Advantages: rewards normalised into a learning signal (DDPO, Black et al. 2023, section 4.3).

Batch:       A_i = (r_i - mean(r)) / (std(r) + 1e-8)
Per prompt:  A_i = (r_i - mean_c) / (std_c + 1e-6), over a FIFO buffer of the last `buffer_size`
             rewards of prompt c (the current ones included), once it holds `min_count` rewards;
             before that, the batch statistics are used. std is the population std (ddof 0).

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
