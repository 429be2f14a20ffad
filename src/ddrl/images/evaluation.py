"""Fixed-seed evaluation and sample grids during a run.

Evaluation samples with the training sampler (steps, eta, guidance) from fixed seeds, so the
images before and after training start from the same noise. On shapes-world prompts it also
reports the verifier's GenEval-style accuracy per category.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..evaluate import score_images
from ..generate import generate
from ..grid import image_grid
from ..io import atomic_write, atomic_write_text
from ..rewards import score
from ..worlds.shapes import category_of

EVAL_SEED = 1_000_000


def _round_robin(prompts: list[str]) -> list[str]:
    """Shapes prompts interleaved by category, so a small grid shows every category."""
    try:
        cats = [category_of(p) for p in prompts]
    except ValueError:
        return prompts
    pools = [[p for p, c in zip(prompts, cats) if c == k] for k in dict.fromkeys(cats)]
    return [p for group in itertools.zip_longest(*pools) for p in group if p is not None]


@dataclass
class Evaluator:
    """What the fixed-seed evaluation and grids need of a run."""

    cfg: Any
    policy: Any
    reward: Any
    train_prompts: list[str]
    eval_prompts: list[str]
    prompt_metadata: dict[str, dict]
    run_dir: Path
    is_main: bool = True

    def _sample(self, prompts: list[str], k: int, progress: bool):
        c = self.cfg.sample
        ps = [p for p in prompts for _ in range(k)]
        seeds = [EVAL_SEED + i for i in range(len(ps))]
        eta = c.eta if c.sampler == "ddim" else 0.0  # flow models are evaluated with the ODE, as Flow-GRPO does
        images = generate(self.policy, ps, seeds, num_steps=self.cfg.eval_steps, guidance_scale=c.guidance_scale,
                          eta=eta, batch_size=max(c.batch_size, 16), progress=progress)
        return ps, images

    def evaluate(self, tag: str) -> dict:
        """{split: {metric: value}} for the held-out and training prompts, and per_image: {split:
        {"reward": [...], "correct": [...], "category": [...]}} in sampling order."""
        out: dict = {}
        e = self.cfg.eval
        for split, prompts, k in (("heldout", _round_robin(self.eval_prompts), e.images_per_prompt),
                                  ("train", _round_robin(self.train_prompts), e.train_images_per_prompt)):
            if k == 0:  # eval.train_images_per_prompt 0: held-out prompts only
                continue
            prompts = prompts[:e.max_prompts or None]
            ps, images = self._sample(prompts, k, progress=self.is_main)
            rewards, _ = score(self.reward, images, ps, [self.prompt_metadata[p] for p in ps])
            out[split] = {"reward": float(rewards.mean())}
            # kept per image: before and after share seeds, so a change has a paired standard error
            per_image = {"reward": [round(float(r), 6) for r in rewards]}
            ev = score_images(images, ps)
            if "accuracy" in (summary := ev.summary()):
                out[split] |= {k: float(v) for k, v in summary.items()}
                per_image["correct"] = [float(c) if c is not None else None for c in ev.correct]
                # the category of each image, so each category's change gets its own paired s.e.
                per_image["category"] = [category_of(p) if c is not None else None for p, c in zip(ps, ev.correct)]
            out.setdefault("per_image", {})[split] = per_image
            if split == "heldout":
                self._save_grid(tag, images[:e.grid_size], ps[:e.grid_size], rewards[:e.grid_size], ev.correct[:e.grid_size])
        return out

    def write_grid(self, name: str) -> Path:
        """A grid of the same (prompt, seed) pairs as the first images of the held-out evaluation."""
        prompts = _round_robin(self.eval_prompts)
        k, n = self.cfg.eval.images_per_prompt, self.cfg.eval.grid_size
        needed = prompts[:-(-n // k)]
        ps, images = self._sample(needed, k, progress=False)
        ps, images = ps[:n], images[:n]
        rewards, _ = score(self.reward, images, ps, [self.prompt_metadata[p] for p in ps])
        return self._save_grid(name, images, ps, rewards, score_images(images, ps).correct)

    def _save_grid(self, name: str, images, prompts, rewards, correct) -> Path:
        if not self.is_main:  # under FSDP every process samples the grid; one writes it
            return self.run_dir / "grids" / f"{name}.png"
        captions = [f"{p} ({float(r):.2f})" for p, r in zip(prompts, rewards)]
        grid = image_grid(images, captions, correct=correct)
        return atomic_write(self.run_dir / "grids" / f"{name}.png", grid.save)

    def evaluate_once(self, tag: str, epoch: int, wait: Callable[[], None], weights, everywhere: bool) -> dict:
        """Held-out and training-prompt evaluation with fixed seeds at `epoch`, with the weights
        of the context `weights()`, cached in the run folder so a resumed run does not repeat it.
        `wait` is a barrier across processes; `everywhere`: every process samples (FSDP)."""
        path = self.run_dir / f"eval_{tag}.json"
        # Every process looks before the main one can write, so all take the same branch (a
        # process that saw the file and skipped the barrier below would deadlock the others).
        wait()
        cached = path.exists()
        wait()
        if cached:
            try:
                result = json.loads(path.read_text())
                # an "after" evaluation of fewer epochs is stale: the run was extended since
                if tag == "before" or result.get("epoch") == epoch:
                    return result
            except (ValueError, OSError, AttributeError) as e:
                if tag == "before" and epoch > 0:  # the untrained weights are gone: it cannot be redone
                    raise ValueError(f"{path} is damaged ({type(e).__name__}: {e}); it holds the evaluation "
                                     "before training, which a resumed run cannot redo. Restore it, or start a new run"
                                     ) from None
                if self.is_main:
                    print(f"warning: {path} is damaged ({type(e).__name__}); evaluating again")
        result = {}
        if self.is_main or everywhere:  # sampling is a collective under FSDP: every process evaluates
            with weights():
                result = self.evaluate(tag) | {"epoch": epoch}
        if self.is_main:
            atomic_write_text(path, json.dumps(result, indent=1))
        wait()
        return result if self.is_main else json.loads(path.read_text())
