"""docs/results.md and its plots, from benchmarks/results/reproduce.json (see reproduce.py).

Across seeds every figure is a mean with its standard error (ddof 1). A run's final reward is the
mean of its last 5 epochs' training rewards, so one noisy epoch does not decide it.
"""

from __future__ import annotations

import statistics
from pathlib import Path

LAST = 5
FIGS = Path(__file__).resolve().parents[1] / "docs" / "results"  # the plots docs/results.md shows


def mean_se(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    if len(xs) == 1:
        return xs[0], float("nan")
    return statistics.mean(xs), statistics.stdev(xs) / len(xs) ** 0.5


def fmt(m: float, se: float, digits: int = 3) -> str:
    return f"{m:+.{digits}f}" if se != se else f"{m:+.{digits}f} ± {se:.{digits}f}"


def final(s: dict, key: str = "reward") -> float:
    return statistics.mean(s[key][-LAST:])


def verdict(a: list[float], b: list[float], name_a: str, name_b: str) -> str:
    """Whether a > b beyond two standard errors of the difference, paired by seed: a seed draws
    the same prompts and noise in every method's first epoch, and the same prompts every epoch."""
    if len(a) != len(b) or len(a) < 2:
        return f"{name_a} {mean_se(a)[0]:.3f} against {name_b} {mean_se(b)[0]:.3f} (too few paired seeds)"
    diff, se = mean_se([x - y for x, y in zip(a, b)])
    if diff > 2 * se:
        word = "holds"
    elif diff < -2 * se:
        word = "is reversed"
    else:
        word = "is within noise"
    return f"{name_a} − {name_b} = {diff:+.3f} ± {se:.3f}: the claim {name_a} > {name_b} {word}"


def _curve_plot(path: Path, groups: dict[str, list[dict]], ylabel: str, title: str, key: str = "reward") -> None:
    """Reward against reward queries (3-epoch rolling mean per seed, mean ± s.e. across seeds), and
    beside it each method minus the mean of all methods at the same seed and epoch: a seed draws
    the same prompts each epoch in every method, so this removes the prompt-to-prompt noise they
    share and leaves what separates them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {k: v for k, v in groups.items() if v}
    n = min(len(r[key]) for rs in groups.values() for r in rs)
    seeds = min(len(rs) for rs in groups.values())
    smooth = {k: [[statistics.mean(r[key][max(0, e - 2):e + 1]) for e in range(n)] for r in rs[:seeds]]
              for k, rs in groups.items()}
    mean_all = [[statistics.mean(smooth[k][s][e] for k in smooth) for e in range(n)] for s in range(seeds)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for i, (label, curves) in enumerate(smooth.items()):
        q = groups[label][0]["queries_per_epoch"]
        x = [(e + 1) * q for e in range(n)]
        for ax, values in ((axes[0], curves), (axes[1], [[c[e] - mean_all[s][e] for e in range(n)]
                                                          for s, c in enumerate(curves)])):
            stats = [mean_se([v[e] for v in values]) for e in range(n)]
            m, se = [a for a, _ in stats], [b if b == b else 0.0 for _, b in stats]
            ax.plot(x, m, color=f"C{i}", label=f"{label} ({len(values)} seed{'s' * (len(values) > 1)})")
            ax.fill_between(x, [a - b for a, b in zip(m, se)], [a + b for a, b in zip(m, se)], color=f"C{i}", alpha=0.2)
    axes[0].set(ylabel=ylabel, title=title)
    axes[1].set(ylabel="minus the mean of all methods", title="the same, relative (shared prompt noise removed)")
    for ax in axes:
        ax.set_xlabel("reward queries (samples scored)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].axhline(0, color="k", lw=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _groups(summary: dict, runs: dict) -> dict[str, list[dict]]:
    return {label: [summary[r.name] for r in rs if r.name in summary] for label, rs in runs.items()}


def _budget(runs: dict, summary: dict) -> str:
    rs = [r for v in runs.values() for r in v if r.name in summary]
    if not rs:
        return ""
    s = summary[rs[0].name]
    minutes = mean_se([summary[r.name]["minutes"] for r in rs])[0]
    return (f"Budget per run: {len(s['reward'])} epochs of {s['queries_per_epoch']} samples "
            f"({len(s['reward']) * s['queries_per_epoch']} reward queries), about {minutes:.1f} minutes of "
            f"training on one thread of a 2-core CPU.")


def _commands(runs: dict) -> list[str]:
    first = next((rs[0] for rs in runs.values() if rs), None)
    if first is None:
        return []
    import shlex

    cmd = shlex.join(first.command(resume=False)[1:]).replace(str(Path(__file__).resolve().parents[1]) + "/", "")
    return ["Example command (seed 0 of the first row):", "", f"    ddrl {cmd}", ""]


def section_sweep(exp, summary) -> list[str]:
    from reproduce import FIG4_ALGORITHMS, LEARNING_RATES, chosen_lr, fig4_run

    lines = ["| algorithm | " + " | ".join(f"lr {lr:g}" for lr in LEARNING_RATES) + " | chosen |",
             "|---|" + "---|" * (len(LEARNING_RATES) + 1)]
    groups = {}
    for a in FIG4_ALGORITHMS:
        cells = []
        for lr in LEARNING_RATES:
            s = summary.get(fig4_run("alignment", a, lr, 0).name)
            cells.append("…" if s is None else f"{statistics.mean(s['reward'][:3]):.3f} → {final(s):.3f}")
            if s is not None:
                groups[f"{a} lr {lr:g}"] = [s]
        lr = chosen_lr(summary, a)
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {'…' if lr is None else f'{lr:g}'} |")
    lines = ["Training reward, first 3 epochs → last 5 epochs (seed 0):", ""] + lines
    return lines


def section_curves(exp, summary, runs, name, ylabel, heldout_key="score") -> list[str]:
    groups = _groups(summary, runs)
    _curve_plot(FIGS / f"{name}.png", groups, ylabel, exp.title)
    lines = [f"![{name}](results/{name}.png)", "",
             f"| method | seeds | reward, first 3 epochs | final reward (last {LAST}) | change | held-out {heldout_key} change |",
             "|---|---|---|---|---|---|"]
    for label, rs in groups.items():
        if not rs:
            lines.append(f"| {label} | 0 | … | … | … | … |")
            continue
        start = mean_se([statistics.mean(s["reward"][:3]) for s in rs])
        end = mean_se([final(s) for s in rs])
        change = mean_se([final(s) - statistics.mean(s["reward"][:3]) for s in rs])
        held = mean_se([s["after"]["heldout"].get(heldout_key, float("nan")) - s["before"]["heldout"].get(
            heldout_key, float("nan")) for s in rs if "heldout" in s["after"]])
        lines.append(f"| {label} | {len(rs)} | {fmt(*start)} | {fmt(*end)} | {fmt(*change)} | {fmt(*held)} |")
    return lines


def section_fig4(exp, summary, runs, task) -> list[str]:
    ylabel = "verifier partial credit" if task == "alignment" else "minus JPEG size (kB)"
    lines = section_curves(exp, summary, runs, f"fig4-{task}", ylabel, "reward")
    groups = _groups(summary, runs)
    claims = []
    for what, value in (("final training reward", final),
                        ("held-out reward change", lambda s: s["after"]["heldout"]["reward"] - s["before"]["heldout"]["reward"])):
        v = {k: [value(s) for s in rs] for k, rs in groups.items() if rs}
        if v.get("DDPO-IS") and (v.get("RWR") or v.get("RWR-sparse")):
            best = max((k for k in ("RWR", "RWR-sparse") if v.get(k)), key=lambda k: mean_se(v[k])[0])
            claims.append(f"- DDPO > RWR, {what}: " + verdict(v["DDPO-IS"], v[best], "DDPO-IS", best)
                          + " (against the better RWR)")
        if v.get("DDPO-IS") and v.get("DDPO-SF"):
            claims.append(f"- IS ≥ SF, {what}: " + verdict(v["DDPO-IS"], v["DDPO-SF"], "DDPO-IS", "DDPO-SF"))
    note = ("Differences are paired by seed: a seed draws the same prompts every epoch in every method, "
            "and the held-out evaluation uses the same images' seeds before and after.")
    return lines + ([""] + claims + ["", note] if claims else [])


def section_flow(exp, summary, runs) -> list[str]:
    """The curves and table, then each method against the one with the largest mean held-out
    accuracy change, paired by seed."""
    lines = section_curves(exp, summary, runs, "flow-family", "verifier partial credit", "accuracy_per_image")
    v = {k: [s["after"]["heldout"]["accuracy_per_image"] - s["before"]["heldout"]["accuracy_per_image"] for s in rs]
         for k, rs in _groups(summary, runs).items() if rs}
    if len(v) < 2:
        return lines
    best = max(v, key=lambda k: mean_se(v[k])[0])
    claims = ["- held-out accuracy change: " + verdict(v[best], v[k], best, k) for k in v if k != best]
    note = (f"{best} is compared with the others because it gained most here: a difference chosen after "
            "looking, over few seeds, is a lead to test with more seeds, not a finding.")
    return lines + [""] + claims + ["", note]


def section_kl(exp, summary, runs) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(summary, runs)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for i, (label, rs) in enumerate(groups.items()):
        for n, s in enumerate(rs):
            label_once = label if n == 0 else None  # one legend entry per coefficient, a line per seed
            kb = s["components"].get("jpeg-incompressibility") or s["reward"]
            acc = s["accuracy"]
            x = [(e + 1) * s["queries_per_epoch"] for e in range(len(kb))]
            roll = [statistics.mean(kb[max(0, e - 2):e + 1]) for e in range(len(kb))]
            axes[0].plot(x, roll, color=f"C{i}", label=label_once, alpha=0.8)
            # 5-epoch blocks, in time order from the open marker: where the optimised reward goes,
            # and what the verifier still sees
            bk = [statistics.mean(kb[j:j + 5]) for j in range(0, len(kb) - 4, 5)]
            ba = [statistics.mean(acc[j:j + 5]) for j in range(0, len(acc) - 4, 5)]
            axes[1].plot(bk, ba, "-o", color=f"C{i}", ms=3, label=label_once, alpha=0.8)
            axes[1].plot(bk[:1], ba[:1], "o", color=f"C{i}", mfc="white", ms=7)
    axes[0].set(xlabel="reward queries", ylabel="JPEG size (kB), optimised (3-epoch mean)")
    axes[1].set(xlabel="JPEG size (kB), optimised", ylabel="verifier accuracy, same samples",
                title="5-epoch blocks from the open marker")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(exp.title, fontsize=9)
    fig.tight_layout()
    FIGS.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGS / "kl-hacking.png")
    plt.close(fig)
    lines = ["![kl-hacking](results/kl-hacking.png)", "",
             "Means over seeds (± s.e. across seeds; with one seed, the paired s.e. over its images).", "",
             "| KL coefficient | seeds | JPEG kB, first 3 → last 5 epochs | verifier accuracy, first 5 → last 5 "
             "epochs | held-out JPEG kB before → after | held-out accuracy before → after | change |",
             "|---|---|---|---|---|---|---|"]
    from ddrl.run.report import paired_change

    def jpeg(s):
        return s["components"].get("jpeg-incompressibility") or s["reward"]

    changes = {}
    for label, rs in groups.items():
        if not rs:
            continue
        changes[label] = [s["after"]["heldout"]["accuracy_per_image"] - s["before"]["heldout"]["accuracy_per_image"]
                          for s in rs]
        d = (mean_se(changes[label]) if len(rs) > 1 else
             paired_change(rs[0]["before"]["heldout_correct"], rs[0]["after"]["heldout_correct"]))
        def m(f):  # the mean over seeds of a per-run quantity
            return statistics.mean(f(s) for s in rs)

        lines.append(f"| {label} | {len(rs)} | {m(lambda s: statistics.mean(jpeg(s)[:3])):.2f} → "
                     f"{m(lambda s: statistics.mean(jpeg(s)[-LAST:])):.2f} "
                     f"| {m(lambda s: statistics.mean(s['accuracy'][:5])):.3f} → "
                     f"{m(lambda s: statistics.mean(s['accuracy'][-LAST:])):.3f} "
                     f"| {m(lambda s: s['before']['heldout']['reward']):.2f} → {m(lambda s: s['after']['heldout']['reward']):.2f} "
                     f"| {m(lambda s: s['before']['heldout']['accuracy_per_image']):.3f} → "
                     f"{m(lambda s: s['after']['heldout']['accuracy_per_image']):.3f} | {fmt(*d)} |")
    if (base := changes.get("KL 0")) and len(base) > 1:
        lines += [""] + ["- held-out accuracy change, paired by seed: " + verdict(v, base, k, "KL 0")
                         for k, v in changes.items() if k != "KL 0"]
        lines += ["", f"With {len(base)} seeds the standard error across seeds is itself uncertain: a claim "
                  "that holds by little more than two of them is a lead, not a finding."]
    return lines


def section_generalisation(exp, summary, runs) -> list[str]:
    rs = [s for v in _groups(summary, runs).values() for s in v]
    keys = [k for k in rs[0]["before"]["heldout"] if k.startswith("accuracy/")] + ["accuracy_per_image", "score"]
    lines = [f"Per category, mean over {len(rs)} seed(s) (± s.e. of the change across seeds); "
             "accuracy/<category> is the fraction of a category's images the verifier passes, "
             "accuracy_per_image that fraction over all images, and score the mean partial credit.", "",
             "| metric | training prompts: before → after | change | held-out prompts: before → after | change |",
             "|---|---|---|---|---|"]
    for k in keys:
        cells = []
        for split in ("train", "heldout"):
            # a category the split does not have (the main job trains on colour attribution only)
            b = [s["before"][split][k] for s in rs if k in s["before"].get(split, {})]
            a = [s["after"][split][k] for s in rs if k in s["after"].get(split, {})]
            d = mean_se([y - x for x, y in zip(b, a)])
            cells += [f"{statistics.mean(b):.3f} → {statistics.mean(a):.3f}" if b else "…", fmt(*d) if b else "…"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    from ddrl.images.report import headline

    lines += ["", "Each seed's headline, held-out:", ""]
    for s in rs:
        before = {"heldout": s["before"]["heldout"], "per_image": {"heldout": {"correct": s["before"]["heldout_correct"]}}}
        after = {"heldout": s["after"]["heldout"], "per_image": {"heldout": {"correct": s["after"]["heldout_correct"]}}}
        lines.append(f"- {headline(before, after, 'reward')}")
    return lines


def write_results(summary: dict, experiments: dict, doc: Path) -> None:
    out = ["# Results: the papers' comparisons on the shapes world", "",
           "Written by `python benchmarks/reproduce.py` from its runs (summarised in "
           "benchmarks/results/reproduce.json); rerun it to extend or refresh them. Means ± standard errors "
           "over seeds; a difference within two standard errors is called noise. Reward queries are samples "
           "scored. The shapes world, its models and its rewards are built in (no downloads); budgets are CPU "
           "budgets, far below the papers', so the comparisons are of early learning.", ""]
    for name, exp in experiments.items():
        runs = exp.runs(summary)
        out += [f"## {exp.title}", "", f"`python benchmarks/reproduce.py {name}`", "", exp.about, ""]
        if budget := _budget(runs, summary):
            out += [budget, ""]
        if not runs or not any(r.name in summary for rs in runs.values() for r in rs):
            out += ["Not run yet.", ""]
            continue
        if name == "lr-sweep":
            out += section_sweep(exp, summary)
        elif name.startswith("fig4-"):
            out += section_fig4(exp, summary, runs, name.removeprefix("fig4-"))
        elif name == "generalisation":
            out += section_generalisation(exp, summary, runs)
        elif name == "kl-hacking":
            out += section_kl(exp, summary, runs)
        elif name == "flow-family":
            out += section_flow(exp, summary, runs)
        else:
            out += section_curves(exp, summary, runs, name, "verifier partial credit", "accuracy_per_image")
        out += [""] + _commands(runs)
        if notes := exp.extra.get("notes"):
            out += [notes, ""]
    doc.write_text("\n".join(out) + "\n")
