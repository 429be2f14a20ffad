"""The end-of-run report: held-out (and training-prompt) evaluation before vs after, the sample
grids and the reward curve, as Markdown and a self-contained-folder HTML page."""

from __future__ import annotations

import html
from pathlib import Path


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(run_dir: Path, title: str, before: dict, after: dict, notes: list[str]) -> Path:
    """`before`/`after`: {split: {metric: value}}. Writes report.md and report.html."""
    rows = []
    for split in before:
        for k in before[split]:
            b, a = before[split][k], after.get(split, {}).get(k)
            if k == "n":
                continue
            delta = f"{a - b:+.3f}" if isinstance(a, float) and isinstance(b, float) else ""
            rows.append((split, k, _fmt(b), _fmt(a) if a is not None else "", delta))
    md = [f"# {title}", "", *notes, "", "| prompts | metric | before | after | change |", "|---|---|---|---|---|"]
    md += [f"| {' | '.join(r)} |" for r in rows]
    md += ["", "## Reward during training", "", "![reward curve](reward_curve.png)", "",
           "## Held-out samples, fixed seeds", "", "Before:", "", "![before](grids/before.png)", "",
           "After:", "", "![after](grids/after.png)", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    table = "".join(f"<tr>{''.join(f'<td>{html.escape(c)}</td>' for c in r)}</tr>" for r in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>{''.join(f'<p>{html.escape(n)}</p>' for n in notes)}
<table><tr><th>prompts</th><th>metric</th><th>before</th><th>after</th><th>change</th></tr>{table}</table>
<h2>Reward during training</h2><img src="reward_curve.png">
<h2>Held-out samples, fixed seeds</h2><p>Before</p><img src="grids/before.png"><p>After</p><img src="grids/after.png">
</body></html>"""
    (run_dir / "report.html").write_text(page)
    return run_dir / "report.md"
