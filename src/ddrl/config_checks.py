"""Checks of a run configuration before any model is loaded: the ones every algorithm shares,
then the chosen algorithm's own (its `check`). Each failure is a ConfigError naming the key,
the value and what is accepted."""

from __future__ import annotations

from pathlib import Path

from .bounds import guidance_problem, number_problem
from .config import Config, ConfigError, flatten
from .options import field_docs


# The accepted range of every number in the config sections (ddrl.bounds intervals); an
# algorithm's options carry theirs beside each field. A None value of an optional field
# (train.learning_rate, rwr.percentile) means "the default" and is not checked.
RANGES = {
    "model.lora_rank": "[1, inf)", "model.lora_alpha": "(0, inf)", "model.resolution": "[0, 16384]",
    "model.max_sequence_length": "[0, 4096]",
    "sample.num_steps": "[1, inf)", "sample.eta": "[0, 1]", "sample.noise_level": "[0, inf)",
    "sample.noise_window_start": "[0, inf)", "sample.noise_window_size": "[0, inf)",
    "sample.batch_size": "[1, inf)", "sample.num_batches_per_epoch": "[1, inf)",
    "sample.images_per_prompt": "[1, inf)",
    "train.learning_rate": "(0, inf)", "train.batch_size": "[1, inf)",
    "train.gradient_accumulation_steps": "[1, inf)", "train.num_inner_epochs": "[1, inf)",
    "train.timestep_fraction": "(0, 1]", "train.timesteps_per_forward": "[1, inf)",
    "train.clip_range": "(0, inf)", "train.adv_clip_max": "(0, inf)", "train.max_grad_norm": "(0, inf)",
    "train.weight_decay": "[0, inf)", "train.adam_beta1": "[0, 1)", "train.adam_beta2": "[0, 1)",
    "train.adam_eps": "(0, inf)", "train.kl_coef": "[0, inf)", "train.ema_decay": "[0, 1)",
    "train.ema_update_interval": "[1, inf)", "train.buffer_size": "[1, inf)",
    "train.min_count": "[1, inf)", "train.lr_warmup_steps": "[0, inf)",
    "data.max_pairs": "[0, inf)", "data.resolution": "[0, inf)", "data.empty_prompt_fraction": "[0, 1]",
    "data.pairs_per_epoch": "[0, inf)",
    "eval.num_steps": "[0, inf)", "eval.images_per_prompt": "[1, inf)", "eval.train_images_per_prompt": "[0, inf)",
    "eval.max_prompts": "[0, inf)", "eval.grid_every": "[0, inf)", "eval.grid_size": "[1, inf)",
    "run.epochs": "[1, inf)", "run.seed": "[0, 4294967295]", "run.save_every": "[1, inf)",
    "run.keep_checkpoints": "[1, inf)",
}


def ranges(cfg: Config) -> dict[str, str]:
    """The range of every number of `cfg`: RANGES, and those beside the algorithm's options."""
    out = dict(RANGES)
    if cfg.options is not None:
        out |= {f"{cfg.options.section}.{k}": r for k, (_, r) in field_docs(type(cfg.options)).items() if r}
    return out


def check_numbers(cfg: Config) -> None:
    """Every number of the config is finite and in its range, and the guidance scale follows
    ddrl.bounds.GUIDANCE_RULE."""
    bounds = ranges(cfg)
    for key, value in flatten(cfg.to_dict()).items():
        if value is None or isinstance(value, (bool, str)):
            continue
        problem = number_problem(value, bounds.get(key, "(-inf, inf)"))
        if problem:
            raise ConfigError(f"{key} {problem}")
    if problem := guidance_problem(cfg.sample.guidance_scale):
        raise ConfigError(f"sample.guidance_scale {problem}")


def validate(cfg: Config, environment: bool = True) -> None:
    """Checks every algorithm shares, then the chosen algorithm's own (its `check`). Without
    `environment`, only the values: files the config names need not exist yet, nor optional
    packages be installed (`ddrl.load_config` checks a config that may be run elsewhere)."""
    from .algorithms.registry import algorithm_class, options_of

    s, t = cfg.sample, cfg.train
    algorithm = algorithm_class(t.algorithm)
    options_of(cfg)  # the options are the algorithm's own
    check_numbers(cfg)
    if s.sampler == "flow-cps" and s.noise_level > 1:
        raise ConfigError(f"sample.noise_level must be in [0, 1] for flow-cps (the CPS eta), got {s.noise_level}")
    if s.sampler != "ddim":
        size = s.noise_window_size or s.num_steps - s.noise_window_start
        if size < 1 or s.noise_window_start + size > s.num_steps:
            raise ConfigError(f"the noise window [{s.noise_window_start}, {s.noise_window_start + size}) "
                              f"(sample.noise_window_start, sample.noise_window_size) is outside the "
                              f"{s.num_steps} steps (sample.num_steps)")
    if t.advantages == "group" and s.images_per_prompt < 2:
        raise ConfigError("train.advantages group needs sample.images_per_prompt >= 2 (the group size)")
    for k in ("source", "eval_source"):
        _check_prompt_source(f"prompts.{k}", getattr(cfg.prompts, k), environment)
    if cfg.data.pairs and environment:
        from .data.pairs import DataError, pairs_kind

        try:
            pairs_kind(cfg.data.pairs)
        except DataError as e:
            raise ConfigError(str(e)) from None
    if environment:
        _check_extras(cfg)
    algorithm.check(cfg)


def _check_extras(cfg: Config) -> None:
    """Optional packages a setting needs are installed (checked before any model loads)."""
    import importlib.util

    from .run.trackers import missing_packages, parse_report_to

    try:
        names = parse_report_to(cfg.run.report_to)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if missing := missing_packages(names):
        raise ConfigError(f"run.report_to {cfg.run.report_to} needs {', '.join(missing)}: "
                          f"pip install {' '.join(missing)}")
    if cfg.train.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.optimizer adamw8bit needs bitsandbytes: pip install 'ddrl[scale]' "
                          "(or pip install bitsandbytes)")


def _check_prompt_source(key: str, src: str, environment: bool = True) -> None:
    if src.startswith("file:"):
        if environment and not Path(src[5:]).is_file():
            raise ConfigError(f"{key}: prompt file {src[5:]!r} does not exist")
    elif src.startswith("python:"):
        from .prompts import PYTHON_SOURCES

        if environment and src[7:] not in PYTHON_SOURCES:
            raise ConfigError(f"{key} {src!r}: no prompt set {src[7:]!r} was registered in this process "
                              "(ddrl.register_prompts)")
    elif src.startswith("shapes:"):
        from .worlds.shapes.prompts import source_split

        try:
            source_split(src)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    elif src not in ("animals", "animal-activities"):
        raise ConfigError(f"{key} {src!r} is not a prompt source; use shapes:train, shapes:heldout, "
                          "shapes:all (optionally :CATEGORY,...), animals, animal-activities, file:PATH or python:NAME")


def check_model_kind(cfg: Config, prediction: str) -> None:
    """Once the model is loaded: its kind (epsilon or velocity) suits the algorithm and the sampler."""
    from .models.policy import ModelError

    kinds = {"epsilon": "a diffusion (epsilon) model such as shapes-sd or Stable Diffusion",
             "velocity": "a flow-matching (velocity) model such as shapes-flow, SD3 or FLUX"}
    from .algorithms.registry import algorithm_class

    wanted = algorithm_class(cfg.train.algorithm).prediction
    if wanted is not None and prediction != wanted:
        raise ModelError(f"{cfg.model.name!r} is {kinds[prediction]}; train.algorithm {cfg.train.algorithm} "
                         f"trains {kinds[wanted]}")
    if (cfg.sample.sampler == "ddim") != (prediction == "epsilon"):
        fix = "ddim" if prediction == "epsilon" else "flow-sde, flow-cps, flow-ode or flow-dpm2"
        raise ModelError(f"{cfg.model.name!r} is {kinds[prediction]}; sample.sampler {cfg.sample.sampler} "
                         f"does not sample it: use {fix}")
