"""The end of an image run: the exported LoRA, the reward curve, and the report with the
held-out headline, per-category changes with paired standard errors and the sample grids."""

from __future__ import annotations

from pathlib import Path

from ..run.metrics import plot_reward_curve
from ..run.report import paired_change, write_report
from .export import save_lora


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
    sig = f", {d / se:.1f} s.e." if se == se and se > 0 else ", no s.e. from one image" if n == 1 else ""
    return f"{what}{sig}; {n} image{'s' if n != 1 else ''}, the same seeds before and after)"


def finish_run(run_dir: Path, cfg, epochs: int, description: str, rows: list[dict], before: dict, after: dict,
               policy=None, lora: dict | None = None) -> None:
    """The end of a run of `epochs` epochs: the exported LoRA (`lora`, of `policy`), the reward
    curve and the report; `description` is the algorithm's line for what an epoch trained on."""
    if lora is not None:
        save_lora(policy, run_dir / "lora", lora)
    evals = {"held-out reward before (fixed seeds)": (0, before["heldout"]["reward"]),
             "held-out reward after (fixed seeds)": (epochs, after["heldout"]["reward"])}
    plot_reward_curve(rows, run_dir / "reward_curve.png", cfg.reward.name, evals)
    notes = [f"{cfg.train.algorithm} on {cfg.model.name}, {epochs} epochs: {description}; evaluated with reward "
             f"{cfg.reward.name}.",
             ("Evaluation uses the training sampler with fixed seeds, so before and after see the same noise."
              if cfg.sample.sampler == "ddim" else
              f"Evaluation uses the ODE at {cfg.eval_steps} steps with fixed seeds.")]
    line = headline(before, after, cfg.reward.name)
    sections = [("Reward during training", [("", "reward_curve.png")]),
                ("Held-out samples, fixed seeds", [("Before", "grids/before.png"), ("After", "grids/after.png")])]
    report = write_report(run_dir, f"ddrl run: {run_dir.name}", before, after, notes, lead=line, sections=sections,
                          per_item=_per_image)
    print(f"{line}\nreport: {report} (and report.html)")
