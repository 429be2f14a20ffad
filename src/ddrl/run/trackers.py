"""Experiment trackers beside the run folder's own records (`run.report_to`).

TensorBoard is written by MetricsLog into the run folder (it truncates the epochs a resumed run
repeats). W&B, Trackio and MLflow go through accelerate's tracker classes, the ones
`Accelerator(log_with=...)` uses, so their settings and environment variables are the usual ones
(WANDB_MODE=offline, TRACKIO_DIR, MLFLOW_TRACKING_URI, ...). Each gets the config, the per-epoch
metrics, the sample grids and the final reward curve.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from ..config import flatten

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")  # each also the name of its Python package


def parse_report_to(value: str) -> list[str]:
    """`"tensorboard,wandb"` -> the names; "none" or "" -> []. Raises ValueError for unknown names."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if "none" in names:
        raise ValueError(f"run.report_to {value!r}: 'none' turns every tracker off, so it cannot be listed with "
                         "others; give either none or the trackers")
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"run.report_to: unknown tracker {unknown[0]!r}; use a comma-separated list of "
                         f"{', '.join(TRACKERS)}, or none")
    return list(dict.fromkeys(names))


def missing_packages(names: list[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


class TrackerError(ValueError):
    """A tracker cannot log; the message says which and what to set."""


OFFLINE_WANDB_MODES = ("offline", "disabled", "dryrun")


def preflight(report_to: str, timeout: float = 5.0) -> None:
    """Before any model loads: each tracker that logs to a server has credentials and can reach
    it, so a run does not load a model and then fail (or retry for minutes) at its first log."""
    names = parse_report_to(report_to)
    if "wandb" in names and os.environ.get("WANDB_MODE", "").lower() not in OFFLINE_WANDB_MODES:
        base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        host = urlsplit(base).hostname or base
        if not os.environ.get("WANDB_API_KEY") and not _netrc_has(host):
            raise TrackerError(f"run.report_to wandb: no W&B credentials for {host} (WANDB_API_KEY or ~/.netrc); run "
                               "`wandb login`, or set WANDB_MODE=offline to log locally and sync later")
        _reachable("wandb", base, timeout, "or set WANDB_MODE=offline to log locally and sync later")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if "mlflow" in names and uri.startswith(("http://", "https://")):
        _reachable("mlflow", uri, timeout, "or unset MLFLOW_TRACKING_URI to keep MLflow's store in the run folder")


def _netrc_has(host: str) -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(name: str, url: str, timeout: float, fix: str) -> None:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise TrackerError(f"run.report_to {name}: cannot reach {url} ({e.strerror or type(e).__name__}, "
                           f"{timeout:g} s); check the address and the network, {fix}") from None


def open_log(run_dir: Path, report_to: str, config: dict, start_epoch: int, resume: bool):
    """The run's MetricsLog, writing to the trackers of `report_to` (each given the nested `config`)."""
    from .metrics import MetricsLog

    names = parse_report_to(report_to)
    external = [n for n in names if n != "tensorboard"]
    trackers = Trackers(external, run_dir, config, resume) if external else None
    return MetricsLog(run_dir, start_epoch, tensorboard="tensorboard" in names, trackers=trackers)


class Trackers:
    """The trackers of one run other than TensorBoard (main process only)."""

    def __init__(self, names: list[str], run_dir: Path, config: dict, resume: bool):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.trackers = []
        name = run_dir.name
        for n in names:
            if n == "wandb":
                # a stable id per run folder, so --resume continues the same W&B run
                kwargs = {"dir": str(run_dir), "id": _safe_id(run_dir), "resume": "allow", "name": name}
                tracker = LOGGER_TYPE_TO_CLASS[n]("ddrl", **kwargs)
            elif n == "trackio":
                tracker = LOGGER_TYPE_TO_CLASS[n]("ddrl", name=name, resume="allow" if resume else "never")
            else:  # mlflow: the run folder holds the store unless MLFLOW_TRACKING_URI says otherwise
                if "MLFLOW_TRACKING_URI" not in os.environ:
                    _local_mlflow_store(run_dir)
                tracker = LOGGER_TYPE_TO_CLASS[n](experiment_name="ddrl", run_name=name)
            try:
                tracker.start()
                tracker.store_init_configuration(flatten(config))
            except Exception as e:  # noqa: BLE001 - each tracker library fails its own way; one line says which
                self.finish()
                raise TrackerError(f"run.report_to {n}: the tracker could not start ({type(e).__name__}: "
                                   f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from e
            self.trackers.append(tracker)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log(metrics, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        """A PNG already written to the run folder (a sample grid, the reward curve)."""
        for t in self.trackers:
            if t.name == "wandb":
                import numpy as np
                from PIL import Image

                t.log_images({key: [np.asarray(Image.open(path).convert("RGB"))]}, step=step)
            elif t.name == "trackio":
                import trackio

                t.log({key: trackio.Image(str(path))}, step=step)
            elif t.name == "mlflow":
                t.log_artifact(str(path), artifact_path=key.rpartition("/")[0] or None)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []


def _safe_id(run_dir: Path) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in run_dir.resolve().name)[:64]


def _local_mlflow_store(run_dir: Path) -> None:
    """MLflow's SQLite store in the run folder when SQLAlchemy is installed (full mlflow), else
    its file store there (mlflow-skinny), which MLflow 3 keeps working behind an opt-in."""
    import mlflow

    if importlib.util.find_spec("sqlalchemy") is not None:
        mlflow.set_tracking_uri(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    else:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
