"""The algorithm registry: names to classes. `ddrl train --help`, `ddrl train --print-config`
and the config checks read it; `register_algorithm` adds one from outside the package."""

from __future__ import annotations

import dataclasses

from ..config import ConfigError, _hint
from .base import Algorithm
from .ddpo import DDPO, DDPOSF
from .dpo import DPO, SFT, OnlineDPO
from .flow_grpo import FlowGRPO
from .nft import NFT
from .pref_grpo import PrefGRPO
from .reward_backprop import AlignProp, DRaFT, ReFL
from .rwr import RWR

ALGORITHMS: dict[str, type[Algorithm]] = {
    "ddpo-is": DDPO,
    "ddpo-sf": DDPOSF,
    "rwr": RWR,
    "flow-grpo": FlowGRPO,
    "pref-grpo": PrefGRPO,
    "nft": NFT,
    "dpo": DPO,
    "online-dpo": OnlineDPO,
    "sft": SFT,
    "refl": ReFL,
    "draft": DRaFT,
    "alignprop": AlignProp,
}


def register_algorithm(name: str, cls: type[Algorithm]) -> str:
    """Make `cls` the algorithm `train.algorithm name` for this process. Its `Options` must be a
    frozen dataclass whose `section` is a config section of its own (not a built-in one)."""
    from ..config import _sections

    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"algorithm name {name!r}: use letters, digits, - and _")
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ConfigError(f"algorithm {name!r}: expected a subclass of ddrl.algorithms.Algorithm, got {cls!r}")
    if name in ALGORITHMS and ALGORITHMS[name].__module__.startswith("ddrl."):
        raise ConfigError(f"algorithm {name!r} is built in; choose another name")
    opts = cls.Options
    if not dataclasses.is_dataclass(opts) or not opts.__dataclass_params__.frozen:
        raise ConfigError(f"algorithm {name!r}: its Options must be a frozen dataclass")
    if dataclasses.fields(opts) and (not opts.section or opts.section in _sections()):
        raise ConfigError(f"algorithm {name!r}: Options.section must name a section of its own, not "
                          f"{opts.section!r}")
    ALGORITHMS[name] = cls
    return name


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered algorithm called `name`, or a ConfigError with the closest name."""
    if name not in ALGORITHMS:
        raise ConfigError(f"train.algorithm {name!r} is unknown{_hint(name, ALGORITHMS)}; "
                          f"choose from {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def options_of(cfg):
    """The chosen algorithm's options: cfg.options, or its defaults when None. Options of another
    algorithm's type are a ConfigError (build configs with ddrl.load_config or apply_overrides)."""
    Options = algorithm_class(cfg.train.algorithm).Options
    if cfg.options is None:
        return Options()
    if type(cfg.options) is not Options:
        raise ConfigError(f"config.options is a {type(cfg.options).__name__}, but train.algorithm "
                          f"{cfg.train.algorithm} takes {Options.__name__}; build the config with ddrl.load_config "
                          "or apply_overrides, which reset the options when the algorithm changes")
    return cfg.options
