"""The Python API: configs, custom rewards and prompts, and training from a notebook or script.

    import ddrl

    cfg = ddrl.load_config("shapes-quick", {"run.epochs": 5})
    result = ddrl.train(cfg, reward=my_reward_fn, run_dir="runs/notebook")

A custom reward is a plain callable `fn(images, prompts, metadata)`: images a (B, 3, H, W) float
tensor in [0, 1], prompts a list of B strings, metadata a list of B dicts. It may return scores
(a tensor, array or list of B numbers), a `RewardOutput`, or TRL's `(rewards, info)` pair, so a
TRL DDPO `reward_fn` works unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import Config, ConfigError, apply_overrides, flatten, load_yaml
from .rewards import REWARDS, RewardError, RewardOutput, RewardSpec

PromptRecords = Sequence["str | tuple[str, dict]"]


def load_config(source: str | Path | dict | Config | None = None, overrides: dict[str, Any] | None = None,
                **kwargs: Any) -> Config:
    """A run configuration from a preset name (None: the default preset), a YAML file, a nested or
    dotted dict, or a Config; then `overrides` ({"train.learning_rate": 1e-4}) and keyword
    overrides with `__` for the dot (train__learning_rate=1e-4). Its values are checked as `train`
    and `ddrl train` check them, so a value they would refuse is refused here; the files it names
    and the packages it needs are checked when it trains."""
    from .config_checks import validate
    from .presets import DEFAULT_PRESET, preset_config

    _expect(source, (str, Path, dict, Config, type(None)), "config",
            "a preset name, a YAML file path, a dict of settings or a Config")
    _expect(overrides, (dict, type(None)), "overrides", 'a dict such as {"train.learning_rate": 1e-4}')

    if isinstance(source, Config):
        cfg = source
    elif isinstance(source, dict):
        cfg = apply_overrides(Config(), flatten(source))
    elif source is None or (isinstance(source, str) and not str(source).endswith((".yaml", ".yml"))):
        cfg = preset_config(source or DEFAULT_PRESET)
    else:
        if not Path(source).is_file():
            raise ConfigError(f"config file {source} does not exist")
        cfg = apply_overrides(Config(), load_yaml(source))
    extra = dict(overrides or {}) | {k.replace("__", "."): v for k, v in kwargs.items()}
    cfg = apply_overrides(cfg, extra)  # also fills in the algorithm's default options
    validate(cfg, environment=False)  # its values; files and packages are checked when it trains
    return cfg


def _expect(value: Any, types: tuple, what: str, expected: str) -> None:
    """The API's arguments get the CLI's one-line errors, not a TypeError from deep inside."""
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{what}: expected {expected}, got {type(value).__name__} {value!r:.60}")


class CallableReward:
    """A Python callable as a ddrl reward (see the module docstring for what it may return)."""

    device = "cpu"

    def __init__(self, name: str, fn: Callable, differentiable: bool = False):
        self.name, self.fn, self.differentiable = name, fn, differentiable

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        out = self.fn(images, list(prompts), list(metadata))
        if isinstance(out, RewardOutput):
            return out
        info: Any = {}
        if isinstance(out, tuple) and len(out) == 2:  # TRL's (rewards, reward_metadata)
            out, info = out
        try:
            scores = out if isinstance(out, torch.Tensor) and self.differentiable else torch.as_tensor(
                out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise RewardError(f"reward {self.name!r} returned {_shown(out)}; expected one number per image (a "
                              "tensor, array or list of floats), or (scores, info)") from None
        if scores.dim() != 1 or len(scores) != len(prompts):
            raise RewardError(f"reward {self.name!r} returned scores of shape {tuple(scores.shape)} for "
                              f"{len(prompts)} images; expected one number per image")
        details = {k: list(v) for k, v in info.items()
                   if isinstance(v, (list, tuple)) and len(v) == len(prompts)} if isinstance(info, dict) else {}
        return RewardOutput(scores.float(), details)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def register_reward(name: str, fn: Callable, *, description: str = "a Python callable",
                    differentiable: bool = False) -> str:
    """Make `fn` the reward `name` for this process (usable in reward.name and in sums such as
    "0.5*name + clipscore"). With differentiable=True its scores must keep the images' graph
    (reward backpropagation). Returns the name."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"reward name {name!r}: use letters, digits, - and _")
    if not callable(fn):
        raise ConfigError(f"reward {name!r}: expected a callable, got {type(fn).__name__}")
    if name in REWARDS and not getattr(REWARDS[name].factory, "python_callable", False):
        raise ConfigError(f"reward {name!r} is built in; choose another name")

    def factory() -> CallableReward:
        return CallableReward(name, fn, differentiable)

    factory.python_callable = True
    REWARDS[name] = RewardSpec(factory, "images, prompts, metadata", description, differentiable=differentiable)
    return name


def register_algorithm(name: str, cls: type) -> str:
    """Make `cls` (a subclass of ddrl.algorithms.Algorithm, with its own `Options` dataclass and
    section) usable as `train.algorithm name`. Returns the name."""
    from .algorithms.registry import register_algorithm as register

    return register(name, cls)


def register_prompts(name: str, prompts: PromptRecords | Callable[[], tuple[str, dict]], *, draws: int = 1000,
                     seed: int = 0) -> str:
    """Make a prompt set usable as prompts.source `python:NAME`. `prompts` is a list of prompts or
    (prompt, metadata) pairs, or TRL's `prompt_fn() -> (prompt, metadata)`, which is called
    `draws` times under `seed` and its distinct prompts kept in order (ddrl draws from a fixed
    set, so runs are reproducible and resumable)."""
    from .prompts import PYTHON_SOURCES

    if callable(prompts):
        import random

        state = random.getstate()
        random.seed(seed)
        try:
            drawn = [prompts() for _ in range(draws)]
        finally:
            random.setstate(state)
        bad = next((d for d in drawn if not (isinstance(d, tuple) and len(d) == 2 and isinstance(d[1], dict))), None)
        if bad is not None:
            raise ConfigError(f"prompts {name!r}: a prompt function must return (prompt, metadata dict), as TRL's "
                              f"prompt_fn; it returned {bad!r:.80}")
        records = list({p: (p, m) for p, m in drawn}.values())
    else:
        records = [(p, {}) if isinstance(p, str) else (p[0], dict(p[1])) for p in prompts]
    if not records or not all(isinstance(p, str) and p.strip() for p, _ in records):
        raise ConfigError(f"prompts {name!r}: expected non-empty prompt strings")
    PYTHON_SOURCES[name] = records
    return f"python:{name}"


def train(config: str | Path | dict | Config | None = None, *, run_dir: str | Path | None = None,
          reward: Callable | str | None = None, prompts: PromptRecords | Callable | None = None,
          eval_prompts: PromptRecords | Callable | None = None, resume: bool = False, **overrides: Any) -> dict:
    """Train (or resume) a run and return its before/after evaluation ({} if stopped by Ctrl-C).

    config: as `load_config`; keyword overrides use `__` for the dot (run__epochs=3). reward: a
    registered name or a callable (registered as "python-reward"); prompts / eval_prompts: as
    `register_prompts`. run_dir defaults to run.output_dir, else runs/<name>-<date>."""
    import time

    from .images import check_run, run_images

    if reward is not None and not callable(reward):
        _expect(reward, (str,), "reward", "a reward name or spec (str) or a callable fn(images, prompts, metadata)")
    _expect(run_dir, (str, Path, type(None)), "run_dir", "a folder path")
    _expect(resume, (bool,), "resume", "True or False")
    for what, value in (("prompts", prompts), ("eval_prompts", eval_prompts)):
        if value is not None and not callable(value):
            _expect(value, (list, tuple), what, "a list of prompts or (prompt, metadata) pairs, or a prompt function")
    cfg = load_config(config, **overrides)
    if callable(reward):
        name = getattr(reward, "__name__", "")
        custom = name in REWARDS and getattr(REWARDS[name].factory, "python_callable", False)
        usable = name.replace("_", "-").replace("-", "").isalnum() and (name not in REWARDS or custom)
        reward = register_reward(name if usable else "python-reward", reward)
    if reward is not None:
        cfg = replace(cfg, reward=replace(cfg.reward, name=reward))
    if prompts is not None:
        cfg = replace(cfg, prompts=replace(cfg.prompts, source=register_prompts("train", prompts)))
    if eval_prompts is not None:
        cfg = replace(cfg, prompts=replace(cfg.prompts, eval_source=register_prompts("eval", eval_prompts)))
    run_dir = Path(run_dir or cfg.run.output_dir or f"runs/python-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = replace(cfg, run=replace(cfg.run, output_dir=str(run_dir)))
    for change in check_run(cfg, run_dir, resume=resume):
        print(f"resume {run_dir}: {change}")
    return run_images(cfg, run_dir, resume=resume)

