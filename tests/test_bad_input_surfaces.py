"""The newer surfaces under the bad-input rules (one line, before any model loads, nothing left
behind): the Python API's arguments, Python rewards that return the wrong thing or no gradient,
`ddrl reward-pairs` with nothing to pair, and model folders holding the wrong model."""

import json
import shutil

import pytest
import torch

import ddrl
from ddrl.api import CallableReward
from ddrl.cli import main
from ddrl.config import ConfigError
from ddrl.rewards import RewardError

from test_train import tiny_config


# ------------------------------------------------------------------ the Python API

@pytest.mark.parametrize("call, match", [
    (lambda: ddrl.load_config(5), r"config: expected a preset name, a YAML file path, a dict .* got int 5"),
    (lambda: ddrl.load_config(["shapes-quick"]), r"config: expected .* got list"),
    (lambda: ddrl.load_config("shapes-quick", [("run.epochs", 2)]), r"overrides: expected a dict .* got list"),
    (lambda: ddrl.load_config("shapes-quick", {"train.batch_size": 5}), r"train.batch_size \(5\) must divide"),
    (lambda: ddrl.load_config("shapes-quick", sample__guidance_scale=0.5), r"must be 0 or 1 \(no guidance\)"),
    (lambda: ddrl.load_config("shapes-quick", train__advantages="group", sample__images_per_prompt=1),
     r"group needs sample.images_per_prompt >= 2"),
    (lambda: ddrl.train(3.5), r"config: expected .* got float 3.5"),
    (lambda: ddrl.train("shapes-quick", reward=5), r"reward: expected a reward name or spec \(str\) or a callable"),
    (lambda: ddrl.train("shapes-quick", reward=["aesthetic"]), r"reward: expected .* got list"),
    (lambda: ddrl.train("shapes-quick", run_dir=5), r"run_dir: expected a folder path, got int 5"),
    (lambda: ddrl.train("shapes-quick", resume="yes"), r"resume: expected True or False, got str 'yes'"),
    (lambda: ddrl.train("shapes-quick", prompts=5), r"prompts: expected a list of prompts .* got int 5"),
    (lambda: ddrl.train("shapes-quick", eval_prompts="a red circle"), r"eval_prompts: expected a list .* got str"),
])
def test_the_api_refuses_arguments_of_the_wrong_type_in_one_line(call, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=match):
        call()
    assert not any(tmp_path.iterdir())  # nothing written


def test_load_config_checks_values_not_files():
    """A config may name files made later or elsewhere (the DPO preset's pairs folder, a prompt
    file): load_config takes it; training checks them before any model loads."""
    cfg = ddrl.load_config("shapes-dpo", prompts__source="file:made-later.txt")
    assert cfg.data.pairs == "pairs"
    with pytest.raises(ConfigError, match="prompt file 'made-later.txt' does not exist"):
        ddrl.train(cfg)


def test_resume_of_a_folder_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(ValueError, match="holds no run to resume"):
        ddrl.train("shapes-quick", run_dir=tmp_path / "never", resume=True)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("returned", [None, "0.5", ["a", "b", "c"], {"score": 1.0}, object()])
def test_a_python_reward_returning_no_numbers_is_named(returned):
    reward = CallableReward("my-taste", lambda *a: returned)
    with pytest.raises(RewardError, match=r"^reward 'my-taste' returned .*; expected one number per image"):
        reward(torch.rand(3, 3, 8, 8), ["a", "b", "c"], [{}, {}, {}])


def test_a_differentiable_reward_whose_scores_carry_no_gradient_stops_the_run(tiny_sd_folder, tmp_path):
    """Declared differentiable, scored through numpy: every step would take a zero gradient. The
    first minibatch stops the run, naming the reward, before any optimizer step."""
    def detached(images, prompts, metadata):
        return torch.from_numpy(images.detach().numpy().mean(axis=(1, 2, 3)))

    ddrl.register_reward("through-numpy", detached, differentiable=True)
    cfg = tiny_config(tiny_sd_folder, **{"train.algorithm": "draft", "sample.sampler": "ddim",
                                         "reward.name": "through-numpy", "run.epochs": 1})
    with pytest.raises(RewardError, match="reward 'through-numpy' is declared differentiable, but its scores carry "
                       "no gradient to the images"):
        ddrl.train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ data with nothing in it

@pytest.mark.parametrize("args, message", [
    (["--images-per-prompt", "1"], "argument --images-per-prompt: must be in [2, inf), got 1"),
    (["--images-per-prompt", "0"], "argument --images-per-prompt: must be in [2, inf), got 0"),
    (["--heldout-images-per-prompt", "1"], "expected 0 (none) or at least 2 (a pair needs two images), got 1"),
])
def test_reward_pairs_refuses_counts_that_make_no_pairs(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit):  # argparse: its usage, then the one error line
        main(["reward-pairs", "--out", str(tmp_path / "pairs"), *args])
    assert message in capsys.readouterr().err and not (tmp_path / "pairs").exists()


def test_reward_pairs_with_no_pair_past_the_margin_fails_and_leaves_nothing(tmp_path):
    from ddrl.rewards.shapes_pairs import make_shapes_pairs

    with pytest.raises(ValueError, match="no train pairs: no two images of a prompt differ .* by the margin 10"):
        make_shapes_pairs(tmp_path / "pairs", images_per_prompt=2, heldout_images_per_prompt=0, num_steps=2,
                          margin=10.0, max_prompts=1, progress=False)
    assert not (tmp_path / "pairs").exists()


# ------------------------------------------------------------------ model folders

def test_a_model_folder_holding_the_wrong_model_is_named_before_weights_load(tiny_sd_folder, tmp_path):
    from ddrl.models.loading import load_policy
    from ddrl.models.policy import ModelError

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_folder, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps(config | {"_class_name": "SD3Transformer2DModel"}))
    with pytest.raises(ModelError, match=r"holds the wrong model for a StableDiffusionPipeline: unet/config.json is a "
                       r"SD3Transformer2DModel, but model_index.json expects UNet2DConditionModel"):
        load_policy(str(folder))
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelError, match=r"model_index.json lists vae \(AutoencoderKL\) but there is no folder vae/"):
        load_policy(str(folder))


def test_bitsandbytes_kernel_notice_does_not_reach_stderr():
    """bitsandbytes' CPU backend logs 'Failed to load CPU gemm_4bit_forward ...' at import on CPUs
    with AVX512-BF16 (not every machine has one): after `import ddrl` a warning through that
    logger prints nothing, so a run's first stderr line is ddrl's own."""
    import subprocess
    import sys

    code = ("import ddrl, logging; logging.getLogger('bitsandbytes.backends.cpu.ops').warning("
            "'Failed to load CPU gemm_4bit_forward from kernels-community'); print('done')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "done" and "gemm_4bit" not in out.stderr
