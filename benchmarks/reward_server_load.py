"""Load test of `ddrl reward-server` on loopback: throughput and latency with 1, 8 and 32
concurrent clients, and a check that nothing is lost or mixed up.

The server runs as the real command in its own process (`ddrl reward-server --port 0`), serving a
CLIP score from a CLIP built from a config with random weights (ViT: 4 layers of width 256 on
112-pixel inputs; the weights do not matter for speed). Each client is a thread with its own
`remote:` reward; it sends `--requests` requests of `--images` shapes-world images (64x64), each
image and prompt distinct to that client and request, and compares every answer with the scores
the same reward gives locally: an answer that belongs to another request would not match.

    python benchmarks/reward_server_load.py --label after [--clients 1 8 32]

Appends to benchmarks/results/reward_server_load.json and rewrites reward_server_load.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def small_clip(path: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from ddrl.pretrain import components as C

    if (path / "config.json").exists():
        return path
    tok = C.make_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=C.TEXT_MAX_LENGTH,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                           image_size=112, patch_size=16),
        projection_dim=128)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    C.write_clip_vocab_files(path)
    CLIPImageProcessor(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112}).save_pretrained(path)
    return path


def batches(client: int, requests: int, images: int) -> list[tuple[torch.Tensor, list[str]]]:
    from ddrl.worlds.shapes import render, split

    prompts = split("train")
    out = []
    for r in range(requests):
        ps = [prompts[(client * 131 + r * images + i) % len(prompts)] for i in range(images)]
        arr = np.stack([np.asarray(render(p, seed=client * 10_000 + r * 100 + i)) for i, p in enumerate(ps)])
        out.append((torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255, ps))
    return out


def start_server(spec: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "ddrl.cli", "reward-server", "--reward", spec, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" at ")[1].split(" ")[0]


def run(url: str, clients: int, work: dict[int, list], expected: dict[int, list]) -> dict:
    from ddrl.rewards import get_reward, score

    latencies: list[float] = []
    wrong, lost = [0], [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        remote = get_reward(f"remote:{url}(timeout=600,retries=0)")
        for (images, prompts), want in zip(work[c], expected[c]):
            t0 = time.perf_counter()
            try:
                got, _ = score(remote, images, prompts)
            except Exception:  # noqa: BLE001 - counted, not raised: the test reports losses
                with lock:
                    lost[0] += 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                wrong[0] += int(not torch.allclose(got, want, rtol=0, atol=1e-5))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n_images = sum(len(b[1]) for c in range(clients) for b in work[c])
    lat = sorted(latencies)
    return {"clients": clients, "requests": sum(len(work[c]) for c in range(clients)), "wall_s": wall,
            "images_per_s": n_images / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "wrong": wrong[0], "lost": lost[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True, help="a name for this server version (before, after, ...)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--images", type=int, default=4, help="images per request")
    ap.add_argument("--server-args", default="", help="extra arguments of ddrl reward-server")
    args = ap.parse_args()
    from ddrl.rewards import get_reward, score

    spec = f"clipscore(model={small_clip(ROOT / 'runs' / 'serve-bench' / 'clip')},batch_size=32)"
    local = get_reward(spec)
    rows = []
    proc, url = start_server(spec, args.server_args.split())
    try:
        for n in args.clients:
            work = {c: batches(c, args.requests, args.images) for c in range(n)}
            expected = {c: [score(local, im, ps)[0] for im, ps in work[c]] for c in range(n)}
            rows.append(run(url, n, work, expected) | {"label": args.label, "server_args": args.server_args})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    path = RESULTS / "reward_server_load.json"
    old = json.loads(path.read_text()) if path.exists() else []
    old = [r for r in old if r["label"] != args.label] + rows
    path.write_text(json.dumps(old, indent=1))
    lines = ["| server | clients | requests | images/s | p50 latency (ms) | p99 latency (ms) | wrong | lost |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['clients']} | {r['requests']} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['wrong']} | {r['lost']} |" for r in old]
    (RESULTS / "reward_server_load.md").write_text(
        "# ddrl reward-server under load (loopback, 2-core CPU)\n\n"
        f"`python benchmarks/reward_server_load.py --label LABEL`: {args.requests} requests per client of "
        f"{args.images} 64x64 images; a CLIP score from a random-weight CLIP (ViT 4 x 256, 112 px) in the server's "
        "process. 'wrong' counts answers that differ from local scoring of the same request; 'lost' requests "
        "that got no answer.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
