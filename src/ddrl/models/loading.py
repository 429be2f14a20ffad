"""Load a `Policy` from a built-in model name, a local diffusers folder or a hub id."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch

from ..prompts import shown
from .policy import ModelError, Policy

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN = {
    "shapes-sd": "epsilon-prediction latent diffusion, Stable Diffusion layout (UNet)",
    "shapes-flow": "rectified-flow model, Stable Diffusion 3 layout (MMDiT)",
}
_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def builtin_path(name: str) -> Path:
    if name not in BUILTIN:
        raise ModelError(f"unknown built-in model {name!r}; built-in models are {sorted(BUILTIN)}")
    path = ASSETS / name
    if not (path / "model_index.json").exists():
        raise ModelError(f"built-in model {name!r} is missing its weights at {path}; reinstall "
                         f"ddrl or rebuild it with `ddrl pretrain {name}`")
    return path


def resolve(name_or_path: str) -> tuple[str, bool]:
    """(where to load from, whether it is local)."""
    if name_or_path in BUILTIN:
        return str(builtin_path(name_or_path)), True
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return str(path), True
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "/")):
        return name_or_path, False
    raise ModelError(f"no model {name_or_path!r}: expected a built-in name {sorted(BUILTIN)}, "
                     "an existing diffusers folder, or a hub id like 'org/name'")


def _read_index(where: str, local: bool) -> dict:
    try:
        if local:
            return json.loads((Path(where) / "model_index.json").read_text())
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(where)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot read this model"
        source = "its model_index.json" if local else "it from the model hub (offline, or no such repo?)"
        raise ModelError(f"could not load {where!r}: cannot read {source}: {_one_line(e)}") from e


def _check_components(folder: Path, index: dict) -> None:
    """Each component model_index.json lists is present and is the class it names, read from the
    component's config.json before any weight loads (diffusers would fail mid-load, in its words)."""
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[1] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise ModelError(f"{folder} is not a complete {index['_class_name']}: model_index.json lists {name} "
                             f"({spec[1]}) but there is no folder {name}/")
        config = sub / "config.json"
        if not config.is_file():
            continue  # tokenizers and schedulers keep other files; diffusers names what is missing
        try:
            found = json.loads(config.read_text())
        except ValueError as e:
            raise ModelError(f"{config} is not valid JSON ({e})") from None
        found = found.get("_class_name")  # diffusers' models name their class; transformers' may not
        if spec[0] == "diffusers" and found and found != spec[1]:
            raise ModelError(f"{folder} holds the wrong model for a {index['_class_name']}: {name}/config.json is a "
                             f"{found}, but model_index.json expects {spec[1]}")


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def vocabulary_check(vocab: Sequence[str]):
    """A prompt check for models that only know a fixed vocabulary (the built-in models)."""
    known = set(vocab)

    def check(prompts: Sequence[str]) -> None:
        for p in prompts:
            unknown = sorted({w for w in p.lower().replace(".", " ").split() if w not in known})
            if unknown:
                raise ModelError(f"prompt {shown(p)} has words outside the model's vocabulary: "
                                 f"{unknown[:10]}; accepted words: {' '.join(sorted(known))}")

    return check


def load_policy(name_or_path: str, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, resolution: int | None = None,
                max_sequence_length: int | None = None) -> Policy:
    """Load a Stable Diffusion 1.x/2.x, SDXL, SD3/3.5 or FLUX.1 pipeline as a `Policy`. For SD3 and
    FLUX, `resolution` (pixels) sets the image size and `max_sequence_length` the T5 tokens; a
    folder's ddrl.json may give them too. SD 1.x/2.x and SDXL sample at their UNet's size."""
    where, local = resolve(name_or_path)
    index = _read_index(where, local)
    cls = index.get("_class_name")
    if cls not in _PIPELINES:
        raise ModelError(f"{name_or_path!r} is a {cls}; supported pipelines are {_PIPELINES}")
    if (resolution or max_sequence_length) and cls not in ("StableDiffusion3Pipeline", "FluxPipeline"):
        raise ModelError("model.resolution and model.max_sequence_length apply to SD3 and FLUX; SD 1.x/2.x and "
                         "SDXL sample at their UNet's size and encode 77 CLIP tokens")
    if local:
        _check_components(Path(where), index)
    meta = {}
    if local and (Path(where) / "ddrl.json").exists():
        meta = json.loads((Path(where) / "ddrl.json").read_text())
    check = None
    if meta.get("world") == "shapes":
        from ..worlds.shapes import vocabulary

        check = vocabulary_check(vocabulary())
    try:
        import diffusers

        kwargs = {"dtype": dtype}
        if cls == "StableDiffusionPipeline":
            kwargs |= {"safety_checker": None, "requires_safety_checker": False}
        pipe = getattr(diffusers, cls).from_pretrained(where, **kwargs)
    except Exception as e:  # noqa: BLE001 - corrupt weights, missing files, offline hub, ...
        raise ModelError(f"could not load {name_or_path!r}: {_one_line(e)}") from e
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.requires_grad_(False).eval()
    if cls == "StableDiffusionPipeline":
        from .stable_diffusion import StableDiffusionPolicy

        return StableDiffusionPolicy(pipe, prompt_check=check)
    if cls == "StableDiffusionXLPipeline":
        from .sdxl import StableDiffusionXLPolicy

        return StableDiffusionXLPolicy(pipe, prompt_check=check)
    if cls == "FluxPipeline":
        from .flux import FluxPolicy

        return FluxPolicy(pipe, max_sequence_length=max_sequence_length or meta.get("max_sequence_length", 512),
                          resolution=resolution or meta.get("resolution"), prompt_check=check)
    from .sd3 import SD3Policy

    return SD3Policy(pipe, max_sequence_length=max_sequence_length or meta.get("max_sequence_length", 256),
                     resolution=resolution or meta.get("resolution"), prompt_check=check)
