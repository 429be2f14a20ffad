"""The finite-state guard of a run: a non-finite loss, gradient norm, weight or decoded image
stops the run with an error naming what went non-finite and where, before anything is saved, so
the last checkpoint on disk is the last good state. With `train.nonfinite skip`, an optimizer
step whose gradient is non-finite is skipped instead (counted in `train/skipped_steps`);
non-finite weights or images still stop the run, since no step can be skipped to undo them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


class NonFiniteError(ValueError):
    """A value of the run went NaN or infinite; the message names it, the epoch and the step."""


def first_nonfinite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first tensor holding a NaN or an infinity, else None."""
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            return name
    return None


def nonfinite_error(what: str, epoch: int, optimizer_steps: int, checkpoints: list[Path], lr: float,
                    skippable: bool = False) -> NonFiniteError:
    last = f"the last checkpoint, {checkpoints[-1]}, is intact" if checkpoints else "no checkpoint was written yet"
    skip = "; or set train.nonfinite skip to skip such steps" if skippable else ""
    return NonFiniteError(
        f"non-finite {what} at epoch {epoch + 1}, after {optimizer_steps} optimizer steps; the run stopped "
        f"and {last}. Lower train.learning_rate (now {lr:g}) or check the model and reward{skip}")
