"""Resume integrity: a run's config.yaml carries a hash of its content, each checkpoint keeps a
copy of it, and a resume continues a run only with the config it was started with.

A resumed run may change only what leaves its results untouched (RESUME_SAFE): more epochs, and
the cadence of checkpoints and grids. Anything else, or a config.yaml edited by hand, needs
`--resume-override` (`resume_override=True`); a damaged or incomplete config.yaml is refused
with the keys that differ from the last checkpoint's copy, which can be copied back. What the
keys mean is the caller's: this module sees flat {key: value} dicts.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from typing import Any, Callable

import yaml

from ..config import ConfigError, flatten

NAME = "config.yaml"
_HEADER = re.compile(r"^# ddrl run config, sha256 ([0-9a-f]{64})\b.*\n")

# keys a resumed run may change freely (run.epochs only upward); run.output_dir follows the folder
RESUME_SAFE = ("run.epochs", "run.save_every", "run.keep_checkpoints", "eval.grid_every", "reward.asynchronous",
               "run.output_dir")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def config_text(nested: dict) -> str:
    """A config's nested dict as YAML, under a header line holding the hash of the YAML."""
    body = yaml.safe_dump(nested, sort_keys=False)
    return f"# ddrl run config, sha256 {_sha256(body)} (resume checks it: change settings with overrides)\n{body}"


def _parse(path: Path) -> tuple[dict, str | None, str]:
    """(flat values, the hash in the header or None, the YAML body), or a ConfigError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is damaged: not UTF-8 text (byte {e.start})") from None
    header = _HEADER.match(text)
    body = text[header.end():] if header else text
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is damaged: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is damaged: expected a mapping of sections (model, sample, train, ...)")
    return flatten(data), header.group(1) if header else None, body


def read_run_config(run_dir: Path, missing: Callable[[dict], list[str]], build: Callable[[dict], Any],
                    allow_edited: bool = False) -> Any:
    """The config a run was started with, from its config.yaml, verified: `missing(values)` must
    name no key (a file cut short would otherwise fill the rest with defaults), and it must match
    its hash unless `allow_edited`; then `build(values)`. Problems name the keys that differ from
    the last checkpoint's copy."""
    path = run_dir / NAME
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a ddrl run folder (no {NAME})")
    values, digest, body = _parse(path)
    absent = missing(values)
    if absent:
        raise ConfigError(f"{path} is incomplete (cut short or edited): {len(absent)} keys are missing, e.g. "
                          f"{', '.join(absent[:4])}{_checkpoint_diff(run_dir, values)}")
    cfg = build(values)
    if digest is not None and digest != _sha256(body):
        if not allow_edited:
            raise ConfigError(f"{path} was edited or damaged after the run wrote it (its hash does not match)"
                              f"{_checkpoint_diff(run_dir, values)}. Change settings with overrides on the command "
                              "line, or accept the edits with --resume-override")
        print(f"warning: {path} was edited by hand; using it as --resume-override asks"
              f"{_checkpoint_diff(run_dir, values)}")
    return cfg


def _checkpoint_diff(run_dir: Path, values: dict) -> str:
    from .checkpoint import list_checkpoints

    ckpts = [c for c in list_checkpoints(run_dir / "checkpoints") if (c / NAME).is_file()]
    if not ckpts:
        return ""
    copy = ckpts[-1] / NAME
    try:
        saved, _, _ = _parse(copy)
    except ConfigError:
        return ""
    diff = [f"{k}: {saved[k]!r} in the checkpoint, {values[k]!r} in the file"
            for k in saved if k in values and values[k] != saved[k]]
    listed = (f"; keys that differ from the checkpoint's copy: {'; '.join(diff[:6])}"
              f"{f' and {len(diff) - 6} more' if len(diff) > 6 else ''}") if diff else ""
    return f"{listed}. The checkpoint's copy is {copy}: copy it to {run_dir / NAME} to resume as the run was"


def check_resume(saved: dict, given: dict, override: bool = False, safe: tuple[str, ...] = RESUME_SAFE,
                 length: str = "run.epochs") -> list[str]:
    """The changes of the nested config `given` from the run's `saved` one, as 'key: old -> new'
    lines. Changes outside `safe`, or a shorter run (`length`), raise a ConfigError naming them
    unless `override`."""
    a, b = flatten(saved), flatten(given)
    changes = {k: (a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k) and k != "run.output_dir"}
    unsafe = [k for k in changes if k not in safe]
    if b[length] < a[length]:
        unsafe.append(length)
    if unsafe and not override:
        listed = "; ".join(f"{k}: {changes[k][0]!r} in the run, {changes[k][1]!r} given" for k in unsafe[:4])
        raise ConfigError(f"resuming with another config: {listed}. A resumed run may only raise {length} and "
                          f"change {', '.join(k for k in safe if k not in (length, 'run.output_dir'))}; "
                          "add --resume-override to change the rest anyway")
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()]
