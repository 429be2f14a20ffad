"""Training: the shared RL loop, checkpoints, metrics and reports."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..config_checks import validate


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False) -> dict:
    """Run (or resume) a training run; returns the before/after evaluation."""
    from .loop import Trainer

    validate(cfg)
    run_dir = Path(run_dir)
    if not resume and (run_dir / "config.yaml").exists():  # its cached evaluation would mix into this run
        raise ValueError(f"{run_dir} already holds a run; continue it with resume=True or choose another folder")
    return Trainer(cfg, run_dir).train(resume=resume)
