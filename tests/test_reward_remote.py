"""`ddrl reward-server` and the `remote:` client over a real loopback socket."""

import base64
import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from ddrl.rewards import RewardError, RewardOutput, get_reward, score
from ddrl.rewards.serve import RewardServer
from ddrl.worlds.shapes import render


def _shapes_batch(n=5):
    prompts = ["a red circle", "two squares", "a green triangle", "a yellow circle", "three triangles"][:n]
    arr = np.stack([np.asarray(render(p, seed=i)) for i, p in enumerate(prompts)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255, prompts


class _Serving:
    def __init__(self, reward, **kw):
        self.server = RewardServer(reward, "127.0.0.1", 0, quiet=True, **kw)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self.server

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_remote_scores_equal_local_scores_in_npz_and_png():
    images, prompts = _shapes_batch()
    local = get_reward("jpeg-incompressibility")
    want, _ = score(local, images, prompts)
    with _Serving(local) as srv:
        remote = get_reward(f"remote:{srv.url}(batch_size=2)")  # 3 requests for 5 images
        assert remote.name == f"jpeg-incompressibility@{srv.url}"
        got, details = score(remote, images, prompts)
        torch.testing.assert_close(got, want, atol=0, rtol=0)  # float32 npz is exact
        assert details["jpeg_kb"] == pytest.approx(want.tolist())
        png, _ = score(get_reward(f"remote:{srv.url}(format=png)"), images, prompts)
        torch.testing.assert_close(png, want, atol=0, rtol=0)  # these images are 8-bit already


def test_verifier_over_http_keeps_details_and_metadata():
    images, prompts = _shapes_batch(3)
    with _Serving(get_reward("route[task](geneval=shapes-accuracy, *=jpeg-compressibility)")) as srv:
        got, details = score(get_reward(f"remote:{srv.url}"), images, prompts,
                             [{"task": "geneval"}, {"task": "other"}, {"task": "geneval"}])
    assert got[0] == 1.0 and got[2] == 1.0 and got[1] < 0  # rendered scenes are correct; JPEG kB negated
    assert details["route"] == ["geneval", "*", "geneval"]


def test_token_is_required_when_set(monkeypatch):
    images, prompts = _shapes_batch(2)
    with _Serving(get_reward("jpeg-compressibility"), token="s3cret") as srv:
        monkeypatch.setenv("DDRL_REWARD_TOKEN", "wrong")
        remote = get_reward(f"remote:{srv.url}")  # /health is open
        with pytest.raises(RewardError, match="HTTP 401.*bearer token"):
            score(remote, images, prompts)
        monkeypatch.setenv("DDRL_REWARD_TOKEN", "s3cret")
        assert score(get_reward(f"remote:{srv.url}"), images, prompts)[0].shape == (2,)


def _post(url, body, kind, headers=None):
    req = urllib.request.Request(url + "/score", data=body, method="POST",
                                 headers={"Content-Type": kind, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_refuses_bad_requests_with_a_reason():
    images, prompts = _shapes_batch(2)
    with _Serving(get_reward("jpeg-compressibility"), max_bytes=200_000, max_batch=4) as srv:
        def npz(**arrays):
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            return buf.getvalue()

        ok = dict(images=images.numpy(), prompts=np.array(prompts))
        assert _post(srv.url, npz(**ok), "application/x-npz")[0] == 200
        # a pickled object array: refused, never unpickled
        evil = npz(images=images.numpy(), prompts=np.array([{"x": 1}, {"y": 2}], dtype=object))
        status, body = _post(srv.url, evil, "application/x-npz")
        assert status == 400 and "pickled" in body["error"]
        status, body = _post(srv.url, npz(images=images.numpy() * 3, prompts=np.array(prompts)), "application/x-npz")
        assert status == 400 and "[0, 1]" in body["error"]
        status, body = _post(srv.url, npz(images=images.numpy(), prompts=np.array(prompts[:1])), "application/x-npz")
        assert status == 400 and "one prompt string per image" in body["error"]
        status, body = _post(srv.url, b"x" * 300_000, "application/x-npz")
        assert status == 413 and "limit" in body["error"]
        big = npz(images=np.zeros((5, 3, 8, 8), np.float32), prompts=np.array(["a"] * 5))
        assert _post(srv.url, big, "application/x-npz")[0] == 413
        status, body = _post(srv.url, b"{}", "text/plain")
        assert status == 415
        status, body = _post(srv.url, json.dumps({"images": ["not base64!"], "prompts": ["a"]}).encode(),
                             "application/json")
        assert status == 400 and "base64 PNG" in body["error"]
        png = io.BytesIO()
        from PIL import Image
        Image.new("RGB", (8, 8)).save(png, format="PNG")
        good = json.dumps({"images": [base64.b64encode(png.getvalue()).decode()], "prompts": ["a"]}).encode()
        assert _post(srv.url, good, "application/json")[0] == 200


def test_client_errors_are_clear_and_retries_back_off():
    with pytest.raises(RewardError, match=r"no answer from http://127.0.0.1:9 after 3 attempts.*reward-server"):
        get_reward("remote:http://127.0.0.1:9(retries=2, timeout=1, backoff=0.01)")
    with pytest.raises(RewardError, match="must start with http"):
        get_reward("remote:127.0.0.1:8100")

    class Flaky:
        """Fails twice with an exception (HTTP 500), then scores; or returns too few scores."""
        name, differentiable, device = "flaky", False, "cpu"

        def __init__(self, short=False):
            self.calls, self.short = 0, short

        def __call__(self, images, prompts, metadata):
            self.calls += 1
            if self.calls <= 2 and not self.short:
                raise RuntimeError("transient")
            n = len(images) - 1 if self.short else len(images)
            return RewardOutput(torch.ones(n))

    images, prompts = _shapes_batch(2)
    flaky = Flaky()
    with _Serving(flaky) as srv:
        t0 = time.perf_counter()
        got, _ = score(get_reward(f"remote:{srv.url}(retries=3, backoff=0.05)"), images, prompts)
        assert got.tolist() == [1.0, 1.0] and flaky.calls == 3
        assert time.perf_counter() - t0 >= 0.05 + 0.1  # slept 0.05, then 0.1
    with _Serving(Flaky(short=True)) as srv:  # the server's own check catches a short answer
        with pytest.raises(RewardError, match="HTTP 400.*shape \\(1,\\) for a batch of 2"):
            score(get_reward(f"remote:{srv.url}(retries=0)"), images, prompts)


def test_client_refuses_garbage_from_a_server():
    """A server that is not a ddrl reward server: wrong count, or not JSON."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers = iter([b'{"status": "ok", "reward": "fake"}', b'{"scores": [1.0]}',
                    b'{"status": "ok", "reward": "fake"}', b"<html>oops</html>"])

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _answer(self):
            if self.command == "POST":
                self.rfile.read(int(self.headers["Content-Length"]))
            body = next(answers)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    images, prompts = _shapes_batch(2)
    try:
        with pytest.raises(RewardError, match="returned 1 scores for 2 images"):
            score(get_reward(f"remote:{url}"), images, prompts)
        with pytest.raises(RewardError, match="not JSON"):
            score(get_reward(f"remote:{url}"), images, prompts)
    finally:
        srv.shutdown()
        srv.server_close()


def test_reward_server_command_serves_on_loopback(tmp_path):
    """The real command in its own process: it binds 127.0.0.1 and scores."""
    proc = subprocess.Popen([sys.executable, "-m", "ddrl.cli", "reward-server", "--reward", "jpeg-compressibility",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving reward 'jpeg-compressibility' at http://127.0.0.1:" in line, proc.stderr.read()
        url = line.split(" at ")[1].split(" ")[0]
        images, prompts = _shapes_batch(2)
        got, _ = score(get_reward(f"remote:{url}"), images, prompts)
        torch.testing.assert_close(got, score(get_reward("jpeg-compressibility"), images, prompts)[0])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _Slow:
    """Scores each image by its mean (so every image's score is its own), slowly enough that
    concurrent requests queue up; refuses any prompt containing 'bad'."""
    name, differentiable, device, batch_size = "slow-mean", False, "cpu", 16

    def __init__(self):
        self.calls, self.attempts = [], []

    def __call__(self, images, prompts, metadata):
        self.attempts.append(len(images))
        if any("bad" in p for p in prompts):
            raise ValueError("a bad prompt")
        self.calls.append(len(images))
        time.sleep(0.05)
        return RewardOutput(images.mean(dim=(1, 2, 3)), {"tag": [m.get("tag") for m in metadata]})


def test_concurrent_requests_are_batched_and_each_client_gets_its_own_scores():
    """8 clients at once, each with its own images and metadata: the server merges their requests
    into batches of at most the reward's batch size (16), and every client gets exactly the scores
    and details of its own images."""
    reward, errors, results = _Slow(), [], {}

    def client(c):
        try:
            images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(c))
            remote = get_reward(f"remote:{srv.url}(retries=0)")
            got, details = score(remote, images, [f"p{c}", f"p{c}"], [{"tag": c}, {"tag": c}])
            results[c] = (got, images.mean(dim=(1, 2, 3)), details["tag"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    with _Serving(reward) as srv:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for c, (got, want, tags) in results.items():
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
            assert tags == [c, c]
        assert len(reward.calls) < 8 and max(reward.calls) <= 16 and sum(reward.calls) == 16
        assert srv.batcher.requests == 8


def test_a_failing_request_in_a_batch_fails_alone():
    """A request the reward refuses, batched with good ones: its client gets the 400, the others
    their scores."""
    reward, outcome = _Slow(), {}

    def client(c):
        prompt = "bad" if c == 0 else f"p{c}"
        try:
            outcome[c] = score(get_reward(f"remote:{srv.url}(retries=0)"), torch.rand(1, 3, 8, 8), [prompt])[0]
        except RewardError as e:
            outcome[c] = e

    with _Serving(reward, max_wait_ms=200) as srv:  # a long window: all four requests share one batch
        threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(reward.attempts) > 1  # the bad request was first scored in a merged batch
    assert isinstance(outcome[0], RewardError) and "HTTP 400" in str(outcome[0]) and "a bad prompt" in str(outcome[0])
    assert all(isinstance(outcome[c], torch.Tensor) for c in (1, 2, 3))
