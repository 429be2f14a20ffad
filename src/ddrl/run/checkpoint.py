"""Atomic, complete training checkpoints.

A checkpoint is a folder `checkpoints/epoch_NNNNNN` holding everything the next epoch depends on:
the trained weights (LoRA or full), the optimizer state, the per-prompt reward buffers and the
epoch. All randomness in a run is derived from (seed, epoch, sample index), so no RNG state is
needed. The folder is written under a temporary name and renamed into place, so a run killed at
any moment (even during the write) leaves the previous checkpoint intact; its state.json holds the
sha256 of every file, so a checkpoint damaged later is found on resume (and the previous one used). Safetensors and JSON
only: nothing is unpickled on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_NAME = re.compile(r"^epoch_(\d{6})$")


def optimizer_tensors(opt: torch.optim.Optimizer, whole=lambda t: t) -> tuple[dict[str, torch.Tensor], str]:
    """The optimizer's per-parameter state as named tensors (each passed through `whole`, which
    gathers a sharded one) plus its param groups as JSON.

    A parameter's state may nest (bitsandbytes' 8-bit AdamW keeps its quantization state in a
    dict): a nested tensor is named `i.outer/inner`. Values that are not tensors (8-bit AdamW's
    and Adafactor's integer step) go to the JSON as they are, so a resumed optimizer sees the
    same Python types, and the same arithmetic, as an uninterrupted one."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, object] = {}
    seen: set[int] = set()  # 8-bit AdamW shares one quantization map among parameters; safetensors refuses shared memory

    def walk(prefix: str, state: dict) -> None:
        for k, v in state.items():
            if "/" in str(k):
                raise ValueError(f"optimizer state key {k!r} contains '/', which names nesting in a checkpoint")
            if isinstance(v, dict):
                walk(f"{prefix}{k}/", v)
            elif torch.is_tensor(v):
                v = whole(v).contiguous()
                if v.numel() and v.untyped_storage().data_ptr() in seen:
                    v = v.clone()
                seen.add(v.untyped_storage().data_ptr())
                tensors[f"{prefix}{k}"] = v
            else:
                values[f"{prefix}{k}"] = v

    for i, s in sd["state"].items():
        walk(f"{i}.", s)
    if not values:  # torch's AdamW: every value is a tensor; the groups alone, as ddrl always wrote them
        return tensors, json.dumps(sd["param_groups"])
    return tensors, json.dumps({"param_groups": sd["param_groups"], "values": values})


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str) -> None:
    """Rebuild the state `optimizer_tensors` wrote and load it into `opt`."""
    meta = json.loads(groups)
    if isinstance(meta, list):
        meta = {"param_groups": meta, "values": {}}
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["values"].items()):
        i, name = key.split(".", 1)
        *outer, leaf = name.split("/")
        node = state.setdefault(int(i), {})
        for part in outer:
            node = node.setdefault(part, {})
        node[leaf] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class DamagedCheckpoint(ValueError):
    """A checkpoint folder is unreadable or fails its manifest of file hashes."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder` (recursively) by relative path."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def save_checkpoint(ckpt_dir: Path, epoch: int, weights: dict[str, torch.Tensor],
                    opt: torch.optim.Optimizer | tuple[dict[str, torch.Tensor], str], state: dict,
                    extra_files: dict[str, callable] | None = None, keep: int = 2) -> Path:
    """Write checkpoint `epoch` (the number of completed epochs) atomically and prune old ones.
    `opt` is the optimizer or its `optimizer_tensors`.
    `extra_files` maps a file name to a function writing it into the given folder. state.json,
    written last, lists the sha256 of every other file, so damage is found on resume."""
    final = ckpt_dir / f"epoch_{epoch:06d}"
    tmp = ckpt_dir / f".tmp_epoch_{epoch:06d}"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
        opt_tensors, groups = opt if isinstance(opt, tuple) else optimizer_tensors(opt)
        save_file({k: v.cpu() for k, v in opt_tensors.items()}, str(tmp / "optimizer.safetensors"),
                  metadata={"param_groups": groups})
        for name, write in (extra_files or {}).items():
            write(tmp)
        (tmp / "state.json").write_text(json.dumps(state | {"epoch": epoch, "files": _manifest(tmp)}))
    except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error type
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(ckpt_dir)
        kept = f"the previous checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"could not write checkpoint {final} ({type(e).__name__}: {str(e)[:200]}); "
                                   f"{kept}. Free disk space or fix permissions, then resume the run") from e
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written temporary folders are ignored)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and _NAME.match(p.name))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str, dict]:
    """(weights, optimizer tensors, optimizer groups, state), after checking every file against
    the manifest in state.json; a DamagedCheckpoint names the folder and the file otherwise."""
    from safetensors import safe_open

    try:
        state = json.loads((path / "state.json").read_text())
        for name, digest in state.get("files", {}).items():
            if not (path / name).is_file():
                raise ValueError(f"{name} is missing")
            if _sha256(path / name) != digest:
                raise ValueError(f"{name} does not match its hash")
        weights = load_file(str(path / "trainable.safetensors"))
        with safe_open(str(path / "optimizer.safetensors"), "pt") as f:
            groups = f.metadata()["param_groups"]
        opt = load_file(str(path / "optimizer.safetensors"))
    except Exception as e:  # noqa: BLE001 - any damage to the folder gets the same clear message
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({type(e).__name__}: {e})") from e
    return weights, opt, groups, state


def load_latest_intact(ckpt_dir: Path, load, wait=lambda: None, is_main: bool = True) -> None:
    """`load(path)` the newest checkpoint that passes its hash manifest. A damaged one is renamed
    `damaged_epoch_N` (kept for inspection, never loaded or pruned) and the previous one used."""
    ckpts = list_checkpoints(ckpt_dir)
    for ckpt in reversed(ckpts):
        try:
            load(ckpt)
            return
        except DamagedCheckpoint as e:
            wait()
            if is_main:
                ckpt.rename(ckpt.with_name(f"damaged_{ckpt.name}"))
                print(f"warning: {e}; moved it to damaged_{ckpt.name} and resuming from the checkpoint before it")
    if ckpts:
        raise ValueError(f"no intact checkpoint in {ckpt_dir} (each was moved aside as damaged_*); resuming again "
                         "starts the run from epoch 0")
