"""Environments for control runs: gymnasium vector environments of action-chunk wrappers.

- `ActionChunk` runs a chunk of Ta actions open-loop and sums their rewards (DPPO's MultiStep
  wrapper); a chunk stops early when its episode ends.
- The vector environment resets an ended episode in the same step (gymnasium's SAME_STEP
  autoreset): the returned observation starts the next episode and `final_obs` holds the last one,
  so a truncated episode is bootstrapped from its true last observation. (gymnasium 1.x defaults to
  NEXT_STEP, where the step after an episode's end is a dummy transition.)
- Every episode's randomness comes from keyed seeds: all environments are reset at the start of
  each iteration with seeds from (run seed, iteration, environment index), which is what makes a
  resumed run identical to an uninterrupted one at iteration boundaries.
"""

from __future__ import annotations

import difflib

import gymnasium as gym
import numpy as np

from .world import register


class ControlError(ValueError):
    """Bad control input (an environment, a shape, an option), in one line."""


class ActionChunk(gym.Wrapper):
    def __init__(self, env: gym.Env, horizon: int):
        super().__init__(env)
        self.horizon = horizon
        low, high = env.action_space.low, env.action_space.high
        self.action_space = gym.spaces.Box(np.repeat(low[None], horizon, 0), np.repeat(high[None], horizon, 0))

    def step(self, chunk):
        total, steps = 0.0, 0
        for a in chunk:
            obs, reward, terminated, truncated, info = self.env.step(a)
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info | {"steps": steps}


def check_env_id(env_id: str) -> gym.spaces.Box:
    """The observation space of `env_id`, or a ControlError naming the closest registered id."""
    register()
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=1)
        raise ControlError(f"unknown environment {env_id!r}{f' (did you mean {close[0]!r}?)' if close else ''}")
    env = gym.make(env_id)
    spaces = env.observation_space, env.action_space
    env.close()
    if not all(isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in spaces):
        raise ControlError(f"{env_id}: ddrl's control policies need flat Box observation and action spaces")
    return spaces


def make_envs(env_id: str, n: int, horizon: int) -> gym.vector.SyncVectorEnv:
    check_env_id(env_id)
    return gym.vector.SyncVectorEnv([lambda: ActionChunk(gym.make(env_id), horizon) for _ in range(n)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def episode_seeds(seed: int, iteration: int, n: int) -> list[int]:
    """Reset seeds of the n environments at an iteration's start, keyed by (seed, iteration)."""
    ss = np.random.SeedSequence([seed, 7, iteration])
    return [int(s) for s in ss.generate_state(n, np.uint32)]
