"""Training: the shared RL loop, checkpoints, metrics and reports."""

from __future__ import annotations

import sys
import types
from pathlib import Path

from ..config import Config
from ..config_checks import validate
from ..io import check_writable_dir


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, resume_override: bool = False) -> dict:
    """Run (or resume) a training run; returns the before/after evaluation, or {} when it was
    interrupted (Ctrl-C) after saving a checkpoint. A resumed run must keep its config except for
    the keys of `resume.RESUME_SAFE`, unless `resume_override`."""
    from .loop import Trainer
    from .resume import NAME, check_resume, read_run_config

    validate(cfg)
    run_dir = Path(run_dir)
    check_writable_dir(run_dir, "the run folder")
    if resume and (run_dir / NAME).exists():
        saved = read_run_config(run_dir, allow_edited=resume_override)
        for change in check_resume(saved, cfg, resume_override):
            print(f"resume {run_dir}: {change}")
    elif not resume and (run_dir / NAME).exists():  # its cached evaluation would mix into this run
        raise ValueError(f"{run_dir} already holds a run; continue it with resume=True or choose another folder")
    return Trainer(cfg, run_dir).train(resume=resume)


class _CallableModule(types.ModuleType):
    """`ddrl.train(config, reward=..., ...)` calls ddrl.api.train: the package is also the API's
    entry point (Python sets a submodule as its parent's attribute, so a plain function named
    `train` in ddrl/__init__.py would be replaced by this package on first import)."""

    def __call__(self, *args, **kwargs) -> dict:
        from ..api import train as api_train

        return api_train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
