"""The one decoder for images that users give ddrl: DPO pairs (files, bytes and `datasets`
cells), `reward-train`'s pairs, the reward server's requests, and PIL images passed to a reward
or to the shapes verifier.

ddrl reads 8-bit images. PIL converts a 16-bit ("I;16", "I") or float ("F") image to RGB by
clipping each value to 255, so a 16-bit PNG comes out nearly white and a float image in [0, 1]
black: such images are refused, naming the mode, never silently clipped.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# the modes PIL stores in 8 bits per channel, which convert("RGB") maps without clipping
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


class ImageDecodeError(ValueError):
    """An image that cannot be read, or is not 8-bit; the message says which and why."""


def check_eight_bit(image: Image.Image, what: str = "the image") -> None:
    """Refuse an image whose mode is not 8-bit (Image.open reads only the header, so this runs
    before any pixel is decoded)."""
    if image.mode not in EIGHT_BIT_MODES:
        raise ImageDecodeError(f"{what} has mode {image.mode!r} ({_describe(image.mode)}); ddrl reads 8-bit "
                               "images (RGB, RGBA, L or P): convert it to 8 bits per channel first")


def _describe(mode: str) -> str:
    if mode.startswith("I;16") or mode == "I":
        return "16 or 32 bits per value, which converting to RGB clips at 255"
    if mode == "F":
        return "floating point, which converting to RGB clips at 255"
    return "not an 8-bit mode"


def open_header(source: str | Path | bytes | bytearray | Image.Image, what: str = "the image") -> Image.Image:
    """PIL's lazily decoded image from a path, encoded bytes or a PIL image, checked to be 8-bit."""
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        elif isinstance(source, (str, Path)):
            image = Image.open(source)
        else:
            raise ImageDecodeError(f"{what}: expected image bytes, a path or a PIL image, got {type(source).__name__}")
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - missing, truncated, or not an image: one clear message
        raise ImageDecodeError(f"cannot decode {what} ({type(e).__name__}: {str(e)[:200]})") from None
    check_eight_bit(image, what)
    return image


def decode_rgb(source: str | Path | bytes | bytearray | Image.Image, what: str = "the image") -> Image.Image:
    """An RGB PIL image, fully decoded, from a path, encoded bytes or a PIL image."""
    image = open_header(source, what)
    try:
        rgb = image.convert("RGB")
        rgb.load()
    except Exception as e:  # noqa: BLE001 - a header that opened but pixels that do not
        raise ImageDecodeError(f"cannot decode {what} ({type(e).__name__}: {str(e)[:200]})") from None
    finally:
        if image is not source:
            image.close()
    return rgb


def rgb_array(source: str | Path | bytes | bytearray | Image.Image, what: str = "the image") -> np.ndarray:
    """(H, W, 3) uint8."""
    return np.asarray(decode_rgb(source, what))
