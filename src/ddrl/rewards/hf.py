"""Shared pieces of the rewards that run a transformers model: loading with a clear error, the
default device, and image preprocessing written in torch so that gradients reach the images."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import RewardError


def default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load(reward: str, what: str, loader: Callable[[], Any]) -> Any:
    """`loader()`, or a RewardError that names the reward and says how to point it at local files."""
    try:
        return loader()
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RewardError(f"reward {reward!r}: cannot load {what}: {first}. Pass a local folder or a hub id "
                          f"that is in the cache (this machine may have no network).") from None


class Preprocess:
    """Resize the shortest side (bicubic, antialiased), centre-crop, normalise: what CLIP and BLIP
    image processors do, in torch. Sizes and statistics are read from the model's processor."""

    def __init__(self, processor):
        size = processor.size
        self.resize = size.get("shortest_edge") or (size.get("height"), size.get("width"))
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        self.crop = (crop["height"], crop["width"]) if crop else None
        self.mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std).view(1, 3, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        if isinstance(self.resize, int):
            # rounded as the processors round it: int(shortest_edge * long / short)
            size = (self.resize, int(self.resize * w / h)) if h <= w else (int(self.resize * h / w), self.resize)
        else:
            size = self.resize
        if (h, w) != tuple(size):
            images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
        if self.crop:
            ch, cw = self.crop
            top, left = (images.shape[-2] - ch) // 2, (images.shape[-1] - cw) // 2
            images = images[..., top:top + ch, left:left + cw]
        return (images - self.mean.to(images)) / self.std.to(images)
