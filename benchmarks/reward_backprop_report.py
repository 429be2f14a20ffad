"""Tables and plots of benchmarks/reward_backprop.py's runs (docs/reward-backprop.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def _load(out: Path, names) -> dict[str, dict]:
    return {n: json.loads((out / n / "result.json").read_text()) for n in names if (out / n / "result.json").exists()}


def efficiency(out: Path, docs: Path, names) -> tuple[dict, list[str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = _load(out, names)
    methods = sorted({n.rsplit("-s", 1)[0].removeprefix("eff-") for n in res}, key=lambda m: (m != "ddpo-is", m))
    summary, lines = {}, ["| method | seeds | proxy before | proxy after 30 epochs (960 samples) | reward queries to reach DDPO-IS's final | ratio to DDPO-IS's queries |",
                          "|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in methods:
        curves = [r["curve"] for n, r in res.items() if n.rsplit("-s", 1)[0] == f"eff-{m}"]
        k = min(len(c) for c in curves)
        q = [sum(c[i]["queries"] for c in curves) / len(curves) for i in range(k)]
        ms = [_mean_se([c[i]["proxy"] for c in curves]) for i in range(k)]
        ax.plot(q, [a for a, _ in ms], label=m, marker="o", ms=3)
        ax.fill_between(q, [a - b for a, b in ms], [a + b for a, b in ms], alpha=0.2)
        summary[m] = {"seeds": len(curves), "queries": q, "mean": [a for a, _ in ms], "se": [b for _, b in ms]}
    ax.set_xlabel("reward queries")
    ax.set_ylabel("proxy reward, 32 fixed-seed images")
    ax.set_title("shapes-sd, learned proxy reward (mean ± s.e., 3 seeds)")
    ax.legend()
    fig.tight_layout()
    docs.mkdir(parents=True, exist_ok=True)
    fig.savefig(docs / "efficiency.png", dpi=120)
    plt.close(fig)
    target = summary.get("ddpo-is", {}).get("mean", [None])[-1]
    ddpo_q = summary.get("ddpo-is", {}).get("queries", [None])[-1]
    for m, s in summary.items():
        reach = next((q for q, v in zip(s["queries"], s["mean"]) if target is not None and v >= target), None)
        s["queries_to_ddpo_final"] = reach
        ratio = f"{reach / ddpo_q:.3f}" if reach is not None and ddpo_q else "not reached"
        lines.append(f"| {m} | {s['seeds']} | {s['mean'][0]:.2f} ± {s['se'][0]:.2f} | {s['mean'][-1]:.2f} ± {s['se'][-1]:.2f} "
                     f"| {reach if reach is not None else 'not reached'} | {ratio} |")
    return summary, lines


def hacking(out: Path, docs: Path, names) -> tuple[dict, list[str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = _load(out, names)
    keys = ["proxy", "preference", "verifier", "hue_entropy", "seed_distance"]
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.6))
    summary = {}
    lines = ["| regulariser | epoch | proxy | hidden preference | verifier score | hue entropy (bits) | seed distance |",
             "|---|---|---|---|---|---|---|"]
    for n, r in res.items():
        reg = n.removeprefix("hack-")
        c = r["curve"]
        for ax, k in zip(axes, keys):
            ax.plot([x["epoch"] for x in c], [x[k] for x in c], label=reg, marker="o", ms=3)
            ax.set_title(k)
            ax.set_xlabel("epoch (32 samples each)")
        best = max(c, key=lambda x: x["preference"])
        summary[reg] = {"curve": c, "best_preference_epoch": best["epoch"]}
        for x in (c[0], best, c[-1]):
            lines.append(f"| {reg} | {x['epoch']} | {x['proxy']:.2f} | {x['preference']:.3f} | {x['verifier']:.3f} "
                         f"| {x['hue_entropy']:.2f} | {x['seed_distance']:.3f} |")
    axes[0].legend()
    fig.suptitle("DRaFT-1 on the learned proxy: 28 held-out prompts x 4 seeds")
    fig.tight_layout()
    docs.mkdir(parents=True, exist_ok=True)
    fig.savefig(docs / "hacking.png", dpi=110)
    plt.close(fig)
    return summary, lines


def report(out: Path, results: Path, docs: Path, runs) -> None:
    data, text = {}, []
    for name, fn in (("efficiency", efficiency), ("hacking", hacking)):
        names = list(runs(name))
        if not any((out / n / "result.json").exists() for n in names):
            continue
        data[name], lines = fn(out, docs, names)
        text += [f"## {name}", "", *lines, ""]
    results.write_text(json.dumps(data, indent=1))
    results.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))
