"""Two epochs of every shipped shapes preset, fingerprinted: the trained weights, the optimizer
state, the algorithm's state and the epoch metrics, so two versions of ddrl can be compared bit
for bit (a refactor must not change what a run computes).

    python benchmarks/identity_check.py --label new                       # this checkout
    PYTHONPATH=/tmp/old/src python benchmarks/identity_check.py --label old # another checkout
    python benchmarks/identity_check.py --compare old new                 # the table

Each preset trains as shipped (its sizes, steps, algorithm and rates) for 2 epochs; only the
evaluation is cut to 2 held-out prompts and no grids, since it does not touch the weights. The
presets that need files made elsewhere get them here: the DPO preset a 48-pair JSONL of rendered
shapes (the right prompt over another prompt), the reward-backpropagation presets a
differentiable reward (the image's mean red minus its mean blue) in place of their learned model.
Results: benchmarks/results/identity/LABEL.json (resumable: finished presets are kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "identity"
SHORT = {"run.epochs": 2, "eval.max_prompts": 2, "eval.images_per_prompt": 1, "eval.train_images_per_prompt": 0,
         "eval.grid_every": 0, "run.report_to": "none"}
TIMING = ("perf/",)


def _redness(images, prompts, metadata):
    return images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))


def _pairs(folder: Path) -> Path:
    from ddrl.worlds.shapes import render, split

    prompts = split("train")[:48]
    with open(folder / "pairs.jsonl", "w") as f:
        for i, p in enumerate(prompts):
            other = prompts[(i + 7) % len(prompts)]
            render(p, seed=i).save(folder / f"{i}_w.png")
            render(other, seed=i).save(folder / f"{i}_l.png")
            f.write(json.dumps({"prompt": p, "chosen": f"{i}_w.png", "rejected": f"{i}_l.png"}) + "\n")
    return folder / "pairs.jsonl"


def _tensor_digest(tensors: dict) -> dict[str, str]:
    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16] for k, v in sorted(tensors.items())}


def _compact(entry: dict) -> dict:
    """An entry with one digest per file: the sha256 of its per-tensor digests."""
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest() if isinstance(v, dict)
            and k.endswith(".safetensors") else v for k, v in entry.items()}


def fingerprint(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    ckpt = sorted((run_dir / "checkpoints").glob("epoch_*"))[-1]
    out = {"checkpoint": ckpt.name}
    for f in sorted(ckpt.glob("*.safetensors")):
        out[f.name] = _tensor_digest(load_file(str(f)))
    state = json.loads((ckpt / "state.json").read_text())
    out["state"] = {k: v for k, v in state.items() if k not in ("files", "sha256", "manifest")}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out["metrics"] = [{k: v for k, v in r.items() if not k.startswith(TIMING) and k != "time"} for r in rows]
    return out


def shapes_presets() -> list[str]:
    from ddrl.presets import PRESETS

    return [n for n in PRESETS if n.startswith("shapes-")]


def run(label: str, only: list[str]) -> None:
    import ddrl
    from ddrl.api import load_config

    RESULTS.mkdir(parents=True, exist_ok=True)
    out_file = RESULTS / f"{label}.json"
    done = json.loads(out_file.read_text()) if out_file.exists() else {}
    ddrl.register_reward("redness", _redness, differentiable=True)
    work = Path(tempfile.mkdtemp(prefix="ddrl-identity-"))
    pairs = _pairs(work)
    for name in only or shapes_presets():
        if name in done:
            continue
        cfg = load_config(name)
        extra = dict(SHORT)
        if cfg.train.algorithm in ("refl", "draft", "alignprop"):
            extra["reward.name"] = "redness"
        if cfg.data.pairs:
            extra["data.pairs"] = str(pairs)
            extra["data.pairs_per_epoch"] = 32
        run_dir = work / name
        print(f"== {name}", flush=True)
        ddrl.train(load_config(name, extra), run_dir=run_dir)
        done[name] = _compact(fingerprint(run_dir))
        out_file.write_text(json.dumps(done, indent=1, sort_keys=True))


def compare(a: str, b: str) -> int:
    ra, rb = ({n: _compact(e) for n, e in json.loads((RESULTS / f"{x}.json").read_text()).items()} for x in (a, b))
    print(f"| preset | weights, optimizer, algorithm state | metrics | ({a} vs {b}) |\n|---|---|---|---|")
    bad = 0
    for name in sorted(set(ra) | set(rb)):
        if name not in ra or name not in rb:
            print(f"| `{name}` | missing in {a if name not in ra else b} | | |")
            bad += 1
            continue
        tensors = [k for k in ra[name] if k.endswith(".safetensors")]
        same_t = all(ra[name][k] == rb[name].get(k) for k in tensors) and len(tensors) == len(
            [k for k in rb[name] if k.endswith(".safetensors")])
        same_m = ra[name]["metrics"] == rb[name]["metrics"] and ra[name]["state"] == rb[name]["state"]
        bad += not (same_t and same_m)
        print(f"| `{name}` | {'identical' if same_t else 'DIFFERENT'} ({', '.join(tensors)}) | "
              f"{'identical' if same_m else 'DIFFERENT'} | |")
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label")
    ap.add_argument("--presets", nargs="*", default=[])
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if not args.label:
        ap.error("--label or --compare")
    run(args.label, args.presets)


if __name__ == "__main__":
    main()
