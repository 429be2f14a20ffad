"""Short training runs on the built-in model raise their reward."""

import statistics

import pytest

from ddrl.config import apply_overrides
from ddrl.presets import preset_config
from helpers import train
from ddrl.run.metrics import read_metrics
from ddrl.run.report import paired_change

pytestmark = pytest.mark.learning


def _short_jpeg_run(tmp_path, preset, **overrides):
    """A JPEG preset as shipped (DDPO-IS, batch advantages, LoRA at its default rate), shrunk to
    30 epochs of 32 samples with 4 sampling steps, each epoch one on-policy minibatch: about a
    minute on 2 CPU cores. The evaluation draws 2 images for each of 48 held-out prompts from the
    same seeds before and after."""
    cfg = apply_overrides(preset_config(preset), {
        "sample.num_steps": 4, "sample.batch_size": 32, "sample.num_batches_per_epoch": 1,
        "train.batch_size": 32, "run.epochs": 30, "eval.max_prompts": 48, "eval.images_per_prompt": 2,
        "eval.train_images_per_prompt": 0, "eval.grid_every": 0, "run.output_dir": str(tmp_path)} | overrides)
    return train(cfg, tmp_path), read_metrics(tmp_path / "metrics.jsonl")


def _assert_raised(result, rows, min_gain):
    """Rewards are plus or minus the JPEG size in kB (the base model's images are about 1.55
    kB). The mean of an epoch's 32 fresh samples varies by about 0.03 kB from epoch to epoch, so
    the mean of the last five epochs must beat the first five by `min_gain`; and the held-out
    change, a paired difference, must exceed three of its standard errors (a change that large
    has a probability under 0.2% when training does nothing)."""
    rewards = [r["reward/mean"] for r in rows]
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert last > first + min_gain, rewards
    change, se = paired_change(result["before"]["per_image"]["heldout"]["reward"],
                               result["after"]["per_image"]["heldout"]["reward"])
    assert change > 3 * se, (change, se)


@pytest.mark.parametrize("preset", [pytest.param("shapes-compressibility", marks=pytest.mark.slow),
                                    "shapes-incompressibility"])
def test_ddpo_jpeg_preset_raises_its_reward(tmp_path, preset):
    """Measured at seed 0 (one torch thread): compressibility -1.539 -> -1.464 kB over the first
    and last five epochs, held-out +0.115 ± 0.015; incompressibility 1.559 -> 1.635, held-out
    +0.096 ± 0.011. About 2 standard errors of the epoch-mean difference: 0.04."""
    _assert_raised(*_short_jpeg_run(tmp_path, preset), min_gain=0.04)


@pytest.mark.slow  # the same update as the LoRA run above, on every weight
def test_ddpo_full_fine_tuning_at_its_default_learning_rate_raises_jpeg_incompressibility(tmp_path):
    _assert_raised(*_short_jpeg_run(tmp_path, "shapes-incompressibility", **{"model.lora": False}), min_gain=0.04)


def test_rwr_preset_with_sparse_weights_raises_jpeg_compressibility(tmp_path):
    """`shapes-compressibility-rwr` as shipped (the top 10% of each batch, lr 1e-3, LoRA r4, 10
    sampling steps), shrunk to 20 epochs of 32 samples: about a minute on 2 CPU cores. Measured
    (benchmarks/results/presets.md), seeds 0/1/2: held-out +0.046 ± 0.014, +0.055 ± 0.011,
    +0.033 ± 0.006 kB, and the training reward's last five epochs above its first five by 0.04 to
    0.05 kB, about the epoch-mean noise; so that only has to rise."""
    result, rows = _short_jpeg_run(tmp_path, "shapes-compressibility-rwr", **{"sample.num_steps": 10, "run.epochs": 20})
    _assert_raised(result, rows, min_gain=0.0)
