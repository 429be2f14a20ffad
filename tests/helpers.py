"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

from ddrl.images import check_run, run_images


def train(cfg, run_dir: str | Path, *, resume: bool = False, resume_override: bool = False) -> dict:
    """A checked image run, as `ddrl train` starts one (returns {} when stopped by Ctrl-C)."""
    for change in check_run(cfg, run_dir, resume=resume, resume_override=resume_override):
        print(f"resume {run_dir}: {change}")
    return run_images(cfg, run_dir, resume=resume)
