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


PROMPT = "a purple square and a red triangle"


def _short_alignment_run(tmp_path, preset: str) -> tuple[float, float]:
    """The preset's algorithm, learning rate, guidance, LoRA and per-optimizer-step batch, shrunk:
    one training prompt on which the base shapes-sd scores about 0.7 (partial credit; 25% of its
    images correct), 32 samples of 4 DDIM steps per epoch, 24 epochs (about a minute on 2 CPU
    cores). The verifier reward is measured before and after on the same 256 seeds, so its change
    is a paired difference; it must exceed three of its standard errors, which a run that learns
    nothing passes with probability under 0.2%."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT)
    cfg = preset_config(preset)
    one_step = cfg.optimizer_steps_per_epoch == 1  # DDPO-SF: every minibatch of the epoch in one step
    cfg = apply_overrides(cfg, {
        "prompts.source": f"file:{prompts}", "prompts.eval_source": f"file:{prompts}", "sample.num_steps": 4,
        "sample.batch_size": 32, "sample.num_batches_per_epoch": 1, "sample.images_per_prompt": 16,
        "train.gradient_accumulation_steps": 32 // cfg.train.batch_size if one_step else 1,
        "run.epochs": 24, "eval.images_per_prompt": 256, "eval.train_images_per_prompt": 0,
        "eval.grid_every": 0, "run.output_dir": str(tmp_path / "run")})
    result = train(cfg, tmp_path / "run")
    return paired_change(result["before"]["per_image"]["heldout"]["reward"],
                         result["after"]["per_image"]["heldout"]["reward"])


@pytest.mark.parametrize("preset", ["shapes-alignment-sf", "shapes-alignment-rwr"])
def test_ddpo_family_preset_raises_the_verifier_reward_in_a_short_run(tmp_path, preset):
    change, se = _short_alignment_run(tmp_path, preset)
    assert change > 3 * se, (change, se)
