"""Atomic file writes: a file is written under a temporary name beside it and renamed into
place, so a run killed mid-write leaves the previous version (or nothing), never half a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes the content to the temporary path `tmp`, which then replaces `path`.
    The temporary name keeps the suffix, so writers that pick a format by it (PIL) still work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))
