"""The configuration of a control run: typed sections, presets, YAML and `--section.key` overrides,
checked before anything runs. The image config never sees these keys, nor this one theirs.

Sections: `env`, `policy`, `run`, `ppo` (shared by every algorithm), `eval`, and the chosen
algorithm's own (`dppo`, `reinflow`, `fpo`, `gaussian`).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..bounds import number_problem
from ..config import ConfigError, _coerce, flatten
from ..options import field_docs, option
from .algorithms import REGISTRY, PPOOptions


@dataclass(frozen=True)
class EnvOptions:
    section: ClassVar[str] = "env"
    id: str = option("ddrl/Routes-v0", None, "gymnasium environment id")
    n_envs: int = option(16, "[1, inf)", "parallel environments (DPPO Gym: 40)")
    n_steps: int = option(20, "[1, inf)", "action chunks per environment per iteration (DPPO Gym: 500)")
    horizon: int = option(4, "[1, inf)", "actions per chunk Ta, run open-loop; must match the policy")


@dataclass(frozen=True)
class PolicyOptions:
    section: ClassVar[str] = "policy"
    path: str = option("routes-ddpm", None, "a shipped policy (routes-ddpm, routes-flow, routes-gaussian) or a folder")


@dataclass(frozen=True)
class RunOptions:
    section: ClassVar[str] = "run"
    algorithm: str = option("dppo", None, "dppo, reinflow, fpo or gaussian-ppo")
    iterations: int = option(40, "[1, inf)", "iterations of rollout then update")
    seed: int = option(0, "[0, inf)", "seed of weights, environments and noise")
    output_dir: str = option("runs", None, "parent folder of run folders")
    name: str = option("", None, "run folder name (default: preset and date)")
    save_every: int = option(5, "[1, inf)", "checkpoint every this many iterations")
    keep_checkpoints: int = option(2, "[1, inf)", "checkpoints kept")
    report_to: str = option("tensorboard", None, "trackers: tensorboard, wandb, trackio, mlflow (comma-separated)")


@dataclass(frozen=True)
class EvalOptions:
    section: ClassVar[str] = "eval"
    every: int = option(5, "[1, inf)", "deterministic evaluation every this many iterations")
    episodes: int = option(100, "[1, inf)", "episodes of each periodic evaluation")
    final_episodes: int = option(500, "[1, inf)", "episodes of the before/after evaluation in the report")
    seed: int = option(1234, "[0, inf)", "evaluation seed (the same episodes before and after)")


SECTIONS = {"env": EnvOptions, "policy": PolicyOptions, "run": RunOptions, "ppo": PPOOptions, "eval": EvalOptions}
OPTION_SECTIONS = {name: cls.options_class for name, cls in REGISTRY.items()}


@dataclass(frozen=True)
class ControlConfig:
    env: EnvOptions = field(default_factory=EnvOptions)
    policy: PolicyOptions = field(default_factory=PolicyOptions)
    run: RunOptions = field(default_factory=RunOptions)
    ppo: PPOOptions = field(default_factory=PPOOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    options: Any = None  # the algorithm's options dataclass

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}
        out[self.options.section] = dataclasses.asdict(self.options)
        return out


_BASE = {"ppo.update_epochs": 5, "ppo.minibatches": 4}
PRESETS: dict[str, dict[str, Any]] = {
    "routes-dppo": {"run.algorithm": "dppo", "policy.path": "routes-ddpm", "ppo.actor_lr": 3e-4},
    "routes-reinflow": {"run.algorithm": "reinflow", "policy.path": "routes-flow", "ppo.actor_lr": 3e-4},
    "routes-fpo": {"run.algorithm": "fpo", "policy.path": "routes-flow", "ppo.actor_lr": 3e-4},
    "routes-gaussian": {"run.algorithm": "gaussian-ppo", "policy.path": "routes-gaussian", "ppo.actor_lr": 3e-4},
    "routes-gaussian-scratch": {"run.algorithm": "gaussian-ppo", "policy.path": "routes-gaussian",
                                "gaussian.from_scratch": True, "gaussian.init_std": 0.5, "gaussian.std_max": 1.0,
                                "gaussian.clip_range": 0.1, "ppo.actor_lr": 3e-4},
}
PRESET_DOCS = {
    "routes-dppo": "DPPO on the 2-D world from the shipped BC DDPM policy (20 steps, last 10 fine-tuned)",
    "routes-reinflow": "ReinFlow on the 2-D world from the shipped BC flow policy (4 Euler steps)",
    "routes-fpo": "FPO on the 2-D world from the shipped BC flow policy (10 ODE steps, 8 draws)",
    "routes-gaussian": "Gaussian PPO on the 2-D world from the shipped BC Gaussian policy (std 0.1)",
    "routes-gaussian-scratch": "Gaussian PPO on the 2-D world from fresh weights (std 0.5, clip 0.1)",
}


def _hint(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build(values: dict[str, Any]) -> ControlConfig:
    """A config from flat {section.key: value} (YAML or overrides, hyphens or underscores), on the
    defaults; unknown keys name the closest valid one. An algorithm's section is accepted only
    for the chosen algorithm."""
    values = {k.replace("-", "_"): v for k, v in values.items()}
    algorithm = str(values.get("run.algorithm", RunOptions.algorithm))
    if algorithm not in REGISTRY:
        raise ConfigError(f"run.algorithm must be one of {', '.join(REGISTRY)}, got {algorithm!r}"
                          f"{_hint(algorithm, REGISTRY)}")
    opt_cls = OPTION_SECTIONS[algorithm]
    classes = SECTIONS | {opt_cls.section: opt_cls}
    known = [f"{s}.{f.name}" for s, c in classes.items() for f in dataclasses.fields(c)]
    changes: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section in classes and any(f.name == name for f in dataclasses.fields(classes[section])):
            hints = typing.get_type_hints(classes[section])
            changes.setdefault(section, {})[name] = _coerce(key, value, hints[name])
            continue
        other = next((a for a, c in OPTION_SECTIONS.items() if c.section == section), None)
        if other is not None:
            raise ConfigError(f"{key} belongs to run.algorithm {other}, but this run uses {algorithm}")
        raise ConfigError(f"unknown control config key {key!r}{_hint(key, known)}")
    parts = {s: c(**changes.get(s, {})) for s, c in SECTIONS.items()}
    cfg = ControlConfig(**parts, options=opt_cls(**changes.get(opt_cls.section, {})))
    check_numbers(cfg)
    return cfg


def check_numbers(cfg: ControlConfig) -> None:
    """Every number finite and in the range beside its field; choices among their literals."""
    for section, part in [*((s, getattr(cfg, s)) for s in SECTIONS), (cfg.options.section, cfg.options)]:
        for name, (_, interval) in field_docs(type(part)).items():
            value = getattr(part, name)
            if interval and (problem := number_problem(value, interval)):
                raise ConfigError(f"{section}.{name} {problem}")


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown control preset {name!r}{_hint(name, PRESETS)}; presets: {', '.join(PRESETS)}")
    return dict(_BASE) | PRESETS[name]


def load(source: str | None, overrides: dict[str, Any]) -> tuple[ControlConfig, str]:
    """(config, name) from a preset name or a YAML file, then overrides."""
    from ..config import load_yaml

    source = source or "routes-dppo"
    if source.endswith((".yaml", ".yml")) or Path(source).is_file():
        values, name = load_yaml(source), Path(source).stem
    else:
        values, name = preset_values(source), source
    return build(values | {k.replace("-", "_"): v for k, v in overrides.items()}), name


def dump_yaml(cfg: ControlConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flat(cfg: ControlConfig) -> dict[str, Any]:
    return flatten(cfg.to_dict())
