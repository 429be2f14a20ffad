"""The control algorithms, by name: each a component with its own options section."""

from .base import Batch, ControlAlgorithm, PPOOptions, RatioCheckError
from .dppo import DPPO, DPPOOptions
from .fpo import FPO, FPOOptions
from .gaussian import GaussianOptions, GaussianPPO
from .reinflow import ReinFlow, ReinFlowOptions

REGISTRY: dict[str, type[ControlAlgorithm]] = {"dppo": DPPO, "reinflow": ReinFlow, "fpo": FPO, "gaussian-ppo": GaussianPPO}

__all__ = ["DPPO", "FPO", "REGISTRY", "Batch", "ControlAlgorithm", "DPPOOptions", "FPOOptions", "GaussianOptions",
           "GaussianPPO", "PPOOptions", "RatioCheckError", "ReinFlow", "ReinFlowOptions"]
