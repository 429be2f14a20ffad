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


def straight_through_8bit(x: Tensor) -> Tensor:
    """x rounded to the nearest of 256 levels in [0, 1], with the gradient of the identity."""
    x = x.clamp(0, 1)
    return x + ((x * 255).round() / 255 - x).detach()


RESIZES = ("bicubic", "bilinear")


class Preprocess:
    """Resize the shortest side (bicubic, antialiased), centre-crop, normalise: what CLIP and BLIP
    image processors do, in torch. Sizes and statistics are read from the model's processor.

    The processors work on 8-bit PIL images: the image is quantised to 8 bits, and PIL resizes
    rows first, then columns, storing each pass in 8 bits. With `quantize` (the default) the
    tensor path does the same, each rounding straight-through (its gradient is the identity's),
    so the scores equal the processor's while gradients reach the images. torch's antialiased
    bicubic is PIL's filter (a = -0.5, support scaled by the ratio); the values then agree except
    for rare one-level flips where a pass lands on a rounding tie.

    `resize` bilinear is AlignProp's path instead (alignprop_trainer.py: torchvision's
    Resize(224) on the float tensor, one antialiased bilinear pass); with quantize false that path
    exactly. The two resizes differ by about 0.03 in normalised pixels on natural images."""

    def __init__(self, processor, quantize: bool = True, resize: str = "bicubic"):
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
        size = processor.size
        self.resize = size.get("shortest_edge") or (size.get("height"), size.get("width"))
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        self.crop = (crop["height"], crop["width"]) if crop else None
        self.mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
        self.quantize, self.mode = quantize, resize

    def __call__(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        if isinstance(self.resize, int):
            # rounded as the processors round it: int(shortest_edge * long / short)
            size = (self.resize, int(self.resize * w / h)) if h <= w else (int(self.resize * h / w), self.resize)
        else:
            size = self.resize
        q = straight_through_8bit if self.quantize else (lambda x: x)
        images = q(images)
        if (h, w) != tuple(size) and self.mode == "bilinear":  # one pass, as torchvision
            images = q(F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False))
        elif (h, w) != tuple(size):
            for pass_size in ((h, size[1]), tuple(size)):  # rows, then columns, as PIL
                if images.shape[-2:] != pass_size:
                    images = q(F.interpolate(images, size=pass_size, mode="bicubic", antialias=True,
                                             align_corners=False))
        if self.crop:
            ch, cw = self.crop
            top, left = (images.shape[-2] - ch) // 2, (images.shape[-1] - cw) // 2
            images = images[..., top:top + ch, left:left + cw]
        return (images - self.mean.to(images)) / self.std.to(images)
