"""What every control algorithm shares: the PPO options, the batch of one iteration, and the
update loop (epochs of shuffled minibatches, actor and critic steps, critic warm-up, target-KL
early stopping, and the on-policy ratio check before the first step).

An algorithm is a component: it samples actions (`act`), says how many PPO rows a batch has (DPPO:
one per sample and fine-tuned denoising step; the others: one per sample), and gives the policy
loss of a minibatch of rows (`policy_loss`). The loop never asks its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...options import option

RATIO_TOLERANCE = 1e-4  # |ratio - 1| allowed before the first step; see docs/fidelity.md (fp32 re-scoring)


@dataclass(frozen=True)
class PPOOptions:
    section: ClassVar[str] = "ppo"
    gamma: float = option(0.99, "(0, 1]", "discount per action chunk (DPPO: 0.99)")
    gae_lambda: float = option(0.95, "[0, 1]", "GAE lambda")
    update_epochs: int = option(5, "[1, inf)", "passes over the iteration's batch")
    minibatches: int = option(4, "[1, inf)", "minibatches per pass (DPPO: 200k rows / batch 50000 = 4)")
    actor_lr: float = option(1e-4, "(0, inf)", "actor learning rate (Adam)")
    critic_lr: float = option(1e-3, "(0, inf)", "critic learning rate (Adam)")
    vf_coef: float = option(0.5, "[0, inf)", "weight of the value loss 0.5 (V - returns)^2")
    target_kl: float = option(1.0, "(0, inf)", "stop the iteration's update once approx-KL exceeds this")
    critic_warmup: int = option(0, "[0, inf)", "first iterations that train only the critic")
    reward_scaling: bool = option(True, None, "divide rewards by the running std of the discounted return, clip +-10")
    max_grad_norm: float = option(0.0, "[0, inf)", "clip the actor's gradient norm; 0 = no clipping (DPPO Gym)")
    critic_width: int = option(128, "[1, inf)", "critic MLP width (DPPO: 256)")
    critic_depth: int = option(3, "[1, inf)", "critic residual blocks")


@dataclass
class Batch:
    """One iteration's samples, flattened over (step, environment): N = S x B rows of samples."""

    obs: Tensor  # (N, Do) normalised
    records: dict[str, Tensor]  # what `act` stored, each (N, ...)
    advantages: Tensor  # (N,)
    returns: Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.obs)


class RatioCheckError(RuntimeError):
    """Re-scoring the stored samples with the unchanged policy did not give ratio 1."""


class ControlAlgorithm:
    """The contract (see the module docstring). Subclasses set `options_class`, build `actor`
    (the trainable modules) and implement `act`, `policy_loss` and `evaluation_actor`."""

    options_class: ClassVar[type]
    actor: nn.Module
    calls_per_chunk: int  # network evaluations per action chunk at rollout (counting each of a batch of draws)

    def rows(self, n: int) -> int:
        return n

    def sample_of(self, rows: Tensor) -> Tensor:
        return rows

    def start_iteration(self, iteration: int, total: int) -> None:
        """Schedules that move with the iterations (ReinFlow's sigma_max)."""

    def act(self, obs: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def policy_loss(self, obs: Tensor, records: dict[str, Tensor], advantages: Tensor, rows: Tensor,
                    generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(loss, log-ratio per row, statistics) of a minibatch of `rows`; `records` and `obs` are
        already indexed by the rows' samples."""
        raise NotImplementedError

    def evaluation_actor(self):
        """obs (B, Do) normalised, generator -> normalised action chunks (B, Ta, Da)."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__
