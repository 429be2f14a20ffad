"""From TRL's DDPOTrainer (removed in TRL 0.24) to ddrl.

`from_trl_ddpo_config(config, model=...)` reads a `trl.DDPOConfig` (or its fields as a dict, so
TRL need not be installed) and returns the ddrl Config of the same run: DDPO-IS (TRL's clipped
importance-sampling loss) with DDIM sampling, TRL's sizes per process, its optimizer, and batch or
per-prompt advantages. docs/migrating-from-trl.md gives the table and what differs.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from .config import Config, ConfigError, apply_overrides

# TRL 0.23.1 DDPOConfig field -> ddrl key (None: no counterpart; see NOT_CARRIED)
TRL_DDPO_FIELDS: dict[str, str | None] = {
    "seed": "run.seed",
    "num_epochs": "run.epochs",
    "save_freq": "run.save_every",
    "num_checkpoint_limit": "run.keep_checkpoints",
    "mixed_precision": "run.mixed_precision",
    "log_with": "run.report_to",
    "sample_num_steps": "sample.num_steps",
    "sample_eta": "sample.eta",
    "sample_guidance_scale": "sample.guidance_scale",
    "sample_batch_size": "sample.batch_size",
    "sample_num_batches_per_epoch": "sample.num_batches_per_epoch",
    "train_batch_size": "train.batch_size",
    "train_use_8bit_adam": "train.optimizer",
    "train_learning_rate": "train.learning_rate",
    "train_adam_beta1": "train.adam_beta1",
    "train_adam_beta2": "train.adam_beta2",
    "train_adam_weight_decay": "train.weight_decay",
    "train_adam_epsilon": "train.adam_eps",
    "train_gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "train_max_grad_norm": "train.max_grad_norm",
    "train_num_inner_epochs": "train.num_inner_epochs",
    "train_cfg": "train.rescore_with_guidance",
    "train_adv_clip_max": "train.adv_clip_max",
    "train_clip_range": "train.clip_range",
    "train_timestep_fraction": "train.timestep_fraction",
    "per_prompt_stat_tracking": "train.advantages",
    "per_prompt_stat_tracking_buffer_size": "train.buffer_size",
    "per_prompt_stat_tracking_min_count": "train.min_count",
    "async_reward_computation": "reward.asynchronous",
    "run_name": "run.output_dir",
    "resume_from": None, "exp_name": None, "tracker_kwargs": None, "accelerator_kwargs": None,
    "project_kwargs": None, "tracker_project_name": None, "logdir": None, "allow_tf32": None,
    "max_workers": None, "negative_prompts": None, "push_to_hub": None,
}

# why a TRL field has no ddrl key; a warning repeats it when the field is set away from TRL's default
NOT_CARRIED = {
    "resume_from": "resume with `ddrl train --resume RUN_DIR` or ddrl.train(..., resume=True); "
                   "TRL checkpoints are not read",
    "exp_name": "the run folder is run.output_dir",
    "tracker_kwargs": "set the tracker's environment variables (WANDB_PROJECT, ...)",
    "accelerator_kwargs": "use `accelerate launch` options or an accelerate config file",
    "project_kwargs": "checkpoints live in the run folder (run.save_every, run.keep_checkpoints)",
    "tracker_project_name": "ddrl logs to the project 'ddrl' (WANDB_PROJECT and the like override it)",
    "logdir": "logs live in the run folder",
    "allow_tf32": "set torch.backends.cuda.matmul.allow_tf32 in your script",
    "max_workers": "ddrl scores each sampling batch in one background thread (reward.asynchronous)",
    "negative_prompts": "ddrl guides with the empty prompt",
    "push_to_hub": "the LoRA is exported to RUN_DIR/lora; push it with huggingface_hub",
}

# TRL 0.23.1's defaults of the fields that have no ddrl key (a warning only when they differ)
_TRL_DEFAULTS = {"resume_from": "", "tracker_kwargs": {}, "accelerator_kwargs": {}, "project_kwargs": {},
                 "tracker_project_name": "trl", "logdir": "logs", "allow_tf32": True, "max_workers": 2,
                 "negative_prompts": None, "push_to_hub": False}


def from_trl_ddpo_config(trl_config: Any, *, model: str, use_lora: bool = True, reward: str | None = None) -> Config:
    """The ddrl Config of a TRL DDPOTrainer run. `trl_config` is a DDPOConfig or a dict of its
    fields (missing ones take TRL 0.23.1's defaults only through ddrl's own, so pass them all);
    `model` the pipeline TRL loaded (DefaultDDPOStableDiffusionPipeline's pretrained_model_name);
    `use_lora` its use_lora; `reward` a ddrl reward name (TRL passed a function: give it to
    ddrl.train(..., reward=fn) instead). Fields without a ddrl counterpart raise a warning when set
    away from TRL's default."""
    fields = dataclasses.asdict(trl_config) if dataclasses.is_dataclass(trl_config) else dict(trl_config)
    unknown = sorted(set(fields) - set(TRL_DDPO_FIELDS))
    if unknown:
        raise ConfigError(f"not a TRL DDPOConfig field: {', '.join(unknown)}")
    over: dict[str, Any] = {"model.name": model, "model.lora": use_lora, "train.algorithm": "ddpo-is",
                            "sample.sampler": "ddim", "train.advantages": "batch",
                            # TRL's LoRA: rank 4, alpha 4, Gaussian init on to_q/to_k/to_v/to_out.0
                            "model.lora_rank": 4, "model.lora_alpha": 4.0,
                            # TRL re-scores each stored step with a separate forward
                            "train.timesteps_per_forward": 1}
    if reward is not None:
        over["reward.name"] = reward
    for name, value in fields.items():
        key = TRL_DDPO_FIELDS[name]
        if key is None:
            if name in _TRL_DEFAULTS and value != _TRL_DEFAULTS[name]:
                warnings.warn(f"TRL's {name}={value!r} is not carried over: {NOT_CARRIED[name]}", stacklevel=2)
            continue
        if name == "train_use_8bit_adam":
            value = "adamw8bit" if value else "adamw"
        elif name == "per_prompt_stat_tracking":
            value = "per-prompt" if value else "batch"
        elif name == "log_with":
            value = value or "tensorboard"
        elif name == "run_name":
            if not value:
                continue
            value = f"runs/{value}"
        over[key] = value
    return apply_overrides(Config(), over)
