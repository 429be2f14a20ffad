"""Evaluate an exported built-in model on both prompt splits and write its model card."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluate import score_images
from ..generate import generate
from ..models import load_policy
from ..worlds.shapes import CATEGORIES, split

EVAL_STEPS, EVAL_GUIDANCE, EVAL_PER_PROMPT = 20, 5.0, 4

_LAYOUT = {
    "shapes-sd": ("StableDiffusionPipeline", "an epsilon-prediction latent diffusion model in Stable "
                  "Diffusion's layout: AutoencoderKL, a CLIP text encoder and byte-level BPE tokenizer "
                  "built from the world's words, a UNet2DConditionModel and a DDIM scheduler "
                  "(scaled-linear betas 0.00085 to 0.012, 1000 training steps)"),
    "shapes-flow": ("StableDiffusion3Pipeline", "a rectified-flow (velocity) model in Stable Diffusion "
                    "3's layout: AutoencoderKL (with shift and scaling factors), two "
                    "CLIPTextModelWithProjection encoders, a T5 encoder with a Unigram vocabulary of the "
                    "world's words, an SD3Transformer2DModel (MMDiT) and a FlowMatchEulerDiscreteScheduler "
                    "(shift 1)"),
}


def evaluate_model(folder: Path, per_prompt: int = EVAL_PER_PROMPT) -> dict[str, dict]:
    policy = load_policy(str(folder))
    out = {}
    for name in ("heldout", "train"):
        prompts = [p for p in split(name) for _ in range(per_prompt)]
        images = generate(policy, prompts, list(range(len(prompts))), num_steps=EVAL_STEPS,
                          guidance_scale=EVAL_GUIDANCE, progress=False)
        out[name] = score_images(images, prompts).summary()
    return out


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 1e6


def write_card(folder: Path, results: dict[str, dict]) -> None:
    meta = json.loads((folder / "ddrl.json").read_text())
    meta["evaluation"] = {"steps": EVAL_STEPS, "guidance": EVAL_GUIDANCE, **results}
    (folder / "ddrl.json").write_text(json.dumps(meta, indent=2) + "\n")
    name = meta["name"]
    pipeline, layout = _LAYOUT[name]
    rows = "\n".join(
        f"| {c} | {results['heldout'].get('accuracy/' + c, float('nan')):.3f} | "
        f"{results['train'].get('accuracy/' + c, float('nan')):.3f} |" for c in CATEGORIES)
    cfg = meta["config"]
    shared = (" (one torch thread, while the other built-in model trained on the other core)"
              if cfg.get("threads") == "1" else "")
    text = f"""---
library_name: diffusers
tags: [ddrl, shapes-world, text-to-image]
---
# {name}

A tiny text-to-image base model of ddrl's built-in shapes world, for running and testing
reinforcement-learning fine-tuning on a laptop CPU. It is {layout}. Load it with
`diffusers.{pipeline}.from_pretrained(folder)` or `ddrl.models.load_policy("{name}")`.
Images are {meta['image_size']}x{meta['image_size']} pixels, latents 4x{meta['latent_size']}x{meta['latent_size']}.
{"Call the pipeline with `max_sequence_length=16`: the T5 encoder was trained on 16-token prompts."
 if name == "shapes-flow" else ""}

## Data
Images rendered by `ddrl.worlds.shapes` for prompts of all six GenEval categories ({cfg['num_images']}
images, rendering seed {cfg['seed']}; category drawn uniformly, then a prompt within it). Pretraining
uses every prompt of the world; RL fine-tuning in ddrl uses only the training split, and the
held-out split contains attribute combinations absent from it.

## Training
`ddrl pretrain {name}` (after `ddrl pretrain vae`), seed {cfg['seed']}: AdamW lr {cfg['lr']}, batch
{cfg['batch_size']}, {meta['steps']} steps, EMA {cfg['ema_decay']}, prompt dropout {cfg['cond_dropout']}
for classifier-free guidance; the VAE: {meta['vae_steps']} steps. Wall-clock training time on a
2-core CPU: VAE {meta['vae_train_seconds'] / 60:.0f} minutes, denoiser {meta['train_seconds'] / 60:.0f} minutes{shared}.
Weights: {_size_mb(folder):.1f} MB of safetensors.

## Verifier accuracy
GenEval-style correctness judged by the shapes verifier, {EVAL_PER_PROMPT} images per prompt,
{EVAL_STEPS} sampling steps, guidance {EVAL_GUIDANCE}, seeds 0..N-1.

| category | held-out | train |
|---|---|---|
{rows}
| **overall** (mean over categories) | **{results['heldout']['accuracy']:.3f}** | **{results['train']['accuracy']:.3f}** |
| partial-credit score | {results['heldout']['score']:.3f} | {results['train']['score']:.3f} |

The model is good but imperfect on purpose: RL fine-tuning has room to improve it.
"""
    (folder / "README.md").write_text(text)


def evaluate_and_write_card(folder: Path) -> dict[str, dict]:
    results = evaluate_model(folder)
    write_card(folder, results)
    return results
