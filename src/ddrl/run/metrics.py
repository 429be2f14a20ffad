"""Run metrics: one JSON line per epoch (the record of truth), mirrored to TensorBoard and the
trackers of `run.report_to`, and a reward-curve PNG redrawn as the run goes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import atomic_write, atomic_write_text


class MetricsLog:
    """`metrics.jsonl` in the run folder. On resume from epoch E, lines of epochs >= E (written
    after the checkpoint a killed run resumes from) are dropped so the file equals an
    uninterrupted run's."""

    def __init__(self, run_dir: Path, start_epoch: int, tensorboard: bool = True, trackers=None):
        self.path = run_dir / "metrics.jsonl"
        self.trackers = trackers  # train.trackers.Trackers, or None
        self.rows = [r for r in read_metrics(self.path) if r["epoch"] < start_epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but a broken install should not stop a run
                pass
            else:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch)

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        row = {"epoch": epoch} | {k: float(v) for k, v in metrics.items()}
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if math.isfinite(float(v)):
                    self.tb.add_scalar(k, float(v), epoch)
            self.tb.flush()
        if self.trackers is not None:
            self.trackers.log({k: float(v) for k, v in metrics.items()}, step=epoch)

    def log_image(self, key: str, path: Path, step: int) -> None:
        """A PNG of the run folder (a sample grid, the reward curve) shown in every tracker."""
        if self.tb is not None:
            import numpy as np
            from PIL import Image

            self.tb.add_image(key, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")
            self.tb.flush()
        if self.trackers is not None:
            self.trackers.log_image(key, path, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.trackers is not None:
            self.trackers.finish()


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
    return rows


def rolling_window(epochs: int) -> int:
    """About a fifth of the run, between 1 and 10 epochs."""
    return max(1, min(10, epochs // 5))


def _rolling(ax, x: list, m: list, color: str) -> None:
    w = rolling_window(len(m))
    if w > 1:  # one epoch's mean is noisy; the trend is what shows learning
        roll = [sum(m[max(0, i - w + 1):i + 1]) / len(m[max(0, i - w + 1):i + 1]) for i in range(len(m))]
        ax.plot(x, roll, color=color, lw=2.2, label=f"rolling mean over {w} epochs")


def plot_reward_curve(rows: list[dict], path: Path, reward_name: str, evals: dict | None = None) -> None:
    """Training reward mean +- std per epoch; held-out evaluation before/after as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    if rows and "reward/mean" in rows[0]:
        x = [r["epoch"] + 1 for r in rows]
        m = [r["reward/mean"] for r in rows]
        s = [r.get("reward/std", 0.0) for r in rows]
        ax.plot(x, m, color="C0", alpha=0.45, lw=1, label="training reward (mean over epoch samples)")
        ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color="C0", alpha=0.1)
        _rolling(ax, x, m, "C0")
    elif rows and "train/implicit_accuracy" in rows[0]:  # offline training: no rewards until the evaluation
        twin = ax.twinx()
        x, m = [r["epoch"] + 1 for r in rows], [r["train/implicit_accuracy"] for r in rows]
        twin.plot(x, m, color="C3", alpha=0.45, lw=1, label="implicit accuracy on training pairs")
        _rolling(twin, x, m, "C3")
        twin.set_ylabel("implicit accuracy")
        twin.legend(fontsize=7, loc="lower right")
    for label, (epoch, value), color in [(k, v, c) for (k, v), c in zip((evals or {}).items(), ("C1", "C2"))]:
        ax.plot([epoch], [value], "o", color=color, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(reward_name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    plt.close(fig)
