"""VAE latents of preference pairs, computed once per dataset, model and resolution and kept in
safetensors for every later run.

Images are resized (shorter side to the resolution, bilinear) and centre-cropped, as
SalesforceAIResearch/DiffusionDPO's train.py without --random_crop. The cache holds the VAE's
posterior mean and std, scaled as the model's latents are, so each use draws a fresh latent
z = mean + std * n as the reference's `latent_dist.sample()` does. With `data.hflip` (the
reference's RandomHorizontalFlip, on unless --no_hflip) the mirrored images are encoded too and
each use picks one orientation per image at random.

Layout: CACHE_DIR/<key>/latents.safetensors (tensors mean_w, std_w, mean_l, std_l and with hflip
the same with a _flip suffix, each (N, C, h, w)) and pairs.json (prompts, where each row came from,
rows skipped). The key hashes the data's identity (a file's path, size and mtime, or a dataset's
fingerprint), the model and its VAE config, the resolution and hflip. The whole cache is read into
memory: about 4 * 4 * C * h * w bytes per pair (128 KiB at SD 1.5's 512 px; 4.5 KiB on shapes-sd),
twice that with hflip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from .pairs import SAME_IMAGE, DataError, PairRows, open_image

ENCODE_BATCH = 16


def default_cache_dir() -> Path:
    return Path(os.environ.get("DDRL_CACHE", Path.home() / ".cache" / "ddrl")) / "pair-latents"


def preprocess(image: Image.Image, resolution: int) -> Tensor:
    """(3, R, R) in [-1, 1]: the shorter side resized to R, then the centre R x R."""
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1


@torch.no_grad()
def encode_pixels(vae, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, std) of the VAE posterior in the model's latent units: (z - shift) * scaling."""
    cfg = vae.config
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    shift = getattr(cfg, "shift_factor", None) or 0.0
    return ((dist.mean.float() - shift) * cfg.scaling_factor).cpu(), (dist.std.float() * cfg.scaling_factor).cpu()


@dataclass
class PairLatents:
    prompts: list[str]
    tensors: dict[str, Tensor]  # mean_w, std_w, mean_l, std_l (+ _flip), (N, C, h, w)
    skipped: list[str]
    ties: int

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def hflip(self) -> bool:
        return "mean_w_flip" in self.tensors

    def draw(self, idx: list[int], gens: list[torch.Generator]) -> tuple[Tensor, Tensor]:
        """(x_0^w, x_0^l), each (B, C, h, w): per image an orientation (with hflip) and a draw from
        the VAE posterior, both from the row's generator."""
        out = []
        for z in ("w", "l"):
            rows = []
            for i, g in zip(idx, gens):
                flip = self.hflip and bool(torch.rand((), generator=g) < 0.5)
                key = f"_{z}_flip" if flip else f"_{z}"
                mean, std = self.tensors[f"mean{key}"][i], self.tensors[f"std{key}"][i]
                rows.append(mean + std * torch.randn(mean.shape, generator=g))
            out.append(torch.stack(rows))
        return out[0], out[1]


def _remove_stale_tmp(folder: Path) -> None:
    """Remove the temporary folders of this cache left by a writer that was killed (each is named
    with its writer's process id; one whose process is still running is kept)."""
    for tmp in folder.parent.glob(f".{folder.name}.*.tmp"):
        pid = tmp.name[len(folder.name) + 2:-4]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def cache_key(rows: PairRows, model_name: str, vae, resolution: int, hflip: bool) -> str:
    vae_config = json.dumps({k: v for k, v in dict(vae.config).items() if not k.startswith("_")},
                            sort_keys=True, default=str)
    text = json.dumps([rows.identity, len(rows.rows), model_name, vae_config, resolution, hflip])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def pair_latents(rows: PairRows, policy, model_name: str, resolution: int, hflip: bool, cache_dir: str | Path,
                 skip_bad_rows: bool, progress: bool = True) -> tuple[PairLatents, Path, bool]:
    """(the latents, their cache folder, whether they were read from the cache)."""
    from safetensors.torch import load_file, save_file

    folder = Path(cache_dir or default_cache_dir()) / cache_key(rows, model_name, policy.vae, resolution, hflip)
    if (folder / "latents.safetensors").is_file() and (folder / "pairs.json").is_file():
        meta = json.loads((folder / "pairs.json").read_text())
        if meta["skipped"] and not skip_bad_rows:  # the same data refused as when it was first read
            raise DataError(f"{meta['skipped'][0]} (set data.skip_bad_rows true to skip bad rows and count them)")
        return PairLatents(meta["prompts"], load_file(folder / "latents.safetensors"), meta["skipped"],
                           meta["ties"]), folder, True
    _remove_stale_tmp(folder)
    skipped = list(rows.skipped or [])
    prompts, where, parts = [], [], {}
    batch: list = []

    def flush():
        if not batch:
            return
        for z, k in (("w", 1), ("l", 2)):
            pixels = torch.stack([b[k] for b in batch])
            views = [("", pixels)] + ([("_flip", pixels.flip(-1))] if hflip else [])
            for suffix, px in views:
                mean, std = encode_pixels(policy.vae, px)
                parts.setdefault(f"mean_{z}{suffix}", []).append(mean)
                parts.setdefault(f"std_{z}{suffix}", []).append(std)
        prompts.extend(b[0].prompt for b in batch)
        where.extend(b[0].where for b in batch)
        batch.clear()

    for row in tqdm(rows.rows, desc="encoding pair latents", unit="pair", disable=not progress):
        try:
            images = [preprocess(open_image(r), resolution) for r in (row.chosen, row.rejected)]
            if torch.equal(images[0], images[1]):  # Diffusion-DPO's loss on such a pair is noise
                raise ValueError(SAME_IMAGE)
        except ValueError as e:
            if not skip_bad_rows:
                raise DataError(f"{row.where}: {e} (set data.skip_bad_rows true to skip bad rows and count "
                                "them)") from None
            skipped.append(f"{row.where}: {e}")
            continue
        batch.append((row, *images))
        if len(batch) == ENCODE_BATCH:
            flush()
    flush()
    if not prompts:
        raise DataError(f"no usable pairs: all {len(rows.rows)} rows were bad ({skipped[0]} ...)")
    tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")  # written whole, then renamed: never half a cache
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, tmp / "latents.safetensors")
    (tmp / "pairs.json").write_text(json.dumps({"prompts": prompts, "where": where, "skipped": skipped,
                                                "ties": rows.ties, "identity": rows.identity,
                                                "model": model_name, "resolution": resolution, "hflip": hflip}))
    if (folder / "latents.safetensors").is_file():  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return PairLatents(prompts, tensors, skipped, rows.ties), folder, False
