"""Flow-matching RL raises its reward on the built-in shapes-flow model: short JPEG runs in the
fast suite, the shipped verifier presets as slow tests (`scripts/test.sh --slow`)."""

import statistics

import pytest

from ddrl.config import apply_overrides
from ddrl.presets import preset_config
from ddrl.train import train
from ddrl.train.metrics import read_metrics


def _short_jpeg_run(tmp_path, preset, **overrides):
    """25 epochs of 32 samples (4 groups of 8) with 4 sampling steps: about a minute on 2 cores."""
    cfg = apply_overrides(preset_config(preset), {
        "reward.name": "jpeg-compressibility", "sample.num_steps": 4, "eval.num_steps": 4,
        "sample.num_batches_per_epoch": 1, "train.batch_size": 16, "run.epochs": 25, "eval.max_prompts": 24,
        "eval.images_per_prompt": 1, "eval.grid_every": 0, "run.output_dir": str(tmp_path)} | overrides)
    return train(cfg, tmp_path), read_metrics(tmp_path / "metrics.jsonl")


def _assert_raised(result, rows, margin):
    """Rewards are minus the JPEG size in kB. The mean of the last five epochs must beat the first
    five by `margin` (about 2 standard errors of the difference of the two means at this batch
    size), and the fixed-seed ODE evaluation on the training prompts must rise too."""
    rewards = [r["reward/mean"] for r in rows]
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert last > first + margin, rewards
    assert result["after"]["train"]["reward"] > result["before"]["train"]["reward"]


def test_flow_grpo_raises_jpeg_compressibility_on_shapes_flow(tmp_path):
    _assert_raised(*_short_jpeg_run(tmp_path, "shapes-flow-grpo"), margin=0.04)


def test_diffusion_nft_raises_jpeg_compressibility_on_shapes_flow(tmp_path):
    _assert_raised(*_short_jpeg_run(tmp_path, "shapes-nft"), margin=0.04)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["shapes-flow-grpo", "shapes-flow-grpo-cps", "shapes-pref-grpo", "shapes-nft"])
def test_each_flow_preset_raises_the_held_out_verifier_score(tmp_path, preset):
    """The presets as shipped (40 epochs, about 10 minutes each on 2 cores)."""
    cfg = apply_overrides(preset_config(preset), {"run.output_dir": str(tmp_path)})
    result = train(cfg, tmp_path)
    assert result["after"]["heldout"]["reward"] > result["before"]["heldout"]["reward"]
