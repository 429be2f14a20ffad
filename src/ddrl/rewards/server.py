"""`ddrl reward-server`: any registered reward over HTTP, so heavy or clashing reward stacks can run
in their own environment, process, GPU or machine. This module is the protocol and its checks; the
server (an ASGI app on uvicorn that batches concurrent requests) is ddrl.rewards.serve.

    GET  /health  -> {"status": "ok", "reward": NAME, "max_batch": N, "max_bytes": M, "max_pixels": P,
                      "batch_size": the server's batching size}
    POST /score   <- application/x-npz: `images` (B, 3, H, W) float in [0, 1] or uint8,
                     `prompts` (B,) str, optional `metadata` (a JSON list of B objects, as a str)
                  <- application/json: {"images": [base64 PNG, ...], "prompts": [...], "metadata": [...]}
                  -> {"scores": [B floats], "details": {...}}  or  {"error": message} with 4xx/5xx

Requests are decoded with `numpy.load(allow_pickle=False)`, PIL and `json`: nothing a client sends
is unpickled or executed. Bodies over `max_bytes` are refused before they are read, and images
over `max_pixels` (in all, per request) before they are decoded. Every problem of the request
(undecodable, 16-bit, non-finite or out-of-range pixels, too large) is a 4xx, which the client does
not retry; a 5xx means the reward itself failed. With a token
(from an environment variable, so it stays out of `ps`), /score needs `Authorization: Bearer`.
"""

from __future__ import annotations

import base64
import errno
import io
import ipaddress
import json
import socket

import numpy as np
import torch

from ..decode import ImageDecodeError, check_eight_bit

NPZ, JSON = "application/x-npz", "application/json"


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_npz(body: bytes, max_pixels: int) -> tuple[torch.Tensor, list[str], list[dict] | None]:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            # the decompressed size of `images` is checked before it is read (an npz may be compressed)
            info = {i.filename: i.file_size for i in z.zip.infolist()}
            if info.get("images.npy", 0) > max_pixels * 3 * 8 + 1024:
                raise BadRequest(413, f"images decompress to {info['images.npy']} bytes, over this server's "
                                 f"limit of {max_pixels} pixels per request")
            arrays = {k: z[k] for k in z.files}
    except BadRequest:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure is the client's
        raise BadRequest(400, f"body is not a valid npz without pickled objects ({type(e).__name__}: {e})")
    for key in ("images", "prompts"):
        if key not in arrays:
            raise BadRequest(400, f"npz lacks {key!r}; it has {sorted(arrays)}")
    images, prompts = arrays["images"], arrays["prompts"]
    if images.ndim == 4 and images.shape[0] * images.shape[2] * images.shape[3] > max_pixels:
        raise BadRequest(413, f"{images.shape[0]} images of {images.shape[2]}x{images.shape[3]} are over this "
                         f"server's limit of {max_pixels} pixels per request")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255
    elif images.dtype.kind != "f":
        raise BadRequest(400, f"unsupported image type {images.dtype}: send uint8, or float in [0, 1]")
    if prompts.dtype.kind != "U" or prompts.ndim != 1:
        raise BadRequest(400, "prompts must be a 1-D array of strings")
    try:
        metadata = json.loads(str(arrays["metadata"])) if "metadata" in arrays else None
    except ValueError as e:
        raise BadRequest(400, f"metadata is not JSON: {e}")
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), prompts.tolist(), metadata


def decode_json(body: bytes, max_pixels: int) -> tuple[torch.Tensor, list[str], list[dict] | None]:
    from PIL import Image

    try:
        req = json.loads(body)
        encoded = req["images"]
        if not isinstance(encoded, list) or not all(isinstance(x, str) for x in encoded):
            raise TypeError("'images' must be a list of base64 strings")
        opened = [Image.open(io.BytesIO(base64.b64decode(x, validate=True))) for x in encoded]
    except Image.DecompressionBombError as e:  # PIL's own limit, far above any sane request
        raise BadRequest(413, str(e))
    except Exception as e:  # noqa: BLE001 - undecodable input is the client's
        raise BadRequest(400, f"expected JSON with base64 PNG 'images' and 'prompts' ({type(e).__name__}: {e})")
    if not opened:
        raise BadRequest(400, "empty batch")
    # Image.open reads only the header: sizes and modes are checked before any pixel is decoded
    pixels = sum(im.width * im.height for im in opened)
    if pixels > max_pixels:
        raise BadRequest(413, f"images of {pixels} pixels in all are over this server's limit of {max_pixels}")
    try:  # 16-bit and float images are refused, not clipped (ddrl/decode.py)
        for i, im in enumerate(opened):
            check_eight_bit(im, f"image {i}")
    except ImageDecodeError as e:
        raise BadRequest(400, str(e))
    if len({im.size for im in opened}) > 1:
        raise BadRequest(400, f"images differ in size: {sorted({im.size for im in opened})}")
    try:
        arrays = [np.asarray(im.convert("RGB")) for im in opened]
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt image
        raise BadRequest(400, f"an image could not be decoded ({type(e).__name__}: {e})")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return images, req.get("prompts"), req.get("metadata")


def _jsonable(details: dict) -> dict:
    """The details that survive JSON (numbers, strings, booleans and None in lists)."""
    ok = (int, float, str, bool, type(None))
    return {k: v for k, v in details.items() if all(isinstance(x, ok) for x in v)}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_problem(e: OSError, host: str, port: int) -> str:
    """What went wrong binding the server's socket, and what to do about it."""
    if isinstance(e, socket.gaierror):
        return f"{host!r} is not an address or a known host name; use e.g. 127.0.0.1 or 0.0.0.0"
    if e.errno == errno.EADDRINUSE:
        return f"port {port} is in use; choose another --port (0 picks a free one)"
    if e.errno == errno.EACCES:
        return f"no permission to bind port {port}; ports below 1024 need privileges, use --port 8100"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{host!r} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one of its addresses"
    return e.strerror or str(e)
