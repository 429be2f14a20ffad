"""Checks of a run configuration before any model is loaded: the ones every algorithm shares,
then the chosen algorithm's own (its `validate`). Each failure is a ConfigError naming the key,
the value and what is accepted."""

from __future__ import annotations

from pathlib import Path

from .config import Config, ConfigError, _hint


def algorithm_class(name: str):
    """The registered algorithm called `name`, or a ConfigError with the closest name."""
    from .algorithms import ALGORITHMS

    if name not in ALGORITHMS:
        raise ConfigError(f"train.algorithm {name!r} is unknown{_hint(name, ALGORITHMS)}; "
                          f"choose from {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def validate(cfg: Config) -> None:
    """Checks every algorithm shares, then the chosen algorithm's own (its `validate`)."""
    s, t, m, r = cfg.sample, cfg.train, cfg.model, cfg.run
    positive = {"sample.num_steps": s.num_steps, "sample.batch_size": s.batch_size,
                "sample.num_batches_per_epoch": s.num_batches_per_epoch,
                "sample.images_per_prompt": s.images_per_prompt, "train.batch_size": t.batch_size,
                "train.gradient_accumulation_steps": t.gradient_accumulation_steps,
                "train.num_inner_epochs": t.num_inner_epochs, "train.timesteps_per_forward": t.timesteps_per_forward,
                "train.buffer_size": t.buffer_size, "train.min_count": t.min_count,
                "train.ema_update_interval": t.ema_update_interval,
                "model.lora_rank": m.lora_rank, "run.epochs": r.epochs, "run.save_every": r.save_every,
                "run.keep_checkpoints": r.keep_checkpoints, "eval.images_per_prompt": cfg.eval.images_per_prompt,
                "eval.grid_size": cfg.eval.grid_size}
    if cfg.eval.max_prompts < 0:
        raise ConfigError(f"eval.max_prompts must be >= 0, got {cfg.eval.max_prompts}")
    for k, v in positive.items():
        if v < 1:
            raise ConfigError(f"{k} must be a positive integer, got {v}")
    algorithm = algorithm_class(t.algorithm)
    if s.sampler == "flow-cps" and not 0 <= s.noise_level <= 1:
        raise ConfigError(f"sample.noise_level must be in [0, 1] for flow-cps (the CPS eta), got {s.noise_level}")
    if s.noise_level < 0:
        raise ConfigError(f"sample.noise_level must be >= 0, got {s.noise_level}")
    if s.sampler != "ddim":
        size = s.noise_window_size or s.num_steps - s.noise_window_start
        if s.noise_window_start < 0 or s.noise_window_size < 0 or size < 1 or s.noise_window_start + size > s.num_steps:
            raise ConfigError(f"the noise window [{s.noise_window_start}, {s.noise_window_start + size}) "
                              f"(sample.noise_window_start, sample.noise_window_size) is outside the "
                              f"{s.num_steps} steps (sample.num_steps)")
    if t.advantages == "group" and s.images_per_prompt < 2:
        raise ConfigError("train.advantages group needs sample.images_per_prompt >= 2 (the group size)")
    if cfg.reward.pairwise and not algorithm.uses_pairwise_judge:
        from .algorithms import ALGORITHMS

        users = [n for n, a in ALGORITHMS.items() if a.uses_pairwise_judge]
        raise ConfigError(f"reward.pairwise is read by {', '.join(users)} only; train.algorithm is {t.algorithm}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if cfg.eval.num_steps < 0:
        raise ConfigError(f"eval.num_steps must be >= 0, got {cfg.eval.num_steps}")
    if not 0 <= s.eta <= 1:
        raise ConfigError(f"sample.eta must be in [0, 1], got {s.eta}")
    if s.guidance_scale < 1:
        raise ConfigError(f"sample.guidance_scale must be >= 1, got {s.guidance_scale}")
    if not 0 < t.timestep_fraction <= 1:
        raise ConfigError(f"train.timestep_fraction must be in (0, 1], got {t.timestep_fraction}")
    for k in ("clip_range", "adv_clip_max", "max_grad_norm", "nft_beta"):
        if getattr(t, k) <= 0:
            raise ConfigError(f"train.{k} must be > 0, got {getattr(t, k)}")
    if t.kl_coef < 0 or t.weight_decay < 0:
        raise ConfigError("train.kl_coef and train.weight_decay must be >= 0")
    if t.learning_rate is not None and t.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate must be > 0, got {t.learning_rate}")
    if t.rwr_percentile is not None and not 0 <= t.rwr_percentile < 100:
        raise ConfigError(f"train.rwr_percentile must be in [0, 100), got {t.rwr_percentile}")
    n = cfg.samples_per_epoch
    if n % s.images_per_prompt:  # a prompt's images (a GRPO group) all belong to one epoch
        raise ConfigError(f"sample.images_per_prompt ({s.images_per_prompt}) must divide the samples per "
                          f"epoch per process: sample.batch_size {s.batch_size} x sample.num_batches_per_epoch "
                          f"{s.num_batches_per_epoch} = {n}")
    if n % t.batch_size:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must divide the samples per epoch per process: "
                          f"sample.batch_size {s.batch_size} x sample.num_batches_per_epoch "
                          f"{s.num_batches_per_epoch} = {n}")
    if cfg.minibatches_per_epoch % t.gradient_accumulation_steps:
        raise ConfigError(f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps}) must divide "
                          f"the minibatches per epoch: {n} samples / train.batch_size {t.batch_size} "
                          f"= {cfg.minibatches_per_epoch}")
    for k in ("source", "eval_source"):
        _check_prompt_source(f"prompts.{k}", getattr(cfg.prompts, k))
    algorithm.validate(cfg)


def _check_prompt_source(key: str, src: str) -> None:
    if src.startswith("file:"):
        if not Path(src[5:]).is_file():
            raise ConfigError(f"{key}: prompt file {src[5:]!r} does not exist")
    elif src not in ("shapes:train", "shapes:heldout", "shapes:all", "animals"):
        raise ConfigError(f"{key} {src!r} is not a prompt source; use shapes:train, shapes:heldout, "
                          "shapes:all, animals or file:PATH")
