"""Verifier of the shapes world: detect shapes in an image and score them against a prompt.

Detection: a pixel belongs to a colour when it is saturated and bright enough and its hue lies
within `HUE_TOLERANCE` degrees of that colour's prototype; the connected components of each
colour's mask, above a minimum area, are the detected objects. A component's shape comes from
four properties of its mask: how much of its bounding box it fills (square 1, circle pi/4,
triangle 1/2), how much of it lies in the top half (an upright triangle holds 1/4 there), how
much narrower its top third is than its bottom third (only a triangle tapers), and how full
the corners of its box are (only a square fills them).

Scoring follows GenEval: a binary `correct` per prompt, plus a partial-credit `score` in [0, 1]
that counts how many of the prompt's requirements hold, for a denser RL signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from ...decode import rgb_array
from .prompts import PromptSpec, parse_prompt
from .render import HUES, relations_between

HUE_TOLERANCE = 30.0
MIN_SATURATION = 0.4
MIN_VALUE = 0.3
MIN_AREA_FRACTION = 30 / 48**2  # smallest component counted, as a fraction of the image
_BLOCK = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    cx: float
    cy: float
    size: float
    area: int


@dataclass(frozen=True)
class Verdict:
    correct: bool
    score: float
    category: str
    detections: tuple[Detection, ...]


def _to_array(image) -> np.ndarray:
    """(H, W, 3) float in [0, 1] from a PIL image, a uint8 array or a float array/tensor."""
    if isinstance(image, Image.Image):
        return rgb_array(image, "the verifier's image").astype(np.float64) / 255.0
    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"verifier expects an RGB image (H, W, 3) or (3, H, W); got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    return np.clip(a.astype(np.float64), 0.0, 1.0)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-12), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.maximum(delta, 1e-12)
    hue = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return hue * 60.0, sat, mx


def _classify(mask: np.ndarray) -> str:
    """Shape of one component given its mask cropped to its bounding box."""
    h, w = mask.shape
    fill = mask.mean()
    top = mask[: h // 2].sum() / max(mask.sum(), 1)
    cy, cx = max(h // 4, 1), max(w // 4, 1)
    corners = np.concatenate([mask[:cy, :cx].ravel(), mask[:cy, -cx:].ravel(),
                              mask[-cy:, :cx].ravel(), mask[-cy:, -cx:].ravel()]).mean()
    widths = mask.sum(1)
    third = max(h // 3, 1)
    taper = widths[:third].mean() / max(widths[-third:].mean(), 1)  # ~0.3 triangle, ~1 otherwise
    if (top < 0.40 or taper < 0.7) and fill < 0.85:
        return "triangle"
    if corners > 0.6 or fill > 0.9:
        return "square"
    return "circle"


def detect(image) -> tuple[Detection, ...]:
    rgb = _to_array(image)
    height, width = rgb.shape[:2]
    hue, sat, val = _hsv(rgb)
    colored = (sat >= MIN_SATURATION) & (val >= MIN_VALUE)
    min_area = MIN_AREA_FRACTION * height * width
    # Each pixel goes to its nearest colour prototype only, so an in-between hue is never
    # counted as two objects.
    protos = np.array(list(HUES.values()))
    dist = np.abs((hue[..., None] - protos + 180.0) % 360.0 - 180.0)  # (H, W, colours)
    nearest, near_dist = dist.argmin(-1), dist.min(-1)
    colored &= near_dist <= HUE_TOLERANCE
    found = []
    for k, name in enumerate(HUES):
        # Opening drops one-pixel fringes (anti-aliased edges over texture) and speckle noise.
        mask = ndimage.binary_opening(colored & (nearest == k), structure=_BLOCK)
        labels, _ = ndimage.label(mask)
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels[sl] == i
            area = int(mask.sum())
            h, w = mask.shape
            # Noise gives thin or sparse blobs; a shape is compact and fills a fair part of its box.
            if area < min_area or max(h, w) > 2.5 * min(h, w) or mask.mean() < 0.35:
                continue
            ys, xs = sl
            found.append(Detection(_classify(mask), name, (xs.start + xs.stop) / 2,
                                   (ys.start + ys.stop) / 2, float(max(h, w)), area))
    return tuple(found)


def _has(dets, shape, color=None) -> bool:
    return any(d.shape == shape and (color is None or d.color == color) for d in dets)


def judge(spec: PromptSpec, dets: tuple[Detection, ...]) -> tuple[bool, float]:
    """(correct, partial score) of detections against a prompt spec.

    Unlike GenEval, a cluttered image (more than twice the asked-for objects, plus two) is never
    correct, and its partial score shrinks with the clutter: otherwise an image full of shapes of
    every colour would satisfy every prompt, an easy hack for an RL policy.
    """
    asked = spec.count if spec.category == "counting" else len(spec.objects)
    correct, score = _judge(spec, dets)
    if len(dets) > 2 * asked + 2:
        return False, score * (2 * asked + 2) / len(dets) / 2
    return correct, score


def _judge(spec: PromptSpec, dets: tuple[Detection, ...]) -> tuple[bool, float]:
    o = spec.objects
    if spec.category == "single_object":
        ok = _has(dets, o[0].shape)
        return ok, float(ok)
    if spec.category == "two_object":
        parts = [_has(dets, x.shape) for x in o]
        return all(parts), sum(parts) / 2
    if spec.category == "counting":
        n = sum(d.shape == o[0].shape for d in dets)
        return n == spec.count, 1.0 - abs(n - spec.count) / max(n, spec.count)
    if spec.category in ("colors", "color_attr"):
        parts = [p for x in o for p in (_has(dets, x.shape), _has(dets, x.shape, x.color))]
        return all(parts), sum(parts) / len(parts)
    if spec.category == "position":
        a = [d for d in dets if d.shape == o[0].shape]
        b = [d for d in dets if d.shape == o[1].shape]
        rel = any(spec.relation in relations_between((p.cx, p.cy, p.size), (q.cx, q.cy, q.size))
                  for p in a for q in b if p is not q)
        return rel, (bool(a) + bool(b)) / 4 + 0.5 * rel
    raise ValueError(f"unknown category {spec.category!r}")


def verify(image, prompt: str | PromptSpec) -> Verdict:
    """Score one image against one prompt of the shapes grammar."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    dets = detect(image)
    correct, score = judge(spec, dets)
    return Verdict(bool(correct), float(score), spec.category, dets)
