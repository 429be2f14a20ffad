"""A control run's report: deterministic-evaluation success before vs after fine-tuning (paired over
the same episode seeds), curves against environment steps, the trajectories over the map coloured
by route, and the route histogram."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..io import atomic_write, atomic_write_text
from ..run.report import paired_change
from .world import ROUTE_COLOURS, draw_map

ROUTE_NAMES = ("wide", "narrow", "crash", "")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for ax, key, label in ((axes[0], "success", "success rate"), (axes[1], "return", "episode return")):
        x = [r["env_steps"] for r in rows if f"train/{key}" in r]
        ax.plot(x, [r[f"train/{key}"] for r in rows if f"train/{key}" in r], color="C0", alpha=0.6, label="training episodes")
        ev = [(r["env_steps"] - 0, r[f"eval/{key}"]) for r in rows if f"eval/{key}" in r]
        if ev:
            ax.plot(*zip(*ev), "o-", color="C1", label="deterministic evaluation")
        ax.set_xlabel("environment steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    plt.close(fig)


def plot_trajectories(before: dict, after: dict, path: Path, titles=("before (BC)", "after fine-tuning")) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=110)
    for ax, ev, title in zip(axes, (before, after), titles):
        draw_map(ax)
        for p, route in zip(ev["paths"], ev["routes"]):
            p = np.asarray(p)
            ax.plot(p[:, 0], p[:, 1], color=ROUTE_COLOURS.get(route, "0.6"), lw=0.8, alpha=0.6)
        ax.set_title(f"{title}: success {np.mean(ev['successes']):.0%}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    plt.close(fig)


def route_frequencies(routes: list[str]) -> dict[str, float]:
    c = Counter(routes)
    return {(r or "none"): c.get(r, 0) / max(len(routes), 1) for r in ROUTE_NAMES}


def plot_routes(before: dict, after: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3), dpi=110)
    names = [r or "none" for r in ROUTE_NAMES]
    x = np.arange(len(names))
    for off, ev, label in ((-0.2, before, "before"), (0.2, after, "after")):
        f = route_frequencies(ev["routes"])
        ax.bar(x + off, [f[n] for n in names], width=0.4, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel("fraction of episodes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    plt.close(fig)


def lead_line(before: dict, after: dict) -> tuple[str, dict]:
    b, a = np.asarray(before["successes"], float), np.asarray(after["successes"], float)
    change, se = paired_change(b.tolist(), a.tolist())
    ratio = f", {change / se:.1f} s.e." if se == se and se > 0 else ""
    line = (f"deterministic-evaluation success {b.mean():.0%} → {a.mean():.0%} ({change * 100:+.0f} points{ratio}; "
            f"{len(a)} episodes, the same seeds before and after)")
    return line, {"success_before": float(b.mean()), "success_after": float(a.mean()), "change": change,
                  "change_se": se, "return_before": float(np.mean(before["returns"])),
                  "return_after": float(np.mean(after["returns"])), "episodes": len(a),
                  "routes_before": route_frequencies(before["routes"]), "routes_after": route_frequencies(after["routes"])}


def finish(run_dir: Path, cfg, describe: str, rows: list[dict], before: dict, after: dict) -> dict:
    plot_curves(rows, run_dir / "curves.png")
    plot_trajectories(before, after, run_dir / "trajectories.png")
    plot_routes(before, after, run_dir / "routes.png")
    lead, summary = lead_line(before, after)
    rb, ra = summary["routes_before"], summary["routes_after"]
    steps = rows[-1]["env_steps"] if rows else 0
    perf = {k: float(np.mean([r[k] for r in rows if k in r])) for k in ("perf/rollout_s", "perf/update_s")} if rows else {}
    md = [f"# {cfg.run.algorithm} on {cfg.env.id}", "", f"**{lead}**", "", f"- {describe}",
          f"- {cfg.run.iterations} iterations × {cfg.env.n_envs} environments × {cfg.env.n_steps} chunks of "
          f"{cfg.env.horizon} actions; {int(steps)} environment steps; seed {cfg.run.seed}",
          *([f"- wall time per iteration: rollout {perf['perf/rollout_s']:.2f} s, update {perf['perf/update_s']:.2f} s"]
            if perf else []),
          "", "| | before | after |", "|---|---|---|",
          f"| success | {summary['success_before']:.3f} | {summary['success_after']:.3f} |",
          f"| return | {summary['return_before']:.3f} | {summary['return_after']:.3f} |",
          *[f"| route {k} | {rb[k]:.3f} | {ra[k]:.3f} |" for k in rb],
          "", "## Curves", "", "![curves](curves.png)", "", "## Trajectories (100 evaluation episodes)", "",
          "![trajectories](trajectories.png)", "", "## Routes", "", "![routes](routes.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(md))
    atomic_write_text(run_dir / "summary.json", __import__("json").dumps(summary, indent=1))
    print(lead)
    return summary
