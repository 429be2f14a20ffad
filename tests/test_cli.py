"""The `ddrl` command line: help everywhere, one-line errors on bad input, nothing half-written."""

import json
import subprocess
import sys

import pytest

from ddrl.cli import build_parser, main

SUBCOMMANDS = ("sample", "evaluate", "pretrain", "train", "presets", "rewards", "reward-server", "reward-pairs",
               "reward-train", "convert-open-clip")


def test_every_subcommand_has_help(capsys):
    for argv in ([], *[[c] for c in SUBCOMMANDS]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--help"])
        assert info.value.code == 0
        assert "usage: ddrl" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "ddrl.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sample" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["sample", "--steps", "-3"], "must be in [1, inf), got -3"),
    (["sample", "--steps", "ten"], "expected an integer, got 'ten'"),
    (["sample", "--eta", "1.5"], "must be in [0, 1], got 1.5"),
    (["sample", "--guidance", "-1"], "must be 0 or 1 (no guidance) or greater than 1, got -1"),
    (["pretrain", "nonsense"], "invalid choice"),
])
def test_bad_arguments_are_rejected_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def _run_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    return err


def test_bad_input_gives_one_line_errors_and_writes_nothing(tmp_path, tiny_sd_folder, capsys):
    out = tmp_path / "grid.png"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    shapes_model = tmp_path / "shapes-model"  # a model that declares the shapes vocabulary
    import shutil

    shutil.copytree(tiny_sd_folder, shapes_model)
    (shapes_model / "ddrl.json").write_text(json.dumps({"world": "shapes"}))
    cases = [
        (["--model", "not-a-model"], "no model 'not-a-model'"),
        (["--model", str(tmp_path / "missing")], "no model"),
        (["--prompt-file", str(empty)], "is empty"),
        (["--prompt-file", str(tmp_path / "nope.txt")], "does not exist"),
        (["--model", str(shapes_model), "--prompt", "a purple dog"], "outside the model's vocabulary: ['dog']"),
        (["--prompt", ""], "empty prompt"),
        (["--out", str(tmp_path / "grid.jpg")], "must be a .png"),
    ]
    for extra, message in cases:
        err = _run_error(["sample", "--out", str(out), *extra], capsys)
        assert message in err, err
    assert list(tmp_path.glob("grid*")) == []


def test_sample_writes_a_grid_and_scores(tmp_path, tiny_sd_folder, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(tiny_sd_folder), "--prompt", "a red circle",
                 "--prompt", "two squares", "--per-prompt", "2", "--steps", "2", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert [s["prompt"] for s in record["samples"]] == ["a red circle"] * 2 + ["two squares"] * 2
    assert [s["seed"] for s in record["samples"]] == [0, 1, 2, 3]
    assert all(0.0 <= s["score"] <= 1.0 for s in record["samples"])
    from PIL import Image

    assert Image.open(out).size[0] > 2 * 48 * 3
    assert "overall" in capsys.readouterr().out


def test_evaluate_reports_every_category(tmp_path, tiny_sd_folder, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tiny_sd_folder), "--split", "heldout", "--per-prompt", "1",
                 "--steps", "1", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    from ddrl.worlds.shapes import CATEGORIES, split

    assert {f"accuracy/{c}" for c in CATEGORIES} <= summary.keys()
    assert summary["n"] == len(split("heldout"))
    assert "overall" in capsys.readouterr().out


def test_enum_fields_are_checked_with_a_hint_and_renamed_keys_still_read():
    from ddrl.config import Config, ConfigError, apply_overrides

    with pytest.raises(ConfigError, match=r"sample.sampler must be one of .*flow-dpm2, got 'flow-sd' \(did you mean 'flow-sde'\?\)"):
        apply_overrides(Config(), {"sample.sampler": "flow-sd"})
    with pytest.raises(ConfigError, match=r"train.algorithm 'ddpo-iss' is unknown \(did you mean 'ddpo-is"):
        from ddrl.config_checks import validate

        validate(apply_overrides(Config(), {"train.algorithm": "ddpo-iss"}))
    # config files of earlier runs name the guidance-in-re-scoring switch train.cfg
    assert apply_overrides(Config(), {"train.cfg": "false"}).train.rescore_with_guidance is False
