"""Safe file output. Atomic writes: a file is written under a temporary name beside it and
renamed into place, so a run killed mid-write leaves the previous version (or nothing), never half
a file. Writability checks: output paths are tried before any heavy work starts."""

from __future__ import annotations

import os
import tempfile
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


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Make sure files can be written in folder `path` before any heavy work, or raise a ValueError
    naming it and what to do. Folders created to try it are removed again."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "" if p == path else f" (its parent {p} is a file)"
                raise ValueError(f"{what} {path} is a file, not a folder{where}; choose another path")
            break
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ddrl-write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"{what} {path} is not writable ({e.strerror or e}); choose another path") from None
    finally:  # a failed start leaves no folder behind: the work creates them again when it writes
        for p in created:
            try:
                p.rmdir()
            except OSError:  # another process of the run is using it, or it was never made
                break
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """Make sure the file `path` can be written before any heavy work, or raise a ValueError naming
    it and what to do."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path")
    check_writable_dir(path.parent, f"the folder of {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} exists and is not writable; choose another path")
    return path


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file, or a ValueError naming the file and the line that is not UTF-8 (or why
    the file cannot be read)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text ({what}s must be UTF-8)") from None
