"""An algorithm's options in a config: `cfg.options`, the chosen algorithm's `Options` dataclass,
read from its own section (nft.beta, rwr.percentile, ...). apply_overrides (config.py) applies
the sections' keys, then these."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields
from typing import Any

from .config import Config, ConfigError, _coerce, _hint, _keys, _sections


def apply_options(cfg: Config, items: list[tuple[str, str, str, Any]]) -> Config:
    """The chosen algorithm's options with `items` (raw key, section, field, value) applied. A key
    of another algorithm's section is refused unless it holds that option's default (as every
    config file of earlier releases does for every algorithm)."""
    from .algorithms.registry import ALGORITHMS, algorithm_class

    Options = algorithm_class(cfg.train.algorithm).Options
    opts = cfg.options if type(cfg.options) is Options else Options()
    others = {a.Options.section: a.Options for a in ALGORITHMS.values() if a.Options.section}
    changes: dict[str, Any] = {}
    for raw_key, section, name, value in items:
        target = Options if section == Options.section else others.get(section)
        hints = typing.get_type_hints(target) if target is not None else {}
        names = [f.name for f in fields(target)] if target is not None else []
        if name not in names:
            known = _keys(_sections()) + [f"{Options.section}.{f.name}" for f in fields(Options)]
            raise ConfigError(f"unknown config key {raw_key!r}{_hint(f'{section}.{name}', known)}")
        coerced = _coerce(raw_key, value, hints[name])
        if target is Options:
            changes[name] = coerced
        elif coerced != getattr(target(), name):
            users = [n for n, a in ALGORITHMS.items() if a.Options is target]
            raise ConfigError(f"{section}.{name} is an option of train.algorithm {' or '.join(users)}; this config "
                              f"trains {cfg.train.algorithm}")
    return dataclasses.replace(cfg, options=dataclasses.replace(opts, **changes))


def option_keys(algorithm: str) -> list[str]:
    """The config keys of an algorithm's own options (empty for an unknown algorithm)."""
    from .algorithms.registry import ALGORITHMS

    Options = ALGORITHMS[algorithm].Options if algorithm in ALGORITHMS else None
    return [f"{Options.section}.{f.name}" for f in fields(Options)] if Options is not None else []
