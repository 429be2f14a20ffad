"""The run core every training loop shares, knowing nothing of images, prompts or environments:
the session (config.yaml and its hash, resume checks, metrics and trackers, save cadence,
Ctrl-C, keyed generators), atomic hashed checkpoints, the optimizer step as an object and the
accumulate-and-step helper, the non-finite guard, sharding helpers and report pieces."""

from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .finite import NonFiniteError, first_nonfinite, nonfinite_error
from .rng import keyed_generator
from .session import Session
from .step import Accumulation, OptimizerStep

__all__ = ["Accumulation", "NonFiniteError", "OptimizerStep", "Session", "first_nonfinite", "keyed_generator",
           "list_checkpoints", "load_checkpoint", "nonfinite_error", "save_checkpoint"]
