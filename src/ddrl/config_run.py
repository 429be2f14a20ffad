"""A run folder's config.yaml: the resolved config written under a header holding its hash, and
read back verified (run/resume.py), with the keys added since earlier releases filled in so a run
started by an earlier release resumes as it was started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RENAMED, Config, apply_overrides, flatten

# keys added since earlier releases (a section name covers all its keys): a run's config.yaml
# without them resumes with their defaults, which behave as the release it was started with
ADDED = ("data", "backprop", "model.gradient_checkpointing", "train.optimizer", "train.lr_warmup_steps",
         "dpo.beta", "dpo.ref_update_steps", "dpo.tied_groups", "run.report_to", "model.resolution",
         "model.max_sequence_length", "train.ema_per", "nft.integer_timesteps", "pref_grpo")
# added keys whose default is not what earlier releases did: a run's config.yaml without them
# resumes with these values instead (a key of an algorithm's options only for that algorithm)
LEGACY = {"nft.integer_timesteps": False, "pref_grpo.steps": "first"}


def run_config_text(cfg: Config) -> str:
    """A run's config.yaml: the resolved config under a header holding its hash."""
    from .run.resume import config_text

    return config_text(cfg.to_dict())


def _missing_keys(values: dict[str, Any]) -> list[str]:
    """Keys a run's config.yaml must hold (read under their current names) that `values` lacks;
    keys added since earlier releases (ADDED) may be absent."""
    from .config_options import option_keys

    values = {RENAMED.get(k, k): v for k, v in values.items()}
    expected = [*flatten(Config().to_dict()), *option_keys(str(values.get("train.algorithm", "")))]
    return [k for k in expected if k not in values and k not in ADDED and k.partition(".")[0] not in ADDED]


def read_run_config(run_dir: str | Path, allow_edited: bool = False) -> Config:
    """The config a run folder was started with, checked against its hash (run/resume.py)."""
    from .run.resume import read_run_config as read

    return read(Path(run_dir), _missing_keys, lambda values: apply_overrides(Config(), _legacy(values)),
                allow_edited)


def _legacy(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the LEGACY value of each added key it lacks that its algorithm reads."""
    from .config_options import option_keys

    present = {RENAMED.get(k, k) for k in values}
    reads = set(flatten(Config().to_dict())) | set(option_keys(str(values.get("train.algorithm", ""))))
    return {**{k: v for k, v in LEGACY.items() if k not in present and k in reads}, **values}
