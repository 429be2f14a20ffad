"""Bad input never passes silently: non-finite and out-of-range numbers, paths and ports that
cannot be used, unbounded or undecodable inputs, and bad reward data or server requests, each a
clear error before any work. One test (or a parametrized family) per class, each on several inputs
of that class. The state of a training run is covered by test_run_integrity.py."""

import base64
import io
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from test_reward_remote import _Serving, _shapes_batch
from test_train import tiny_config

from ddrl.cli import main
from ddrl.config import Config, ConfigError, apply_overrides, load_yaml
from ddrl.config_checks import RANGES, validate
from ddrl.prompts import load_prompt_records
from ddrl.rewards import RewardError, get_reward, score
from ddrl.rewards.spec import parse
from ddrl.images.loop import ImageRun


def _one_line_error(argv, capsys, code=2) -> str:
    capsys.readouterr()  # what the test printed before (a model loaded outside the CLI shows its bars)
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


# ------------------------------------------------------------------ 1. numbers

@pytest.mark.parametrize("key, value, message", [
    ("train.learning_rate", float("inf"), "must be a finite number, got inf"),
    ("train.learning_rate", float("nan"), "must be a finite number, got nan"),
    ("train.learning_rate", 0.0, "must be in (0, inf), got 0"),
    ("sample.guidance_scale", float("nan"), "must be a finite number"),
    ("sample.guidance_scale", 0.5, "must be 0 or 1 (no guidance) or greater than 1, got 0.5"),
    ("sample.guidance_scale", -2.0, "must be 0 or 1 (no guidance)"),
    ("sample.eta", float("nan"), "must be a finite number"),
    ("train.clip_range", float("inf"), "must be a finite number"),
    ("train.ema_decay", float("nan"), "must be a finite number"),
    ("train.adam_beta2", 1.0, "must be in [0, 1), got 1"),
    ("train.kl_coef", -0.1, "must be in [0, inf)"),
    ("rwr.percentile", float("nan"), "must be a finite number"),
    ("nft.beta", 0.0, "must be in (0, inf)"),
    ("model.lora_alpha", 0.0, "must be in (0, inf)"),
    ("run.seed", -1, "must be in [0, 4294967295]"),
    ("sample.noise_level", float("-inf"), "must be a finite number"),
])
def test_every_number_of_the_config_is_finite_and_in_range(key, value, message):
    algorithm = {"rwr": "rwr", "nft": "nft"}.get(key.partition(".")[0])
    cfg = apply_overrides(Config(), {"train.algorithm": algorithm, "sample.sampler": "flow-ode"}
                          if algorithm == "nft" else {"train.algorithm": algorithm} if algorithm else {})
    with pytest.raises(ConfigError) as info:
        validate(apply_overrides(cfg, {key: value}))
    assert str(info.value).startswith(key) and message in str(info.value)


def test_every_numeric_config_key_has_a_stated_range_and_yaml_nan_is_caught(tmp_path):
    import typing

    from ddrl.config import _sections

    numeric = [f"{name}.{f}" for name, section in _sections().items()
               for f, hint in typing.get_type_hints(section).items()
               if any(a in (int, float) for a in typing.get_args(hint) or (hint,))
               and f"{name}.{f}" != "sample.guidance_scale"]
    assert sorted(numeric) == sorted(RANGES)  # None-valued optional numbers included
    from ddrl.algorithms import ALGORITHMS
    from ddrl.options import field_docs

    for name, algorithm in ALGORITHMS.items():  # an algorithm's options carry their ranges beside them
        hints = typing.get_type_hints(algorithm.Options)
        for f, (doc, rng) in field_docs(algorithm.Options).items():
            if any(a in (int, float) for a in typing.get_args(hints[f]) or (hints[f],)) and hints[f] is not bool:
                assert rng, f"{algorithm.Options.section}.{f} ({name}) states no range"
    (tmp_path / "c.yaml").write_text("train:\n  learning_rate: .nan\nsample:\n  guidance_scale: .inf\n")
    with pytest.raises(ConfigError, match="must be a finite number"):
        validate(apply_overrides(Config(), load_yaml(tmp_path / "c.yaml")))


def test_guidance_zero_and_one_both_mean_no_guidance(tiny_sd_folder):
    from ddrl.models import load_policy
    from ddrl.models.policy import guided_prediction

    policy = load_policy(str(tiny_sd_folder))
    x, t = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
    with torch.no_grad():
        cond, uncond = policy.encode(["a red circle", "two squares"]), policy.encode([""]).repeat(2)
        zero, one = (guided_prediction(policy, x, t, cond, uncond, g) for g in (0.0, 1.0))
        five = guided_prediction(policy, x, t, cond, uncond, 5.0)
    assert torch.equal(zero, one) and not torch.equal(one, five)
    validate(apply_overrides(Config(), {"sample.guidance_scale": 0.0}))


@pytest.mark.parametrize("argv, message", [
    (["sample", "--guidance", "nan"], "must be a finite number"),
    (["sample", "--guidance", "0.5"], "must be 0 or 1 (no guidance)"),
    (["sample", "--eta", "nan"], "must be a finite number"),
    (["sample", "--steps", "inf"], "expected an integer"),
    (["sample", "--seed", "-5"], "must be in [0, 4294967295]"),
    (["pretrain", "vae", "--minutes", "inf"], "must be a finite number"),
    (["reward-train", "p.jsonl", "--out", "o", "--lr", "nan"], "must be a finite number"),
    (["reward-train", "p.jsonl", "--out", "o", "--lr", "0"], "must be in (0, inf)"),
    (["reward-server", "--reward", "aesthetic", "--port", "70000"], "must be in [0, 65535]"),
])
def test_command_line_numbers_are_checked_by_the_same_rules(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["nan*jpeg-compressibility", "jpeg-compressibility + inf*aesthetic",
                                  "remote:http://127.0.0.1:1(timeout=nan)", "-inf*aesthetic"])
def test_reward_specs_refuse_non_finite_weights_and_options(spec):
    with pytest.raises(RewardError, match="not a finite number"):
        parse(spec)


# ------------------------------------------------------------------ 2. file-system and network errors

def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    (tmp_path / "a_dir.png").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["sample", "--out", str(tmp_path / "a_dir.png")], "is a folder"),
        (["sample", "--out", str(tmp_path / "a_file" / "grid.png")], "is a file, not a folder"),
        (["evaluate", "--json", str(tmp_path)], "is a folder"),
        (["train", "--run.output-dir", str(tmp_path / "a_file")], "is a file, not a folder"),
        (["reward-pairs", "--out", str(tmp_path / "a_file")], "is a file, not a folder"),
        (["pretrain", "vae", "--work-dir", str(tmp_path / "a_file" / "w")], "is a file, not a folder"),
    ]
    for argv, message in cases:
        t0 = time.perf_counter()
        err = _one_line_error(argv, capsys)
        assert message in err and time.perf_counter() - t0 < 5, (argv, err)  # before any model is loaded
    assert not list(tmp_path.rglob(".*tmp*"))


def test_os_errors_are_one_line_naming_the_path_and_the_fix():
    import errno

    from ddrl.cli import os_error_message

    cases = [(errno.ENOSPC, "/runs/x/metrics.jsonl", "free some disk space"),
             (errno.EACCES, "/runs/x", "check the permissions"),
             (errno.EROFS, "/mnt/ro/run", "read-only"), (errno.ENOTDIR, "/a/file/b", "a parent of the path is a file")]
    for code, path, fix in cases:
        message = os_error_message(OSError(code, os.strerror(code), path))
        assert message.startswith(f"{os.strerror(code)} ({path}): ") and fix in message
    assert os_error_message(OSError("could not write checkpoint X; the previous one is intact")).startswith("could")


def test_a_full_disk_seen_by_safetensors_is_one_line(monkeypatch, capsys):
    import ddrl.cli
    from safetensors import SafetensorError

    def disk_full(args):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ddrl.cli, "cmd_presets", disk_full)
    err = _one_line_error(["presets"], capsys, code=1)
    assert "safetensors could not write a weights file" in err and "os error 28" in err


def test_reward_train_refuses_an_existing_model_before_training(tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "reward_model.json").write_text("{}")
    err = _one_line_error(["reward-train", str(tmp_path / "pairs.jsonl"), "--out", str(out)], capsys)
    assert "already holds a reward model" in err


def test_ports_and_hosts_are_checked_at_startup(capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        for args, message in [(["--port", str(port)], f"port {port} is in use"),
                              (["--host", "no-such-host.invalid"], "not an address or a known host name"),
                              (["--host", "192.0.2.77"], "not an address of this machine")]:
            err = _one_line_error(["reward-server", "--reward", "jpeg-compressibility", *args], capsys)
            assert message in err
    finally:
        busy.close()


# ------------------------------------------------------------------ 3. bounded and decodable inputs

def test_prompts_longer_than_the_text_encoder_reads_are_refused(tiny_sd_folder, tmp_path, capsys):
    (tmp_path / "long.txt").write_text("a red circle\n" + " ".join(["circle"] * 30) + "\n")
    cfg = tiny_config(tiny_sd_folder, **{"prompts.source": f"file:{tmp_path / 'long.txt'}"})
    with pytest.raises(ValueError, match=r"prompts.source file:.*long.txt: prompt 2 \('circle circle.*'\) is 32 "
                       r"tokens; the text encoder reads at most 16"):
        ImageRun(cfg, tmp_path / "run")
    (tmp_path / "huge.txt").write_text("x" * 10_000_000)
    err = _one_line_error(["sample", "--model", str(tiny_sd_folder), "--prompt-file", str(tmp_path / "huge.txt"),
                           "--out", str(tmp_path / "g.png")], capsys)
    assert "has 10000000 characters" in err
    err = _one_line_error(["sample", "--model", str(tiny_sd_folder), "--prompt", "a " * 20,
                           "--out", str(tmp_path / "g.png")], capsys)
    assert "--prompt: the prompt ('a a a" in err and "tokens" in err
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("line, message", [
    ('{"prompt": null}', r'"prompt" must be non-empty text, got None'),
    ('{"prompt": "   "}', r'"prompt" must be non-empty text'),
    ('{"prompt": 42}', r'"prompt" must be non-empty text, got 42'),
    ('{"task": "ocr"}', r'"prompt" must be non-empty text, got None'),
    ('["a red circle"]', r'"prompt" must be non-empty text'),
    ('{"prompt": "a red', "not JSON"),
])
def test_jsonl_prompts_must_be_non_empty_text(tmp_path, line, message):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:3: " + message):
        load_prompt_records(f"file:{tmp_path / 'p.jsonl'}")


def test_undecodable_files_name_the_file_and_line(tmp_path, capsys):
    bad = b"a red circle\ntwo squares\n\xff\xfe oops\n"
    for name in ("p.txt", "p.jsonl"):
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(ValueError, match=rf"{name}:3: not UTF-8"):
            load_prompt_records(f"file:{tmp_path / name}")
    (tmp_path / "c.yaml").write_bytes(b"train:\n  algorithm: ddpo-is\n  \xe9\n")
    assert "c.yaml:3: not UTF-8" in _one_line_error(["train", str(tmp_path / "c.yaml")], capsys)
    err = _one_line_error(["sample", "--prompt-file", str(tmp_path / "p.txt"), "--out", str(tmp_path / "g.png")],
                          capsys)
    assert "p.txt:3: not UTF-8" in err


# ------------------------------------------------------------------ 4. reward data and server

def _pairs_folder(tmp_path, rows):
    from PIL import Image

    for name, colour in [("a.png", (255, 0, 0)), ("b.png", (0, 0, 255)), ("a_copy.png", (255, 0, 0))]:
        Image.new("RGB", (16, 16), colour).save(tmp_path / name)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "pairs.jsonl"


@pytest.mark.parametrize("row, message", [
    ({"prompt": "a circle", "chosen": "a.png", "rejected": "b.png", "label": 0}, "unknown field(s) 'label'"),
    ({"prompt": "a circle", "chosen": "a.png", "rejected": "b.png", "chosen_score": 1}, "unknown field(s)"),
    ({"prompt": None, "chosen": "a.png", "rejected": "b.png"}, "prompt must be non-empty text, got None"),
    ({"prompt": "a circle", "chosen": "a.png", "rejected": ""}, "rejected must be non-empty text"),
    ({"prompt": "a circle", "chosen": "a.png", "rejected": "gone.png"}, "no image at"),
])
def test_reward_train_refuses_bad_rows_with_their_line(tmp_path, row, message):
    from ddrl.rewards.learned import read_pairs

    good = {"prompt": "a circle", "chosen": "a.png", "rejected": "b.png"}
    with pytest.raises(RewardError, match=r"pairs.jsonl:2: " + re.escape(message)):
        read_pairs(_pairs_folder(tmp_path, [good, row]))


def test_reward_train_needs_two_prompts_to_hold_some_out(tmp_path):
    from ddrl.rewards.learned import train_reward_model

    rows = [{"prompt": "a circle", "chosen": "a.png", "rejected": "b.png"}] * 3
    with pytest.raises(RewardError, match="all 3 pairs share one prompt; .* at least 2 prompts or a --heldout file"):
        train_reward_model(_pairs_folder(tmp_path, rows), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_reward_train_drops_and_reports_identical_pairs(tmp_path, capsys):
    from ddrl.rewards.learned import TextFeatures, _Indexed, read_pairs

    rows = [{"prompt": "a circle", "chosen": "a.png", "rejected": "b.png", "margin": 0.3},
            {"prompt": "a circle", "chosen": "a.png", "rejected": "a.png"},  # the same file
            {"prompt": "a circle", "chosen": "a_copy.png", "rejected": "a.png"}]  # the same pixels
    pairs = read_pairs(_pairs_folder(tmp_path, rows))
    data = _Indexed(pairs, TextFeatures("shapes-sd"))
    assert len(data) == 1 and [d.rsplit(":", 1)[1] for d in data.dropped] == ["2", "3"]
    with pytest.raises(RewardError, match="every pair has identical chosen and rejected images"):
        _Indexed(pairs[1:], TextFeatures("shapes-sd"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows[0]["rejected"] = "broken.png"
    with pytest.raises(RewardError, match="cannot decode the image .*broken.png"):
        _Indexed(read_pairs(_pairs_folder(tmp_path, rows[:1])), TextFeatures("shapes-sd"))


def _post(url, body, kind):
    req = urllib.request.Request(url + "/score", data=body, method="POST", headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _npz(compressed=False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _png_json(*images) -> bytes:
    encoded = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        encoded.append(base64.b64encode(buf.getvalue()).decode())
    return json.dumps({"images": encoded, "prompts": ["a"] * len(images)}).encode()


def test_the_server_answers_every_client_problem_with_a_4xx_and_the_client_does_not_retry():
    from PIL import Image

    images, prompts = _shapes_batch(2)
    nan, inf = images.numpy().copy(), images.numpy().copy()
    nan[1, 0, 3, 3], inf[0, 2, 0, 0] = np.nan, np.inf
    truncated = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(truncated, format="PNG")
    npz, js = "application/x-npz", "application/json"
    cases = [
        (_npz(images=nan, prompts=np.array(prompts)), npz, 400, "non-finite"),
        (_npz(images=inf, prompts=np.array(prompts)), npz, 400, "non-finite"),
        (_npz(images=(images.numpy() * 65535).astype(np.uint16), prompts=np.array(prompts)), npz, 400, "uint16"),
        (_npz(compressed=True, images=np.zeros((1, 3, 2048, 2048)), prompts=np.array(["a"])), npz, 413,
         "decompress"),
        (_png_json(Image.new("I;16", (8, 8))), js, 400, "mode 'I;16'"),
        (_png_json(Image.new("RGB", (3000, 3000))), js, 413, "pixels"),
        (json.dumps({"images": [base64.b64encode(truncated.getvalue()[:-40]).decode()],
                     "prompts": ["a"]}).encode(), js, 400, "could not be decoded"),
        (json.dumps({"images": "abc", "prompts": ["a"]}).encode(), js, 400, "list of base64"),
    ]
    calls = {"n": 0}
    jpeg = get_reward("jpeg-compressibility")

    class Counting:
        name, differentiable, device = "counting", False, "cpu"

        def __call__(self, *a):
            calls["n"] += 1
            return jpeg(*a)

    with _Serving(Counting(), max_pixels=4_000_000) as srv:
        for body, kind, status, message in cases:
            got, answer = _post(srv.url, body, kind)
            assert got == status and message in answer["error"], (status, answer)
        assert calls["n"] == 0  # nothing reached the reward
        requests = {"n": 0}
        handle = srv.app._score

        async def counted(scope, receive):
            requests["n"] += 1
            return await handle(scope, receive)
        srv.app._score = counted
        try:
            remote = get_reward(f"remote:{srv.url}(retries=3, backoff=0.01)")
            with pytest.raises(RewardError, match="HTTP 400.*non-finite"):
                remote(torch.from_numpy(nan), prompts, [{}, {}])
            assert requests["n"] == 1  # a 4xx is not retried
        finally:
            srv.app._score = handle


def test_score_refuses_non_finite_images_locally():
    images, prompts = _shapes_batch(2)
    images[0, 1, 2, 2] = float("nan")
    with pytest.raises(RewardError, match=r"images at batch positions \[0\] hold non-finite values"):
        score(get_reward("jpeg-compressibility"), images, prompts)


def test_the_client_splits_batches_to_the_servers_pixel_limit():
    images, prompts = _shapes_batch(5)
    local = get_reward("jpeg-incompressibility")
    with _Serving(local, max_pixels=2 * images.shape[-1] * images.shape[-2]) as srv:
        remote = get_reward(f"remote:{srv.url}")
        torch.testing.assert_close(score(remote, images, prompts)[0], score(local, images, prompts)[0],
                                   rtol=0, atol=0)
