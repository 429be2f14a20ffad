"""Training: the shared RL loop, checkpoints, metrics and reports."""

from __future__ import annotations

from pathlib import Path

from ..config import Config, validate


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False) -> dict:
    """Run (or resume) a training run; returns the before/after evaluation."""
    from .loop import Trainer

    validate(cfg)
    return Trainer(cfg, Path(run_dir)).train(resume=resume)
