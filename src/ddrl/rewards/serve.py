"""The reward server's ASGI app on uvicorn, with dynamic batching (the protocol, the decoding and
the limits are in ddrl.rewards.server).

Requests from concurrent clients wait in one queue. A batcher takes the first waiting request,
adds those that arrive within `max_wait_ms` (and those already waiting) while the images stay
within `batch_size` and share one size, scores them in one call of the reward, in a worker thread
so the server keeps reading requests, and answers each request with its own slice of the scores
and details. While a batch is scored the next one fills, so under load batches grow on their own.
If a merged batch fails, each of its requests is scored alone, so an error reaches only the client
that caused it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .base import RewardFn, check_images, score
from .server import JSON, NPZ, BadRequest, _jsonable, decode_json, decode_npz


@dataclass
class _Job:
    images: torch.Tensor
    prompts: list[str]
    metadata: list[dict]
    done: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(self, reward: RewardFn, batch_size: int, max_wait_s: float):
        self.reward, self.batch_size, self.max_wait_s = reward, batch_size, max_wait_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.carry: list[_Job] = []  # taken from the queue but left for the next batch
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")  # one batch at a time
        self.task: asyncio.Task | None = None
        self.batches = self.requests = 0

    async def submit(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> tuple:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        job = _Job(images, prompts, metadata, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.done

    async def _next(self, timeout: float | None) -> _Job | None:
        if self.carry:
            return self.carry.pop(0)
        if timeout is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout) if timeout > 0 else self.queue.get_nowait()
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            jobs, n, deadline = [first], len(first.images), loop.time() + self.max_wait_s
            while n < self.batch_size:
                job = await self._next(deadline - loop.time())
                if job is None:
                    break
                if job.images.shape[1:] != first.images.shape[1:] or n + len(job.images) > self.batch_size:
                    self.carry.append(job)  # first in the next batch
                    break
                jobs.append(job)
                n += len(job.images)
            await self._score(jobs)

    async def _score(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        self.batches, self.requests = self.batches + 1, self.requests + len(jobs)
        try:
            scores, details = await loop.run_in_executor(self.pool, self._call, jobs)
        except Exception as e:  # noqa: BLE001 - passed to the request(s) that caused it
            if len(jobs) == 1:
                if not jobs[0].done.done():
                    jobs[0].done.set_exception(e)
                return
            for job in jobs:  # find whose request failed
                await self._score([job])
            return
        start = 0
        for job in jobs:
            end = start + len(job.images)
            if not job.done.done():  # a client that went away no longer waits
                job.done.set_result((scores[start:end], {k: v[start:end] for k, v in details.items()}))
            start = end

    def _call(self, jobs: list[_Job]) -> tuple[torch.Tensor, dict]:
        images = torch.cat([j.images for j in jobs])
        with torch.no_grad():
            return score(self.reward, images, [p for j in jobs for p in j.prompts],
                         [m for j in jobs for m in j.metadata])


class RewardApp:
    """The ASGI application: GET /health, POST /score."""

    def __init__(self, server: "RewardServer"):
        self.server = server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan and websockets are not served
            return
        s = self.server
        path = scope["path"].rstrip("/")
        try:
            if scope["method"] == "GET":
                if path != "/health":
                    raise BadRequest(404, f"no such endpoint {scope['path']}; use /health or POST /score")
                await _answer(send, 200, {"status": "ok", "reward": s.reward.name, "max_batch": s.max_batch,
                                          "max_bytes": s.max_bytes, "max_pixels": s.max_pixels,
                                          "batch_size": s.batch_size})
                return
            if scope["method"] != "POST" or path != "/score":
                raise BadRequest(404, f"no such endpoint {scope['method']} {scope['path']}; POST to /score")
            await _answer(send, 200, await self._score(scope, receive))
        except BadRequest as e:
            await _answer(send, e.status, {"error": str(e)}, close=True)  # the body may be unread
        except ValueError as e:  # RewardError, or a reward refusing its input (e.g. a prompt it cannot read)
            await _answer(send, 400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - report, keep serving
            if not s.quiet:
                print(f"reward-server: scoring failed: {e!r}", flush=True)
            await _answer(send, 500, {"error": f"the reward failed on the server: {type(e).__name__}: {e}"})

    async def _score(self, scope, receive) -> dict:
        s = self.server
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if s.token is not None:
            got = headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {s.token}".encode()):
                raise BadRequest(401, "missing or wrong bearer token")
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            raise BadRequest(411, "Content-Length is required")
        if int(length) > s.max_bytes:
            raise BadRequest(413, f"request of {int(length)} bytes is over this server's limit of {s.max_bytes}")
        kind = headers.get("content-type", "").split(";")[0].strip()
        if kind not in (NPZ, JSON):
            raise BadRequest(415, f"Content-Type must be {NPZ} or {JSON}, got {kind!r}")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest(400, "the client went away")
            body += message.get("body", b"")
            if len(body) > int(length):
                raise BadRequest(400, "the body is longer than its Content-Length")
            if not message.get("more_body", False):
                break
        decode = decode_npz if kind == NPZ else decode_json
        images, prompts, metadata = decode(bytes(body), s.max_pixels)
        if len(images) > s.max_batch:
            raise BadRequest(413, f"batch of {len(images)} is over this server's limit of {s.max_batch}")
        check_images(s.reward.name, images)
        if not isinstance(prompts, list) or len(prompts) != len(images) or not all(isinstance(p, str) for p in prompts):
            raise BadRequest(400, f"need one prompt string per image ({len(images)} images)")
        if metadata is not None and (not isinstance(metadata, list) or len(metadata) != len(images)
                                     or not all(isinstance(m, dict) for m in metadata)):
            raise BadRequest(400, "metadata must be a list of one JSON object per image")
        scores, details = await s.batcher.submit(images, prompts, metadata or [{} for _ in prompts])
        values = scores.tolist()
        assert all(math.isfinite(v) for v in values)  # score() refuses non-finite scores
        return {"scores": values, "details": _jsonable(details)}


async def _answer(send, status: int, payload: dict, close: bool = False) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RewardServer:
    """A reward served by uvicorn. The socket is bound at construction (so a bad host or port fails
    before the reward loads, and port 0 resolves at once); `serve_forever` runs the server,
    `shutdown` (from another thread) stops it, `server_close` releases the socket."""

    def __init__(self, reward: RewardFn | None, host: str = "127.0.0.1", port: int = 8100, token: str | None = None,
                 max_bytes: int = 64 << 20, max_batch: int = 256, max_pixels: int = 32_000_000, quiet: bool = False,
                 batch_size: int | None = None, max_wait_ms: float = 5.0):
        import uvicorn

        self.token, self.max_bytes, self.max_batch, self.max_pixels, self.quiet = token, max_bytes, max_batch, max_pixels, quiet
        self._batch_size, self.max_wait_ms = batch_size, max_wait_ms
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.socket.listen(2048)
        self.server_address = self.socket.getsockname()
        self.app = RewardApp(self)
        self.uvicorn = uvicorn.Server(uvicorn.Config(
            self.app, lifespan="off", log_level="warning" if quiet else "info", access_log=not quiet,
            timeout_keep_alive=30, http="h11"))
        self._stopped = threading.Event()
        self.reward = reward

    @property
    def reward(self) -> RewardFn | None:
        return self._reward

    @reward.setter
    def reward(self, reward: RewardFn | None) -> None:
        self._reward = reward
        if reward is not None:  # the reward's own batch size unless one is given
            self.batch_size = self._batch_size or int(getattr(reward, "batch_size", 0) or 32)
            self.batcher = Batcher(reward, self.batch_size, self.max_wait_ms / 1000)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self.uvicorn.should_exit = True
        self._stopped.wait(timeout=30)

    def server_close(self) -> None:
        self.socket.close()
        if hasattr(self, "batcher"):
            self.batcher.pool.shutdown(wait=False, cancel_futures=True)
