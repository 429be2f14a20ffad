"""Training algorithms as components (base.py has the contract with the loop, registry.py the
names). Adding one means a module here with its options dataclass, and a line in ALGORITHMS (or
`ddrl.register_algorithm` from outside the package)."""

from __future__ import annotations

from .base import Algorithm, Collected, Context, EpochRewards, Rollouts, RolloutAlgorithm
from .registry import ALGORITHMS, algorithm_class, options_of, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "Collected", "Context", "EpochRewards", "RolloutAlgorithm", "Rollouts",
           "algorithm_class", "options_of", "register_algorithm"]
