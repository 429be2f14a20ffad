"""Scorer throughput on this machine: images per second for every registered reward, on the
built-in world's 48 px images, with the model-based scorers on tiny random-weight models built in
place (no downloads), plus the remote protocol's overhead over loopback.

    python benchmarks/reward_throughput.py [--images 64] [--repeats 3]

The tiny models say how fast ddrl's own code around a scorer is (preprocessing, batching,
tokenising, transport), not how fast the real CLIP-H or LLaVA-7B would be: those are dominated by
the network and need a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _images(n: int):
    from ddrl.worlds.shapes import render, split

    prompts = (split("heldout") * (n // 55 + 1))[:n]
    arr = np.stack([np.asarray(render(p, seed=i)) for i, p in enumerate(prompts)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255, prompts


def _learned_folder(root: Path) -> Path:
    """An untrained PreferenceCNN saved as `ddrl reward-train` saves one (speed does not depend on weights)."""
    from safetensors.torch import save_file

    from ddrl.rewards.learned import CONFIG, WEIGHTS, PreferenceCNN, TextFeatures

    path = root / "learned"
    path.mkdir()
    dim = TextFeatures("shapes-sd").dim
    save_file(PreferenceCNN(dim).state_dict(), path / WEIGHTS)
    (path / CONFIG).write_text(json.dumps({"text_encoder": "shapes-sd", "image_size": 48, "width": 32, "text_dim": dim}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import transformers
    from safetensors.torch import save_file

    from ddrl.rewards import get_reward, score
    from ddrl.rewards.aesthetic import AestheticMLP
    from ddrl.rewards.serve import RewardServer
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny random-weight models
    from tiny_rewards import tiny_bert, tiny_blip, tiny_clip, tiny_vlm

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    images, prompts = _images(args.images)
    root = Path(tempfile.mkdtemp(prefix="ddrl-bench-"))
    clip, blip, vlm, bert = tiny_clip(root / "clip"), tiny_blip(root / "blip"), tiny_vlm(root / "vlm"), tiny_bert(root / "bert")
    save_file(AestheticMLP(16).state_dict(), root / "aes.safetensors")
    save_file(AestheticMLP(32).state_dict(), root / "ir.safetensors")
    learned = _learned_folder(root)

    server = RewardServer(get_reward("jpeg-incompressibility"), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    specs = {
        "jpeg-incompressibility": "jpeg-incompressibility",
        "shapes-verifier": "shapes-verifier",
        "learned (shapes CNN)": f"learned(path={learned})",
        "clipscore (tiny CLIP)": f"clipscore(model={clip})",
        "pickscore (tiny CLIP)": f"pickscore(model={clip}, processor={clip})",
        "hpsv2 (tiny CLIP)": f"hpsv2(model={clip}, processor={clip})",
        "aesthetic (tiny CLIP + MLP)": f"aesthetic(model={clip}, head={root / 'aes.safetensors'})",
        "imagereward (tiny BLIP + MLP)": f"imagereward(model={blip}, head={root / 'ir.safetensors'})",
        "vlm-judge (tiny LLaVA)": f"vlm-judge(model={vlm})",
        "vlm-bertscore (tiny LLaVA, 8 tokens)": f"vlm-bertscore(model={vlm}, bert_model={bert}, num_layers=2, max_new_tokens=8)",
        "remote:jpeg over loopback, npz": f"remote:{server.url}",
        "remote:jpeg over loopback, png": f"remote:{server.url}(format=png)",
        "weighted sum verifier + 0.1 jpeg": "shapes-verifier + 0.1*jpeg-incompressibility",
    }
    print(f"{args.images} images of 48x48, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| reward | images/s | ms/image |\n|---|---|---|")
    for label, spec in specs.items():
        reward = get_reward(spec)
        score(reward, images[:4], prompts[:4])  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            score(reward, images, prompts)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"| {label} | {args.images / t:,.0f} | {1000 * t / args.images:.2f} |", flush=True)
    server.shutdown()


if __name__ == "__main__":
    main()
