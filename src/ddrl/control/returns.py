"""Running return scaling (DPPO util/reward_scaling.py, after OpenAI's phasic-policy-gradient):
rewards are divided by the running standard deviation of the discounted return of each
environment, without subtracting a mean, and clipped to +-clip. Its statistics are saved with
every checkpoint."""

from __future__ import annotations

import numpy as np


class RunningReturnScale:
    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4
        self.ret = np.zeros(num_envs)

    def __call__(self, rewards: np.ndarray, firsts: np.ndarray) -> np.ndarray:
        """rewards, firsts: (S, B); firsts marks the first step of an episode."""
        rets = np.zeros_like(rewards, dtype=np.float64)
        prev = self.ret
        for s in range(len(rewards)):
            prev = rets[s] = rewards[s] + (1 - firsts[s]) * self.gamma * prev
        self.ret = prev
        self._update(rets.reshape(-1))
        return np.clip(rewards / np.sqrt(self.var + self.epsilon), -self.clip, self.clip)

    def _update(self, x: np.ndarray) -> None:  # Chan et al.'s parallel update of mean and variance
        mean, var, n = float(x.mean()), float(x.var()), len(x)
        delta, total = mean - self.mean, self.count + n
        m2 = self.var * self.count + var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / (total - 1), total

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count, "ret": self.ret.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
        self.ret = np.asarray(state["ret"], dtype=np.float64)
