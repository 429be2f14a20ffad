"""The image loop (loop.py) on the run core: rollouts, evaluation, grids, reports and export for
diffusion and flow-matching models. `ddrl.train` (api.py) and `ddrl train` (cli.py) start it
through `check_run` and `run_images`."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..config_run import read_run_config
from ..config_checks import validate
from ..io import check_writable_dir


def check_run(cfg: Config, run_dir: str | Path, *, resume: bool = False, resume_override: bool = False) -> list[str]:
    """Every check before any model loads: the config, the run folder, the trackers' credentials
    and servers, and on resume that the
    config keeps the run's except where RESUME_SAFE allows (or `resume_override`). Returns the
    changes a resume makes, as 'key: old -> new' lines."""
    from ..run.resume import NAME, check_resume
    from ..run.sharding import check_launch
    from ..run.trackers import preflight

    check_launch()
    validate(cfg)
    run_dir = Path(run_dir)
    check_writable_dir(run_dir, "the run folder")
    if cfg.data.pairs:  # found now, not after every latent is encoded
        from ..data.latent_cache import default_cache_dir

        check_writable_dir(cfg.data.cache_dir or default_cache_dir(), "data.cache_dir")
    preflight(cfg.run.report_to)
    if resume:
        if not (run_dir / NAME).exists():
            raise ValueError(f"{run_dir} holds no run to resume (no {NAME}); start a run there without resume")
        saved = read_run_config(run_dir, allow_edited=resume_override)
        return check_resume(saved.to_dict(), cfg.to_dict(), resume_override)
    if (run_dir / NAME).exists():  # its cached evaluation would mix into this run
        raise ValueError(f"{run_dir} already holds a run; continue it with resume=True (ddrl train --resume "
                         f"{run_dir}) or choose another folder (--run.output-dir)")
    return []


def run_images(cfg: Config, run_dir: str | Path, *, resume: bool = False) -> dict:
    """Run (or resume) a checked image run; returns the before/after evaluation, or {} when it
    was interrupted (Ctrl-C) after saving a checkpoint."""
    from .loop import ImageRun

    return ImageRun(cfg, Path(run_dir)).run(resume=resume)
