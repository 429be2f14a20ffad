"""A run's report: evaluations before vs after with paired standard errors, and optional
sections of figures (curves, sample grids), as Markdown and a self-contained-folder HTML page."""

from __future__ import annotations

import html
from pathlib import Path

from ..io import atomic_write_text


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def paired_change(before: list, after: list) -> tuple[float, float]:
    """Mean and standard error of after - before over images sampled from the same seeds (the
    error is nan for fewer than two images, the mean for none)."""
    d = [a - b for a, b in zip(after, before) if a is not None and b is not None]
    if not d:
        return float("nan"), float("nan")
    mean = sum(d) / len(d)
    if len(d) == 1:
        return mean, float("nan")
    return mean, (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5


Figure = tuple[str, str]  # (caption, image path relative to the run folder)


def write_report(run_dir: Path, title: str, before: dict, after: dict, notes: list[str], lead: str = "",
                 sections: list[tuple[str, list[Figure]]] = (), per_item=lambda per_image, metric: None) -> Path:
    """`before`/`after`: {split: {metric: value}, "per_image": {split: {...}}}; `per_item(per_image,
    metric)` gives the per-item values behind a metric, so its change carries a paired s.e.
    `sections`: (heading, figures) after the table. Writes report.md and report.html."""
    rows = []
    for split in (s for s in before if s != "per_image" and isinstance(before[s], dict)):
        for k in before[split]:
            b, a = before[split][k], after.get(split, {}).get(k)
            if k == "n":
                continue
            delta = f"{a - b:+.3f}" if isinstance(a, float) and isinstance(b, float) else ""
            pb, pa = (per_item(x.get("per_image", {}).get(split, {}), k) for x in (before, after))
            if delta and pb and pa and len(pb) == len(pa) and (se := paired_change(pb, pa)[1]) == se:
                delta += f" ± {se:.3f}"
            rows.append((split, k, _fmt(b), _fmt(a) if a is not None else "", delta))
    md = [f"# {title}", "", *([f"**{lead}**", ""] if lead else []), *notes, "", "| prompts | metric | before | after | change (± paired s.e.) |", "|---|---|---|---|---|"]
    md += [f"| {' | '.join(r)} |" for r in rows]
    for heading, figures in sections:
        md += ["", f"## {heading}", ""]
        for caption, path in figures:
            md += [*([f"{caption}:", ""] if caption else []), f"![{caption or heading}]({path})", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(md))
    table = "".join(f"<tr>{''.join(f'<td>{html.escape(c)}</td>' for c in r)}</tr>" for r in rows)
    figures = "".join(f"<h2>{html.escape(h)}</h2>" + "".join(
        (f"<p>{html.escape(c)}</p>" if c else "") + f'<img src="{html.escape(p)}">' for c, p in figs)
        for h, figs in sections)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>{f'<p><strong>{html.escape(lead)}</strong></p>' if lead else ''}{''.join(f'<p>{html.escape(n)}</p>' for n in notes)}
<table><tr><th>prompts</th><th>metric</th><th>before</th><th>after</th><th>change (± paired s.e.)</th></tr>{table}</table>
{figures}</body></html>"""
    atomic_write_text(run_dir / "report.html", page)
    return run_dir / "report.md"


