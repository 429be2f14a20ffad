"""Short training runs on the built-in model raise their reward (fixed-seed evaluation before
vs after, on prompts the run trained on and on held-out prompts)."""

from ddrl.config import apply_overrides
from ddrl.presets import preset_config
from ddrl.train import train


def _short_compressibility_run(tmp_path, **overrides):
    cfg = apply_overrides(preset_config("shapes-compressibility"), {
        "sample.num_steps": 10, "sample.batch_size": 32, "sample.num_batches_per_epoch": 1,
        "train.batch_size": 8, "run.epochs": 6, "eval.max_prompts": 12, "eval.images_per_prompt": 1,
        "eval.grid_every": 0, "run.output_dir": str(tmp_path)} | overrides)
    return train(cfg, tmp_path)


def _assert_raised(result):
    # rewards are minus the JPEG size in kB; the base model's images are about 1.6 kB
    for split in ("train", "heldout"):
        before, after = result["before"][split]["reward"], result["after"][split]["reward"]
        assert after > before + 0.05, (split, before, after)


def test_ddpo_with_lora_at_its_default_learning_rate_raises_jpeg_compressibility(tmp_path):
    _assert_raised(_short_compressibility_run(tmp_path))


def test_ddpo_full_fine_tuning_at_its_default_learning_rate_raises_jpeg_compressibility(tmp_path):
    _assert_raised(_short_compressibility_run(tmp_path, **{"model.lora": False}))
