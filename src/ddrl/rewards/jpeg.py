"""JPEG (in)compressibility, the DDPO paper's first tasks (Black et al. 2023, section 6.1).

The reward is the size in kilobytes (1 kB = 1000 bytes) of the image saved as JPEG at quality 95;
compressibility is its negative. All images of a run share one resolution, so the size depends
on content alone.
"""

from __future__ import annotations

import io
from typing import Sequence

import torch
from torch import Tensor

from ..grid import to_pil
from .base import RewardOutput


def jpeg_size_kb(image: Tensor, quality: int = 95) -> float:
    """Size of one (3, H, W) image in [0, 1], as 8-bit RGB JPEG."""
    buf = io.BytesIO()
    to_pil(image[None])[0].save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000


class JpegReward:
    differentiable = False
    device = "cpu"

    def __init__(self, sign: float, name: str, quality: int = 95):
        self.sign, self.name, self.quality = sign, name, quality

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        sizes = [jpeg_size_kb(img, self.quality) for img in images]
        return RewardOutput(self.sign * torch.tensor(sizes), {"jpeg_kb": sizes})


def jpeg_compressibility() -> JpegReward:
    return JpegReward(-1.0, "jpeg-compressibility")


def jpeg_incompressibility() -> JpegReward:
    return JpegReward(1.0, "jpeg-incompressibility")
