"""Fixed min/max normalisation of observations and actions to [-1, 1], from the demonstrations
(DPPO: script/dataset/get_d4rl_dataset.py). It is fixed, never running: a running normaliser
would move a behaviour-cloned policy's inputs, and between rollout and update it would break the
on-policy ratio of 1 (FPO). It travels with every policy file and checkpoint."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MinMax(nn.Module):
    def __init__(self, low: Tensor, high: Tensor):
        super().__init__()
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        # a constant dimension would divide by zero: give it a unit range around its value
        flat = (high - low) < 1e-6
        self.register_buffer("low", torch.where(flat, low - 0.5, low))
        self.register_buffer("high", torch.where(flat, high + 0.5, high))

    @classmethod
    def fit(cls, x: Tensor) -> "MinMax":
        x = torch.as_tensor(x, dtype=torch.float32)
        return cls(x.amin(0), x.amax(0))

    def forward(self, x: Tensor) -> Tensor:
        return 2 * (x - self.low) / (self.high - self.low) - 1

    def inverse(self, y: Tensor) -> Tensor:
        return (y + 1) / 2 * (self.high - self.low) + self.low
