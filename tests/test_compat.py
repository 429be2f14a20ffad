"""ddrl.compat.from_trl_ddpo_config on TRL 0.23.1's DDPOConfig defaults, written out from
trl/trainer/ddpo_config.py at tag v0.23.1 (so TRL is not needed)."""

import warnings

import pytest

from ddrl.compat import NOT_CARRIED, TRL_DDPO_FIELDS, from_trl_ddpo_config
from ddrl.config import ConfigError
from ddrl.config_checks import validate

TRL_0_23_1_DEFAULTS = {
    "exp_name": "train_ddpo", "run_name": "", "seed": 0, "log_with": None, "tracker_kwargs": {},
    "accelerator_kwargs": {}, "project_kwargs": {}, "tracker_project_name": "trl", "logdir": "logs",
    "num_epochs": 100, "save_freq": 1, "num_checkpoint_limit": 5, "mixed_precision": "fp16", "allow_tf32": True,
    "resume_from": "", "sample_num_steps": 50, "sample_eta": 1.0, "sample_guidance_scale": 5.0,
    "sample_batch_size": 1, "sample_num_batches_per_epoch": 2, "train_batch_size": 1, "train_use_8bit_adam": False,
    "train_learning_rate": 3e-4, "train_adam_beta1": 0.9, "train_adam_beta2": 0.999,
    "train_adam_weight_decay": 1e-4, "train_adam_epsilon": 1e-8, "train_gradient_accumulation_steps": 1,
    "train_max_grad_norm": 1.0, "train_num_inner_epochs": 1, "train_cfg": True, "train_adv_clip_max": 5.0,
    "train_clip_range": 1e-4, "train_timestep_fraction": 1.0, "per_prompt_stat_tracking": False,
    "per_prompt_stat_tracking_buffer_size": 16, "per_prompt_stat_tracking_min_count": 16,
    "async_reward_computation": False, "max_workers": 2, "negative_prompts": None, "push_to_hub": False,
}


def test_every_trl_field_is_mapped_or_explained():
    assert set(TRL_DDPO_FIELDS) == set(TRL_0_23_1_DEFAULTS)
    assert {k for k, v in TRL_DDPO_FIELDS.items() if v is None} - {"exp_name"} <= set(NOT_CARRIED)


def test_trl_defaults_convert_to_the_same_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # TRL's defaults need no warning
        cfg = from_trl_ddpo_config(TRL_0_23_1_DEFAULTS, model="runwayml/stable-diffusion-v1-5",
                                   reward="aesthetic")
    validate(cfg)
    assert (cfg.model.name, cfg.model.lora, cfg.model.lora_rank, cfg.model.lora_alpha) == (
        "runwayml/stable-diffusion-v1-5", True, 4, 4.0)
    assert (cfg.train.algorithm, cfg.sample.sampler, cfg.reward.name) == ("ddpo-is", "ddim", "aesthetic")
    s, t, r = cfg.sample, cfg.train, cfg.run
    assert (s.num_steps, s.eta, s.guidance_scale, s.batch_size, s.num_batches_per_epoch) == (50, 1.0, 5.0, 1, 2)
    assert (t.batch_size, t.learning_rate, t.optimizer, t.adam_beta1, t.adam_beta2, t.weight_decay, t.adam_eps) == (
        1, 3e-4, "adamw", 0.9, 0.999, 1e-4, 1e-8)
    assert (t.gradient_accumulation_steps, t.max_grad_norm, t.num_inner_epochs, t.rescore_with_guidance) == (
        1, 1.0, 1, True)
    assert (t.adv_clip_max, t.clip_range, t.timestep_fraction, t.advantages) == (5.0, 1e-4, 1.0, "batch")
    assert (t.buffer_size, t.min_count, t.timesteps_per_forward) == (16, 16, 1)
    assert (r.seed, r.epochs, r.save_every, r.keep_checkpoints, r.mixed_precision, r.report_to, r.output_dir) == (
        0, 100, 1, 5, "fp16", "tensorboard", "")
    assert cfg.reward.asynchronous is False


def test_trl_settings_carry_over():
    custom = TRL_0_23_1_DEFAULTS | {"per_prompt_stat_tracking": True, "per_prompt_stat_tracking_buffer_size": 32,
                                    "train_use_8bit_adam": True, "log_with": "wandb", "run_name": "aesthetic-run",
                                    "train_timestep_fraction": 0.5, "mixed_precision": "bf16"}
    cfg = from_trl_ddpo_config(custom, model="m", use_lora=False)
    assert (cfg.train.advantages, cfg.train.buffer_size, cfg.train.optimizer) == ("per-prompt", 32, "adamw8bit")
    assert (cfg.run.report_to, cfg.run.output_dir, cfg.run.mixed_precision) == ("wandb", "runs/aesthetic-run", "bf16")
    assert (cfg.train.timestep_fraction, cfg.model.lora) == (0.5, False)


def test_settings_without_a_counterpart_warn_and_bad_fields_fail():
    with pytest.warns(UserWarning, match="negative_prompts='blurry' is not carried over: ddrl guides with the empty"):
        from_trl_ddpo_config(TRL_0_23_1_DEFAULTS | {"negative_prompts": "blurry"}, model="m")
    with pytest.raises(ConfigError, match="not a TRL DDPOConfig field: sample_steps"):
        from_trl_ddpo_config({"sample_steps": 3}, model="m")
    with pytest.raises(ConfigError, match="sample.eta"):
        validate(from_trl_ddpo_config({"sample_eta": -1.0}, model="m"))
