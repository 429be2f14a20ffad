"""Running policies in the vector environment for whole episodes: deterministic evaluation, and
the trajectories drawn in pictures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..run.rng import keyed_generator
from .envs import make_envs

EVAL_PURPOSE = 41  # keyed-generator purpose of evaluation noise


@dataclass
class EpisodeStats:
    returns: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    paths: list[np.ndarray] = field(default_factory=list)  # (steps + 1, Do) raw observations, when kept

    def summary(self, prefix: str) -> dict[str, float]:
        n = len(self.returns)
        if n == 0:
            return {}
        s = np.asarray(self.successes, float)
        out = {f"{prefix}/return": float(np.mean(self.returns)), f"{prefix}/success": float(s.mean()),
               f"{prefix}/success_se": float(s.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
               f"{prefix}/episode_length": float(np.mean(self.lengths)), f"{prefix}/episodes": float(n)}
        counts = Counter(self.routes)
        for r in ("wide", "narrow", "crash", ""):
            out[f"{prefix}/route_{r or 'none'}"] = counts.get(r, 0) / n
        return out


@torch.no_grad()
def run_episodes(act, env_id: str, horizon: int, episodes: int, seed: int, keep_paths: bool = False,
                 batch: int = 100) -> EpisodeStats:
    """`episodes` episodes of `act(raw_obs (B, Do) tensor, generator) -> env actions (B, Ta, Da)`,
    in batches of parallel environments, each episode with reset seed (seed, index) and its own
    keyed noise: the same seed gives the same episodes whatever the batch."""
    stats = EpisodeStats()
    for start in range(0, episodes, batch):
        n = min(batch, episodes - start)
        envs = make_envs(env_id, n, horizon)
        obs, _ = envs.reset(seed=[int(np.random.SeedSequence([seed, start + i]).generate_state(1)[0]) for i in range(n)])
        done = np.zeros(n, bool)
        ret, length = np.zeros(n), np.zeros(n, int)
        paths = [[o.copy()] for o in obs]
        info_route, info_success = [""] * n, [False] * n
        t = 0
        while not done.all():
            gen = keyed_generator(seed, EVAL_PURPOSE, start, t)
            actions = act(torch.as_tensor(obs), gen).numpy()
            obs, reward, terminated, truncated, info = envs.step(actions)
            ended = terminated | truncated
            for i in np.flatnonzero(~done):
                ret[i] += reward[i]
                length[i] += int((info["final_info"] if ended[i] else info)["steps"][i])
                last = info["final_obs"][i] if ended[i] else obs[i]
                paths[i].append(np.asarray(last).copy())
                if ended[i]:
                    info_route[i] = info["final_info"]["route"][i]
                    info_success[i] = bool(info["final_info"]["success"][i])
            done |= ended
            t += 1
        envs.close()
        stats.returns += ret.tolist()
        stats.lengths += length.tolist()
        stats.routes += info_route
        stats.successes += info_success
        if keep_paths:
            stats.paths += [np.stack(p) for p in paths]
    return stats


def policy_actor(policy):
    """The deterministic evaluation actor of a ChunkPolicy, in raw units."""
    def act(obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return policy.to_env(policy.evaluate_actions(policy.obs_norm(obs.float()), generator))
    return act
