"""Helpers shared by the tests."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from ddrl.images import check_run, run_images


def train(cfg, run_dir: str | Path, *, resume: bool = False, resume_override: bool = False) -> dict:
    """A checked image run, as `ddrl train` starts one (returns {} when stopped by Ctrl-C)."""
    for change in check_run(cfg, run_dir, resume=resume, resume_override=resume_override):
        print(f"resume {run_dir}: {change}")
    return run_images(cfg, run_dir, resume=resume)


def kill_9_once_it_exists(args: list[str], path: Path, timeout: float = 300) -> None:
    """Start the command `args`, wait until `path` exists (or the command ends, or `timeout`
    seconds pass), then kill it with SIGKILL."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
