"""run.report_to: one short run logged offline to TensorBoard, W&B (offline mode), Trackio (local
SQLite) and MLflow (a store in the run folder), each read back; and the config-time refusals."""

import importlib.util
import json
import sqlite3
import sys

import pytest

from ddrl.config import ConfigError
from ddrl.config_checks import validate
from helpers import train

from test_train import tiny_config

# find_spec, not an import: trackio reads TRACKIO_DIR once, when it is first imported
pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("wandb", "trackio", "mlflow")),
                                reason="the tracker packages are test extras")


@pytest.fixture(scope="module")
def tracked_run(tiny_sd_folder, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("trackers")
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    assert "trackio" not in sys.modules, "trackio was imported before TRACKIO_DIR could be set"
    mp.setenv("TRACKIO_DIR", str(tmp / "trackio"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(tiny_sd_folder, **{"run.epochs": 2, "eval.grid_every": 1,
                                         "run.report_to": "tensorboard,wandb,trackio,mlflow"})
    run_dir = tmp / "run"
    train(cfg, run_dir)
    yield run_dir, tmp
    mp.undo()


def test_tensorboard_has_metrics_and_grids(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tracked_run[0] / "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("reward/mean")] == [0, 1]
    assert {"grids/before", "grids/epoch", "grids/after", "reward_curve"} <= set(ea.Tags()["images"])


def test_wandb_offline_run_has_metrics_and_images(tracked_run):
    runs = list((tracked_run[0] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"reward/mean" in record and b"train/loss" in record
    images = {p.parent.name if p.parent.name == "grids" else "" for p in runs[0].glob("files/media/images/**/*.png")}
    names = sorted(p.name.rsplit("_", 2)[0] for p in runs[0].glob("files/media/images/**/*.png"))
    assert images == {"grids", ""} and names == ["after", "before", "epoch", "epoch", "reward_curve"]


def test_trackio_local_run_has_metrics(tracked_run):
    run_dir, tmp = tracked_run
    db = sqlite3.connect(tmp / "trackio" / "ddrl.db")
    tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
    assert "metrics" in tables
    rows = db.execute("select run_name, step, metrics from metrics").fetchall()
    logged = [(step, json.loads(text)) for name, step, text in rows if name == run_dir.name]
    assert [s for s, m in logged if "reward/mean" in m] == [0, 1]


def test_mlflow_local_store_has_metrics_params_and_artifacts(tracked_run):
    import mlflow

    run_dir = tracked_run[0]
    client = mlflow.MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("ddrl").experiment_id])
    assert run.data.params["train.algorithm"] == "ddpo-is"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "reward/mean")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"grids", "reward_curve.png"} <= artifacts


def test_report_to_refusals(tiny_sd_folder, monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'wandbb'.*tensorboard, wandb, trackio, mlflow"):
        validate(tiny_config(tiny_sd_folder, **{"run.report_to": "wandbb"}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "trackio" else real(n, *a))
    with pytest.raises(ConfigError, match="needs trackio: pip install trackio"):
        validate(tiny_config(tiny_sd_folder, **{"run.report_to": "trackio"}))
    validate(tiny_config(tiny_sd_folder, **{"run.report_to": "none"}))
    with pytest.raises(ConfigError, match="'none' turns every tracker off, so it cannot be listed with others"):
        validate(tiny_config(tiny_sd_folder, **{"run.report_to": "none,wandb"}))


def _refused_before_any_model_loads(cfg, run_dir, match):
    """`ddrl train`'s checks (`check_run`, which loads no model) refuse it, and make no folder."""
    from ddrl.images import check_run

    with pytest.raises(ValueError, match=match):
        check_run(cfg, run_dir)
    assert not run_dir.exists()


def test_wandb_without_credentials_is_refused_before_any_model_loads(tiny_sd_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    cfg = tiny_config(tiny_sd_folder, **{"run.report_to": "tensorboard,wandb"})
    _refused_before_any_model_loads(cfg, tmp_path / "run", r"run.report_to wandb: no W&B credentials .*wandb login.*"
                                    r"WANDB_MODE=offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    _refused_before_any_model_loads(cfg, tmp_path / "run", r"run.report_to wandb: cannot reach http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_MODE", "offline")  # offline needs neither
    from ddrl.images import check_run

    check_run(cfg, tmp_path / "run")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "https://127.0.0.1:9/some/path"])
def test_an_unreachable_mlflow_server_is_refused_before_any_model_loads(uri, tiny_sd_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = tiny_config(tiny_sd_folder, **{"run.report_to": "mlflow"})
    _refused_before_any_model_loads(cfg, tmp_path / "run", rf"run.report_to mlflow: cannot reach {uri}")


def test_a_tracker_that_fails_to_start_is_one_line_and_leaves_no_run_folder(tiny_sd_folder, tmp_path, monkeypatch):
    """Past the checks, a tracker can still fail at its start (a server that refuses the key, a
    full disk): one line naming it, and the fresh run's folder removed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    def refuse(self):
        raise PermissionError("401 Unauthorized: the API key was revoked\nmore lines")

    monkeypatch.setattr(LOGGER_TYPE_TO_CLASS["mlflow"], "start", refuse)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    from ddrl.run.trackers import TrackerError

    with pytest.raises(TrackerError, match=r"^run.report_to mlflow: the tracker could not start \(PermissionError: "
                       r"401 Unauthorized: the API key was revoked\)$"):
        train(tiny_config(tiny_sd_folder, **{"run.report_to": "mlflow"}), run)
    assert not run.exists()
