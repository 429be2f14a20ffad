"""Deterministic renderer of the shapes world.

A scene is a background plus a few saturated, non-overlapping shapes. Backgrounds are always of
low saturation (solid, gradient, stripes, checker or noise texture) so that colour separates
shapes from background, while textured backgrounds give JPEG compression something to remove.
Each scene is a pure function of `(prompt, seed)`.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .prompts import COLORS, PromptSpec, parse_prompt

IMAGE_SIZE = 48
SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter: anti-aliased edges

# Hue in degrees of each colour's prototype; the verifier classifies by nearest hue.
HUES = {"red": 0.0, "yellow": 55.0, "green": 120.0, "blue": 225.0, "purple": 285.0}
BACKGROUNDS = ("solid", "gradient", "stripes", "checker", "noise")


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    cx: float  # centre, pixels
    cy: float
    size: float  # side of the bounding box, pixels


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str
    seed: int


def _box(s: Shape) -> tuple[float, float, float, float]:
    h = s.size / 2
    return (s.cx - h, s.cy - h, s.cx + h, s.cy + h)


def _separated(a: Shape, b: Shape, gap: float = 2.0) -> bool:
    ax0, ay0, ax1, ay1 = _box(a)
    bx0, by0, bx1, by1 = _box(b)
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def relations_between(a: tuple[float, float, float], b: tuple[float, float, float]) -> set[str]:
    """Relations of object a to object b, each given as (cx, cy, size), in image coordinates
    (y grows downwards). GenEval's rule: shrink the centre offset by 0.1 of the summed sizes
    on each axis; a relation holds when its axis carries more than half of the unit offset."""
    off = np.array([a[0] - b[0], a[1] - b[1]])
    norm = float(np.hypot(*off))
    if norm == 0:
        return set()
    revised = np.maximum(np.abs(off) - 0.1 * (a[2] + b[2]), 0) * np.sign(off)
    dx, dy = revised / norm
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def layout(spec: PromptSpec, rng: random.Random, size: int = IMAGE_SIZE) -> tuple[Shape, ...]:
    """Pick colours, sizes and non-overlapping positions that satisfy `spec`."""
    if spec.category == "counting":
        wanted = [spec.objects[0]] * spec.count
    else:
        wanted = list(spec.objects)
    # Unspecified colours are random, each copy of a counted shape on its own.
    colors = [o.color or rng.choice(COLORS) for o in wanted]
    lo, hi = (10.0, 15.0) if len(wanted) > 2 else (11.0, 18.0)
    for _ in range(1000):
        shapes = []
        for o, c in zip(wanted, colors):
            s = rng.uniform(lo, hi)
            m = s / 2 + 1
            shapes.append(Shape(o.shape, c, rng.uniform(m, size - m), rng.uniform(m, size - m), s))
        if not all(_separated(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1 :]):
            continue
        if spec.category == "position":
            a, b = shapes
            if relations_between((a.cx, a.cy, a.size), (b.cx, b.cy, b.size)) != {spec.relation}:
                continue
        return tuple(shapes)
    raise RuntimeError(f"could not lay out {spec}")  # unreachable for the world's prompts


def _shape_color(name: str, rng: random.Random) -> tuple[int, int, int]:
    h = (HUES[name] + rng.uniform(-6, 6)) % 360 / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(kind: str, rng: random.Random, n: int) -> np.ndarray:
    """(n, n, 3) float in [0, 1], saturation at most ~0.15."""
    v0 = rng.uniform(0.3, 0.95)
    tint = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.12), 1.0))
    yy, xx = np.mgrid[0:n, 0:n] / n
    if kind == "solid":
        v = np.full((n, n), v0)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        v = v0 + rng.uniform(0.15, 0.3) * (t - t.mean())
    elif kind == "stripes":
        period = rng.uniform(0.08, 0.25)
        t = xx if rng.random() < 0.5 else yy
        v = v0 + 0.12 * np.sign(np.sin(2 * np.pi * t / period))
    elif kind == "checker":
        k = rng.choice((4, 6, 8))
        v = v0 + 0.1 * (((xx * k).astype(int) + (yy * k).astype(int)) % 2 * 2 - 1)
    elif kind == "noise":
        nrng = np.random.default_rng(rng.getrandbits(32))
        cells = n // SUPERSAMPLE
        v = v0 + 0.15 * nrng.standard_normal((cells, cells)).repeat(SUPERSAMPLE, 0).repeat(SUPERSAMPLE, 1)
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return np.clip(v[..., None] * tint, 0, 1)


def _draw(draw: ImageDraw.ImageDraw, s: Shape, color, k: int) -> None:
    x0, y0, x1, y1 = (c * k for c in _box(s))
    if s.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif s.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif s.shape == "triangle":  # upright isosceles, as wide as it is tall
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        raise ValueError(f"unknown shape {s.shape!r}")


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    rng = random.Random(scene.seed * 7919 + 1)
    n = size * SUPERSAMPLE
    bg = (_background(scene.background, rng, n) * 255).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        _draw(draw, s, _shape_color(s.color, rng), SUPERSAMPLE)
    return img.resize((size, size), Image.Resampling.BOX)


def make_scene(prompt: str | PromptSpec, seed: int, size: int = IMAGE_SIZE) -> Scene:
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    rng = random.Random(seed)
    shapes = layout(spec, rng, size)
    return Scene(shapes, rng.choice(BACKGROUNDS), seed)


def render(prompt: str | PromptSpec, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """A ground-truth image for `prompt`; the same (prompt, seed) always gives the same pixels."""
    return render_scene(make_scene(prompt, seed, size), size)
