"""The end-of-run report: held-out (and training-prompt) evaluation before vs after, the sample
grids and the reward curve, as Markdown and a self-contained-folder HTML page; and the rest of
a run's ending (the exported LoRA, the reward curve)."""

from __future__ import annotations

import html
from pathlib import Path

from ..io import atomic_write_text
from .export import save_lora
from .metrics import plot_reward_curve


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def paired_change(before: list, after: list) -> tuple[float, float]:
    """Mean and standard error of after - before over images sampled from the same seeds."""
    d = [a - b for a, b in zip(after, before) if a is not None and b is not None]
    if len(d) < 2:
        return float("nan"), float("nan")
    mean = sum(d) / len(d)
    return mean, (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5


def _per_image(per_image: dict, metric: str) -> list | None:
    """The per-image values behind a summary metric: the rewards, whether each image is correct
    (accuracy_per_image), or that restricted to one category's images (accuracy/<category>)."""
    if metric == "reward":
        return per_image.get("reward")
    correct = per_image.get("correct")
    if metric == "accuracy_per_image":
        return correct
    if metric.startswith("accuracy/") and correct and "category" in per_image:
        cat = metric.split("/", 1)[1]
        return [c for c, k in zip(correct, per_image["category"]) if k == cat]
    return None


def headline(before: dict, after: dict, reward_name: str) -> str:
    """One line a person reads first: held-out per-image accuracy (the shapes verifier's verdict)
    before -> after, or the held-out reward when there is no verdict, with the paired change in
    standard errors."""
    pb, pa = (x.get("per_image", {}).get("heldout", {}) for x in (before, after))
    if pb.get("correct") and pa.get("correct"):
        d, se = paired_change(pb["correct"], pa["correct"])
        b, a = before["heldout"]["accuracy_per_image"], after["heldout"]["accuracy_per_image"]
        what = f"held-out accuracy {100 * b:.0f}% → {100 * a:.0f}% ({100 * d:+.0f} points"
    else:
        d, se = paired_change(pb.get("reward", []), pa.get("reward", []))
        b, a = before["heldout"]["reward"], after["heldout"]["reward"]
        what = f"held-out {reward_name} {b:.3f} → {a:.3f} ({d:+.3f}"
    n = len(pb.get("correct") or pb.get("reward") or [])
    sig = f", {d / se:.1f} s.e." if se == se and se > 0 else ""
    return f"{what}{sig}; {n} images, the same seeds before and after)"


def write_report(run_dir: Path, title: str, before: dict, after: dict, notes: list[str], lead: str = "") -> Path:
    """`before`/`after`: {split: {metric: value}, "per_image": {split: {metric: [...]}}}.
    Writes report.md and report.html; changes of per-image metrics carry their paired s.e."""
    rows = []
    for split in (s for s in before if s != "per_image" and isinstance(before[s], dict)):
        for k in before[split]:
            b, a = before[split][k], after.get(split, {}).get(k)
            if k == "n":
                continue
            delta = f"{a - b:+.3f}" if isinstance(a, float) and isinstance(b, float) else ""
            pb, pa = (_per_image(x.get("per_image", {}).get(split, {}), k) for x in (before, after))
            if delta and pb and pa and len(pb) == len(pa) and (se := paired_change(pb, pa)[1]) == se:
                delta += f" ± {se:.3f}"
            rows.append((split, k, _fmt(b), _fmt(a) if a is not None else "", delta))
    md = [f"# {title}", "", *([f"**{lead}**", ""] if lead else []), *notes, "", "| prompts | metric | before | after | change (± paired s.e.) |", "|---|---|---|---|---|"]
    md += [f"| {' | '.join(r)} |" for r in rows]
    md += ["", "## Reward during training", "", "![reward curve](reward_curve.png)", "",
           "## Held-out samples, fixed seeds", "", "Before:", "", "![before](grids/before.png)", "",
           "After:", "", "![after](grids/after.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(md))
    table = "".join(f"<tr>{''.join(f'<td>{html.escape(c)}</td>' for c in r)}</tr>" for r in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>{f'<p><strong>{html.escape(lead)}</strong></p>' if lead else ''}{''.join(f'<p>{html.escape(n)}</p>' for n in notes)}
<table><tr><th>prompts</th><th>metric</th><th>before</th><th>after</th><th>change (± paired s.e.)</th></tr>{table}</table>
<h2>Reward during training</h2><img src="reward_curve.png">
<h2>Held-out samples, fixed seeds</h2><p>Before</p><img src="grids/before.png"><p>After</p><img src="grids/after.png">
</body></html>"""
    atomic_write_text(run_dir / "report.html", page)
    return run_dir / "report.md"


def finish_run(tr, rows: list[dict], before: dict, after: dict, lora: dict | None = None) -> None:
    """The end of a run: the exported LoRA (`tr.lora_layers()`), the reward curve and the report."""
    cfg, run_dir = tr.cfg, tr.run_dir
    if lora is not None:
        save_lora(tr.policy, run_dir / "lora", lora)
    evals = {"held-out reward before (fixed seeds)": (0, before["heldout"]["reward"]),
             "held-out reward after (fixed seeds)": (tr.epoch, after["heldout"]["reward"])}
    plot_reward_curve(rows, run_dir / "reward_curve.png", cfg.reward.name, evals)
    if tr.algorithm.uses_rollouts(cfg):
        what = (f"reward {cfg.reward.name}, {tr.epoch} epochs of {cfg.global_samples_per_epoch(tr.accelerator.num_processes)} "
                f"samples ({cfg.sample.num_steps} steps, eta {cfg.sample.eta}, guidance {cfg.sample.guidance_scale}).")
    else:  # offline: trained on a dataset, the reward only evaluates
        what = (f"{tr.epoch} epochs of {cfg.data.pairs_per_epoch or 'all'} pairs from {cfg.data.pairs}; "
                f"evaluated with reward {cfg.reward.name}.")
    notes = [f"{cfg.train.algorithm} on {cfg.model.name}, {what}",
             ("Evaluation uses the training sampler with fixed seeds, so before and after see the same noise."
              if cfg.sample.sampler == "ddim" else
              f"Evaluation uses the ODE at {cfg.eval_steps} steps with fixed seeds.")]
    line = headline(before, after, cfg.reward.name)
    report = write_report(run_dir, f"ddrl run: {run_dir.name}", before, after, notes, lead=line)
    print(f"{line}\nreport: {report} (and report.html)")
