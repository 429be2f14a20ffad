"""Short training runs on the built-in model raise their reward."""

import statistics

import pytest

from ddrl.config import apply_overrides
from ddrl.presets import preset_config
from ddrl.train import train
from ddrl.train.metrics import read_metrics
from ddrl.train.report import paired_change

pytestmark = pytest.mark.learning


def _short_jpeg_run(tmp_path, **overrides):
    """30 epochs of 32 samples with 4 sampling steps: about 1.5 minutes on 2 CPU cores.
    Incompressibility rather than compressibility: on shapes-sd, whose images are already
    simple, the JPEG size moves up (texture, edges) much faster than down; a 30-epoch
    compressibility run moved the size by about 0.01 kB, within its noise."""
    cfg = apply_overrides(preset_config("shapes-incompressibility"), {
        "sample.num_steps": 4, "sample.batch_size": 32, "sample.num_batches_per_epoch": 1,
        "train.batch_size": 32, "run.epochs": 30, "eval.max_prompts": 24, "eval.images_per_prompt": 1,
        "eval.grid_every": 0, "run.output_dir": str(tmp_path)} | overrides)
    return train(cfg, tmp_path), read_metrics(tmp_path / "metrics.jsonl")


def _assert_raised(result, rows):
    """Rewards are the JPEG size in kB (the base model's images are about 1.55 kB). The mean
    of an epoch's 32 fresh samples varies by about 0.03 kB from epoch to epoch, so the mean of
    the last five epochs must beat the first five by more than 0.04 (about 2 standard errors of
    the difference); the fixed-seed evaluation on training and held-out prompts must rise too."""
    rewards = [r["reward/mean"] for r in rows]
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert last > first + 0.04, rewards
    for split in ("train", "heldout"):
        before, after = result["before"][split]["reward"], result["after"][split]["reward"]
        assert after > before, (split, before, after)


def test_ddpo_with_lora_at_its_default_learning_rate_raises_jpeg_incompressibility(tmp_path):
    _assert_raised(*_short_jpeg_run(tmp_path))


def test_ddpo_full_fine_tuning_at_its_default_learning_rate_raises_jpeg_incompressibility(tmp_path):
    _assert_raised(*_short_jpeg_run(tmp_path, **{"model.lora": False}))


def test_rwr_preset_with_sparse_weights_raises_jpeg_compressibility(tmp_path):
    """`shapes-compressibility-rwr` as shipped (the top 10% of each batch, lr 1e-3, LoRA r4, 10
    sampling steps), shrunk to 20 epochs of 32 samples on all training prompts: about 1.5 minutes
    on 2 CPU cores. The evaluation draws 2 images per held-out prompt from the same 96 seeds
    before and after, so its change is a paired difference; it must exceed three of its standard
    errors (a change that large has a probability under 0.2% when training does nothing), and the
    training reward's last five epochs must beat its first five (the Figure 4 runs in
    docs/results.md gained 0.053 ± 0.007 kB over 3 seeds on this budget)."""
    cfg = apply_overrides(preset_config("shapes-compressibility-rwr"), {
        "sample.batch_size": 32, "sample.num_batches_per_epoch": 1, "train.batch_size": 32, "run.epochs": 20,
        "eval.max_prompts": 48, "eval.images_per_prompt": 2, "eval.train_images_per_prompt": 0,
        "eval.grid_every": 0, "run.output_dir": str(tmp_path)})
    result = train(cfg, tmp_path)
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert statistics.mean(rewards[-5:]) > statistics.mean(rewards[:5]), rewards
    change, se = paired_change(result["before"]["per_image"]["heldout"]["reward"],
                               result["after"]["per_image"]["heldout"]["reward"])
    assert change > 3 * se, (change, se)
