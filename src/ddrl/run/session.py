"""The run session: what every training loop shares around its epochs, whatever it trains.

- the run folder's config.yaml, written with its hash (run/resume.py checks it on resume);
- the metrics log (metrics.jsonl, TensorBoard, the trackers of `report_to`);
- the save cadence: every `save_every` epochs, the last epoch, and whenever the run stops;
- Ctrl-C: the first finishes the epoch, saves and stops; a second quits at once;
- agreement across processes (`any_process`), so every process takes the same branch;
- keyed random generators (run/rng.py).

A loop drives it:

    session.start(resume, start_epoch)
    with session.interruptible():
        while epoch < epochs and not session.stopped:
            metrics = ...one epoch...
            session.log(epoch, metrics)
            if session.end_of_epoch(epoch + 1):
                save(epoch + 1)
    session.close()
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from pathlib import Path

import torch

from ..io import atomic_write_text
from .metrics import MetricsLog
from .resume import NAME
from .rng import keyed_generator
from .trackers import open_log


class Session:
    def __init__(self, run_dir: Path, accelerator, *, seed: int, epochs: int, save_every: int, report_to: str,
                 config: dict, config_text: str):
        self.run_dir, self.accelerator, self.seed = run_dir, accelerator, seed
        self.epochs, self.save_every, self.report_to = epochs, save_every, report_to
        self.config, self.config_text = config, config_text
        self.is_main = accelerator.is_main_process
        self.log_: MetricsLog | None = None
        self.stopped = False  # Ctrl-C asked for a stop (on some process, once agreed)
        self.created = False  # this session made the run folder (a fresh run in a new folder)

    # ------------------------------------------------------------------ processes and randomness
    def any_process(self, flag: bool) -> bool:
        """Whether `flag` is true on any process (every process must call it, and gets the same answer)."""
        t = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def generator(self, purpose: int, *key: int) -> torch.Generator:
        return keyed_generator(self.seed, purpose, *key)

    # ------------------------------------------------------------------ the folder
    def start(self, start_epoch: int, resume: bool) -> None:
        """Write config.yaml (main process) and open the metrics log from `start_epoch`."""
        if self.is_main:
            self.created = not self.run_dir.exists() and not resume
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / NAME, self.config_text)
            try:
                self.log_ = open_log(self.run_dir, self.report_to, self.config, start_epoch, resume)
            except Exception:
                if self.created:  # a run that never started leaves no folder behind
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise

    @property
    def rows(self) -> list[dict]:
        return self.log_.rows if self.log_ is not None else []

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.log_ is not None:
            self.log_.log(epoch, metrics)

    def log_image(self, key: str, path: Path, step: int) -> None:
        if self.log_ is not None and path.exists():
            self.log_.log_image(key, path, step)

    def close(self) -> None:
        if self.log_ is not None:
            self.log_.close()
            self.log_ = None

    def abandon(self, ckpt_dir: Path) -> None:
        """After an error: a run this session created that never wrote a checkpoint leaves no
        folder behind (there is nothing to resume), so the same command can start it again."""
        from .checkpoint import list_checkpoints

        if self.is_main and self.created and not list_checkpoints(ckpt_dir):
            self.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # ------------------------------------------------------------------ stopping and saving
    def end_of_epoch(self, epochs_done: int) -> bool:
        """After an epoch: agree on a stop across processes, and say whether to save now."""
        self.stopped = self.any_process(self.stopped)
        return epochs_done % self.save_every == 0 or epochs_done == self.epochs or self.stopped

    @contextlib.contextmanager
    def interruptible(self):
        """Ctrl-C within: the first sets `stopped` (the loop saves after its epoch), a second
        raises KeyboardInterrupt (the last checkpoint is intact)."""
        def on_interrupt(signum, frame) -> None:
            if self.stopped:
                raise KeyboardInterrupt
            self.stopped = True
            if self.is_main:
                print("\nCtrl-C: finishing this epoch and saving a checkpoint (Ctrl-C again to quit now)")

        try:
            previous = signal.signal(signal.SIGINT, on_interrupt)
        except ValueError:  # not the main thread: Ctrl-C keeps its default behaviour
            previous = None
        try:
            yield self
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
