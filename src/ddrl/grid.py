"""Image grids with captions, for looking at samples rather than reading numbers."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

GOOD, BAD, NEUTRAL = (20, 120, 40), (170, 30, 30), (60, 60, 60)


def to_pil(images: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images."""
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def image_grid(images: Tensor, captions: Sequence[str], *, correct: Sequence[bool | None] | None = None,
               columns: int = 8, scale: int = 3) -> Image.Image:
    """A grid of upscaled images, each with its caption below, green when the verifier says
    correct, red when not."""
    pils = to_pil(images)
    if not pils:
        raise ValueError("image_grid needs at least one image")
    font = ImageFont.load_default()
    w, h = pils[0].width * scale, pils[0].height * scale
    chars = max(8, w // 6)
    lines = [textwrap.wrap(c, chars)[:3] for c in captions]
    caption_h = 12 * max(len(x) for x in lines) + 6
    columns = min(columns, len(pils))
    rows = -(-len(pils) // columns)
    pad = 4
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + caption_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, text) in enumerate(zip(pils, lines)):
        x = pad + (i % columns) * (w + pad)
        y = pad + (i // columns) * (h + caption_h + pad)
        grid.paste(img.resize((w, h), Image.Resampling.NEAREST), (x, y))
        ok = None if correct is None else correct[i]
        color = NEUTRAL if ok is None else (GOOD if ok else BAD)
        for j, line in enumerate(text):
            draw.text((x + 1, y + h + 2 + 12 * j), line, fill=color, font=font)
    return grid
