"""One iteration's rollout: every environment reset with keyed seeds, `n_steps` action chunks
each, the algorithm's stored sampling records, and the statistics of the episodes that ended
within the iteration (DPPO counts only those too)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..run.rng import keyed_generator
from .envs import episode_seeds
from .episodes import EpisodeStats

ROLLOUT_PURPOSE = 42


@dataclass
class Rollout:
    obs: Tensor  # (S, B, Do) normalised observations the chunks were chosen at
    next_obs: Tensor  # (S, B, Do) normalised observation each chunk led to (the last one when its episode ended)
    records: dict[str, Tensor]  # (S, B, ...) what the algorithm stored
    rewards: np.ndarray  # (S, B) summed over each chunk, raw
    terminated: np.ndarray  # (S, B) bool
    truncated: np.ndarray  # (S, B) bool
    firsts: np.ndarray  # (S, B) bool: the chunk starts an episode
    episodes: EpisodeStats
    env_steps: int
    seconds: float


@torch.no_grad()
def collect(envs, algo, policy, seed: int, iteration: int, n_steps: int) -> Rollout:
    start = time.perf_counter()
    n = envs.num_envs
    raw, _ = envs.reset(seed=episode_seeds(seed, iteration, n))
    obs_l, next_l, rec_l, rew, term, trunc, first = [], [], [], [], [], [], []
    is_first = np.ones(n, bool)
    ep_return, ep_len = np.zeros(n), np.zeros(n, int)
    stats, env_steps = EpisodeStats(), 0
    for s in range(n_steps):
        obs = policy.obs_norm(torch.as_tensor(raw).float())
        actions, record = algo.act(obs, keyed_generator(seed, ROLLOUT_PURPOSE, iteration, s))
        raw, reward, terminated, truncated, info = envs.step(policy.to_env(actions).numpy())
        ended = terminated | truncated
        last = raw.copy()
        steps = np.zeros(n, int)
        for i in range(n):
            src = info["final_info"] if ended[i] else info
            steps[i] = src["steps"][i]
            if ended[i]:
                last[i] = info["final_obs"][i]
        env_steps += int(steps.sum())
        ep_return += reward
        ep_len += steps
        for i in np.flatnonzero(ended):
            stats.returns.append(float(ep_return[i]))
            stats.lengths.append(int(ep_len[i]))
            stats.routes.append(str(info["final_info"]["route"][i]))
            stats.successes.append(bool(info["final_info"]["success"][i]))
        ep_return[ended], ep_len[ended] = 0.0, 0
        obs_l.append(obs)
        next_l.append(policy.obs_norm(torch.as_tensor(last).float()))
        rec_l.append(record)
        rew.append(reward)
        term.append(terminated)
        trunc.append(truncated)
        first.append(is_first)
        is_first = ended
    records = {k: torch.stack([r[k] for r in rec_l]) for k in rec_l[0]}
    return Rollout(torch.stack(obs_l), torch.stack(next_l), records, np.asarray(rew, np.float64),
                   np.asarray(term), np.asarray(trunc), np.asarray(first), stats, env_steps,
                   time.perf_counter() - start)
