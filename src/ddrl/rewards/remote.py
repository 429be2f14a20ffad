"""The `remote:URL` reward: a client of `ddrl reward-server` with batching, timeouts and retries.

Batches go out as npz (float32, exact) or PNG (8-bit, smaller). Connection failures, timeouts and
5xx/429 answers are retried with exponential backoff; a 4xx answer is the client's fault and is
raised at once with the server's message. The server is asked for /health when the reward is
built, so a wrong URL fails before any sampling.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import time
import urllib.error
import urllib.request
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import RewardError, RewardOutput
from .server import JSON, NPZ


class RemoteReward:
    differentiable = False
    device = "cpu"

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 3, batch_size: int = 32,
                 format: str = "npz", token_env: str = "DDRL_REWARD_TOKEN", backoff: float = 0.5):
        if format not in ("npz", "png"):
            raise RewardError(f"reward remote:{url}: format must be 'npz' or 'png', got {format!r}")
        if batch_size < 1 or retries < 0 or timeout <= 0:
            raise RewardError(f"reward remote:{url}: need batch_size >= 1, retries >= 0 and timeout > 0")
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise RewardError(f"reward remote:{url}: the URL must start with http:// or https://")
        self.timeout, self.retries, self.batch_size, self.format, self.backoff = timeout, retries, batch_size, format, backoff
        self.token = os.environ.get(token_env) or None
        self.name = f"remote:{self.url}"
        health = self._request("GET", "/health")
        self.name = f"{health.get('reward', 'remote')}@{self.url}"
        self.batch_size = min(self.batch_size, int(health.get("max_batch", self.batch_size)))
        self.max_pixels = int(health.get("max_pixels", 0)) or None

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        headers = {"Content-Type": content_type} if content_type else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code >= 500 or e.code == 429:
                    last = f"HTTP {e.code}: {message}"
                    continue
                raise RewardError(f"reward {self.name!r}: the server refused the request (HTTP {e.code}): {message}") from None
            except (urllib.error.URLError, OSError) as e:  # refused, unreachable, timed out
                last = str(getattr(e, "reason", e))
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise RewardError(f"reward {self.name!r}: the server answered with something that is not JSON: "
                                  f"{raw[:80]!r}") from None
        raise RewardError(f"reward {self.name!r}: no answer from {self.url} after {self.retries + 1} attempts "
                          f"({last}). Is `ddrl reward-server` running there?")

    def _encode(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> tuple[bytes, str]:
        if self.format == "npz":
            buf = io.BytesIO()
            np.savez(buf, images=images.detach().float().cpu().numpy(), prompts=np.array(prompts, dtype=str),
                     metadata=np.array(json.dumps(metadata, default=str)))
            return buf.getvalue(), NPZ
        from ..grid import to_pil

        pngs = []
        for im in to_pil(images.detach()):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            pngs.append(base64.b64encode(buf.getvalue()).decode())
        return json.dumps({"images": pngs, "prompts": prompts, "metadata": metadata}, default=str).encode(), JSON

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        scores, details = [], {}
        per_request = self.batch_size
        if self.max_pixels:  # requests stay under the server's pixel limit (one image over it is refused)
            per_request = max(1, min(per_request, self.max_pixels // (images.shape[-1] * images.shape[-2])))
        for i in range(0, len(images), per_request):
            sl = slice(i, i + per_request)
            body, kind = self._encode(images[sl], list(prompts[sl]), list(metadata[sl]))
            out = self._request("POST", "/score", body, kind)
            got = out.get("scores") if isinstance(out, dict) else None
            n = len(images[sl])
            if not isinstance(got, list) or len(got) != n:
                count = len(got) if isinstance(got, list) else type(got).__name__
                raise RewardError(f"reward {self.name!r}: the server returned {count} scores for {n} images")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in got):
                raise RewardError(f"reward {self.name!r}: the server returned non-numeric or non-finite scores")
            scores += got
            for k, v in (out.get("details") or {}).items():
                if isinstance(v, list) and len(v) == n:
                    details.setdefault(k, []).extend(v)
        details = {k: v for k, v in details.items() if len(v) == len(images)}
        return RewardOutput(torch.tensor(scores, dtype=torch.float32), details)


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        return json.loads(e.read()).get("error", "")
    except (ValueError, AttributeError, OSError):
        return e.reason
