"""A run's state stays trustworthy: non-finite values stop it (or skip a step) naming what went
wrong, --resume continues only the config the run was started with and survives a damaged latest
checkpoint, failed writes keep the previous checkpoint, Ctrl-C exits 130, and kill -9 at random
moments always resumes to the uninterrupted run."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_bad_input import _one_line_error
from test_train import _final_weights, _rows, cli_train_command, tiny_config

from ddrl.cli import main
from helpers import train
from ddrl.run.checkpoint import CheckpointWriteError

from ddrl.run.finite import NonFiniteError
from ddrl.images.loop import ImageRun

# ------------------------------------------------------------------ the finite-state guard

def _trainer(folder, run, **overrides):
    return ImageRun(tiny_config(folder, **{"run.output_dir": str(run)} | overrides), run)


def _poison_gradient(tr, at_steps):
    """Gradients of the first trainable tensor become NaN at the given backward passes (1-based)."""
    calls = {"n": 0}

    def hook(g):
        calls["n"] += 1
        return g * float("nan") if calls["n"] in at_steps else g

    tr.params[0].register_hook(hook)


def test_a_non_finite_gradient_stops_the_run_naming_it_and_keeps_the_checkpoint(tiny_sd_folder, tmp_path):
    tr = _trainer(tiny_sd_folder, tmp_path)
    _poison_gradient(tr, at_steps={2})
    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm \(nan\) at epoch 2, after 1 optimizer steps"
                       r".*epoch_000001, is intact.*train.nonfinite skip"):
        tr.run()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_000001"]
    assert all(torch.isfinite(v).all() for v in _final_weights(tmp_path).values())


def test_skip_mode_skips_and_counts_non_finite_steps(tiny_sd_folder, tmp_path):
    tr = _trainer(tiny_sd_folder, tmp_path, **{"train.nonfinite": "skip"})
    _poison_gradient(tr, at_steps={1, 3})
    tr.run()
    assert [r["train/skipped_steps"] for r in _rows(tmp_path)] == [1.0, 0.0, 1.0]
    assert tr.optimizer_steps == 1
    assert all(torch.isfinite(v).all() for v in _final_weights(tmp_path).values())


@pytest.mark.parametrize("where", ["weights", "images"])
def test_non_finite_weights_or_decoded_images_stop_the_run(tiny_sd_folder, tmp_path, where):
    tr = _trainer(tiny_sd_folder, tmp_path, **{"train.nonfinite": "skip"})  # these cannot be skipped
    if where == "weights":
        update = tr.algorithm.update

        def poisoned(*a, **k):
            out = update(*a, **k)
            with torch.no_grad():
                tr.params[-1].view(-1)[0] = float("inf")
            return out
        tr.algorithm.update = poisoned
        match = r"non-finite weights \(.*lora.*\) at epoch 1"
    else:
        tr.evaluate("before")  # cached: the poisoned decoder is met in training's sampling
        decode = tr.policy.decode
        tr.policy.decode = lambda z: decode(z) * float("nan")
        match = r"non-finite decoded images or log-probs in sampling batch 1 at epoch 1"
    with pytest.raises(NonFiniteError, match=match):
        tr.run()
    assert not (tmp_path / "checkpoints").exists()


# ------------------------------------------------------------------ resume integrity

@pytest.fixture(scope="module")
def two_epoch_run(tiny_sd_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("two") / "run"
    cfg = tiny_config(tiny_sd_folder, **{"run.epochs": 2, "run.output_dir": str(run)})
    train(cfg, run)
    return run


@pytest.fixture(scope="module")
def three_epoch_run(tiny_sd_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("three") / "run"
    train(tiny_config(tiny_sd_folder, **{"run.epochs": 3, "run.output_dir": str(run)}), run)
    return run


@pytest.fixture
def run_copy(two_epoch_run, tmp_path):
    return shutil.copytree(two_epoch_run, tmp_path / "run")


def test_a_truncated_or_edited_config_is_refused_naming_the_keys(run_copy, capsys):
    text = (run_copy / "config.yaml").read_text()
    (run_copy / "config.yaml").write_text("".join(text.splitlines(keepends=True)[:42]))  # cut at a line boundary
    err = _one_line_error(["train", "--resume", str(run_copy), "--run.epochs", "3"], capsys)
    assert "is incomplete" in err and "train.advantages" in err and "checkpoints/epoch_000002/config.yaml" in err
    for old, new, key in [("name: jpeg-compressibility", "name: shapes-verifier", "reward.name"),
                          ("epochs: 2", "epochs: 20", "run.epochs"), ("eta: 1.0", "eta: 0.5", "sample.eta")]:
        (run_copy / "config.yaml").write_text(text.replace(old, new, 1))
        err = _one_line_error(["train", "--resume", str(run_copy), "--run.epochs", "3"], capsys)
        assert "was edited or damaged" in err and key in err and "--resume-override" in err
    (run_copy / "config.yaml").write_bytes(b"model:\n  name: \xff\xfe\n")
    assert "not UTF-8" in _one_line_error(["train", "--resume", str(run_copy)], capsys)


def test_resume_allows_only_safe_changes_unless_overridden(run_copy, capsys):
    for args, key in [(["--run.epochs", "1"], "run.epochs: 2 in the run, 1 given"),
                      (["--train.learning-rate", "1e-3"], "train.learning_rate"),
                      (["--reward.name", "jpeg-incompressibility"], "reward.name")]:
        err = _one_line_error(["train", "--resume", str(run_copy), *args], capsys)
        assert "resuming with another config" in err and key in err
    assert (run_copy / "config.yaml").read_text().count("epochs: 2") == 1  # untouched
    # safe keys: more epochs, another grid and checkpoint cadence
    assert main(["train", "--resume", str(run_copy), "--run.epochs", "3", "--eval.grid-every", "1",
                 "--run.keep-checkpoints", "3"]) == 0
    assert "run.epochs: 2 -> 3" in capsys.readouterr().out
    after = json.loads((run_copy / "eval_after.json").read_text())
    assert after["epoch"] == 3  # the extended run is evaluated again, not the cached epoch-2 result
    assert main(["train", "--resume", str(run_copy), "--run.epochs", "4", "--train.learning-rate", "1e-3",
                 "--resume-override"]) == 0
    assert "train.learning_rate: None -> 0.001" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["flip a byte", "delete the optimizer", "truncate state.json"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(run_copy, three_epoch_run, damage, capsys):
    latest = run_copy / "checkpoints" / "epoch_000002"
    if damage == "flip a byte":
        data = bytearray((latest / "trainable.safetensors").read_bytes())
        data[-3] ^= 0x10
        (latest / "trainable.safetensors").write_bytes(bytes(data))
    elif damage == "delete the optimizer":
        (latest / "optimizer.safetensors").unlink()
    else:
        (latest / "state.json").write_text((latest / "state.json").read_text()[:30])
    assert main(["train", "--resume", str(run_copy), "--run.epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "epoch_000002 is damaged" in out and "resuming from the checkpoint before it" in out
    assert (run_copy / "checkpoints" / "damaged_epoch_000002").is_dir()
    ref = three_epoch_run  # the same three epochs, never interrupted
    assert _rows(run_copy) == _rows(ref)
    want, got = _final_weights(ref), _final_weights(run_copy)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_damaged_evaluation_cache_names_the_file(run_copy, capsys):
    (run_copy / "eval_before.json").write_text('{"heldout": {"rew')
    err = _one_line_error(["train", "--resume", str(run_copy), "--run.epochs", "3"], capsys)
    assert "eval_before.json is damaged" in err and "cannot redo" in err


# ------------------------------------------------------------------ file-system errors during a run

def test_a_failed_checkpoint_write_keeps_the_previous_one_and_resumes(tiny_sd_folder, tmp_path, monkeypatch):
    import ddrl.run.checkpoint as ckpt

    real, calls = ckpt.save_file, {"n": 0}

    def disk_full(tensors, path, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # the second checkpoint's first file
            with open(path, "wb") as f:
                f.write(b"half")
            raise OSError(28, "No space left on device")
        return real(tensors, path, **kw)

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    cfg = tiny_config(tiny_sd_folder, **{"run.output_dir": str(tmp_path)})
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*epoch_000002.*No space left"
                       r".*the previous checkpoint, .*epoch_000001, is intact"):
        train(cfg, tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_000001"]  # no temporary folder
    monkeypatch.setattr(ckpt, "save_file", real)
    train(cfg, tmp_path, resume=True)
    assert [r["epoch"] for r in _rows(tmp_path)] == [0, 1, 2]


def test_a_real_file_size_limit_is_one_line_and_leaves_no_partial_checkpoint(tiny_sd_folder, tmp_path):
    """RLIMIT_FSIZE makes writes past a size fail with EFBIG, as a full disk fails them."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000)); from ddrl.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    run = tmp_path / "run"
    args = ["train", "shapes-alignment", "--model.name", str(tiny_sd_folder), "--reward.name", "jpeg-compressibility",
            "--sample.num-steps", "2", "--sample.batch-size", "2", "--sample.num-batches-per-epoch", "1",
            "--train.batch-size", "2", "--sample.images-per-prompt", "2", "--run.epochs", "1",
            "--eval.max-prompts", "1", "--eval.grid-every", "0",
            "--eval.images-per-prompt", "1", "--eval.train-images-per-prompt", "0", "--run.output-dir", str(run)]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "could not write checkpoint" in err[-1] and "File too large" in err[-1], err[-3:]
    assert "Traceback" not in out.stderr
    assert not run.exists()  # a run that never wrote a checkpoint leaves no folder behind


def test_ctrl_c_saves_and_exits_130(tiny_sd_folder, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli_train_command(tiny_sd_folder, run, 50), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "epoch_000001").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-1000:]
    assert "checkpoint saved" in out
    assert len(list((run / "checkpoints").iterdir())) >= 1




# ------------------------------------------------------------------ kill -9 at random moments

@pytest.mark.slow
def test_kill_9_at_twenty_random_moments_always_resumes_to_the_uninterrupted_run(tiny_sd_folder, tmp_path):
    """`ddrl train` is killed with SIGKILL at a moment drawn uniformly over an uninterrupted run's
    length (start-up, evaluation, sampling, training, checkpoint and report writes alike), then
    resumed (or started again if it died before writing its config), 20 times; the finished run
    has the uninterrupted run's weights, metrics and evaluations exactly."""
    def command(run, resume):
        if resume:
            return [sys.executable, "-m", "ddrl.cli", "train", "--resume", str(run)]
        return cli_train_command(tiny_sd_folder, run, 6, "--sample.images-per-prompt", "2", "--eval.max-prompts", "2",
                                 "--eval.images-per-prompt", "1", "--eval.grid-every", "2", "--eval.grid-size", "2")

    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    subprocess.run(command(ref, False), check=True, capture_output=True)
    length = time.perf_counter() - t0

    def same_as_ref(run):
        assert _rows(run) == _rows(ref)
        want, got = _final_weights(ref), _final_weights(run)
        assert all(torch.equal(want[k], got[k]) for k in want)
        for name in ("eval_before.json", "eval_after.json"):
            assert json.loads((run / name).read_text()) == json.loads((ref / name).read_text())

    rng, kills, starts, finished = random.Random(0), 0, 0, 0
    run = tmp_path / "killed0"
    while True:
        fresh = not (run / "config.yaml").exists()
        proc = subprocess.Popen(command(run, not fresh), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        starts, t0 = starts + 1, time.perf_counter()
        try:
            _, err = proc.communicate(timeout=rng.uniform(0, length) if kills < 20 else 600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            kills += 1
            continue
        if fresh:  # the machine may be faster now than when the reference ran: keep drawing over a whole run
            length = min(length, time.perf_counter() - t0)
        assert proc.returncode == 0, err.decode()[-2000:]
        same_as_ref(run)
        finished += 1
        if kills >= 20:
            break
        run = tmp_path / f"killed{finished}"  # a run that finished early: the next kills hit a new one
    print(f"{kills} kills over {starts} starts and {finished} runs; an uninterrupted run takes {length:.1f} s")


def test_a_run_started_before_keys_were_added_resumes_with_their_defaults(tmp_path):
    """config.yaml of an earlier release lacks the keys in config_run.ADDED (hash intact): it reads, and
    the missing keys take their defaults, while a file missing any other key is still refused."""
    import hashlib

    import yaml

    from ddrl.config import Config, ConfigError, apply_overrides
    from ddrl.config_run import ADDED, read_run_config

    def write(data):
        body = yaml.safe_dump(data, sort_keys=False)
        digest = hashlib.sha256(body.encode()).hexdigest()
        (tmp_path / "config.yaml").write_text(f"# ddrl run config, sha256 {digest}\n{body}")

    earlier = Config().to_dict()
    del earlier["data"]
    for key in (k for k in ADDED if "." in k):
        section, _, name = key.partition(".")
        if section in earlier:  # dpo.*: the options of algorithms this run does not train
            del earlier[section][name]
    write(earlier)
    assert read_run_config(tmp_path) == apply_overrides(Config(), {})  # the defaults, options filled in
    del earlier["train"]["ema_decay"]
    write(earlier)
    with pytest.raises(ConfigError, match="incomplete.*train.ema_decay"):
        read_run_config(tmp_path)
    # keys whose default changed what a run does resume with the earlier behaviour (config_run.LEGACY)
    for algorithm, section, legacy in (("nft", "nft", {"integer_timesteps": False}),
                                       ("pref-grpo", "pref_grpo", {"steps": "first"})):
        cfg = apply_overrides(Config(), {"train.algorithm": algorithm, "sample.sampler": "flow-sde",
                                         "model.name": "shapes-flow", "train.advantages": "group",
                                         "sample.images_per_prompt": 4})
        data = cfg.to_dict()
        for name in legacy:
            del data[section][name]
        if not data[section]:
            del data[section]
        write(data)
        got = read_run_config(tmp_path)
        assert {k: getattr(got.options, k) for k in legacy} == legacy
        assert got.options != cfg.options  # a new run of this release gets the reference's behaviour
