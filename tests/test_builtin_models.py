"""The shipped built-in models: they load through diffusers' own pipelines and draw
recognisable shapes."""

import json

import pytest
import torch
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

from ddrl.evaluate import score_images
from ddrl.models import builtin_path, load_policy
from ddrl.worlds.shapes import split

# Colour prompts: the easiest category, and the one where a model that draws nothing
# recognisable scores 0 (the verifier scores blank and noise images at most 0.05).
COLOR_PROMPTS = [p for p in split("all") if len(p.split()) == 3 and p.split()[1] not in
                 ("circle", "square", "triangle")]


def _pipeline_images(pipe, **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(COLOR_PROMPTS, num_inference_steps=20, guidance_scale=5.0, output_type="pt",
               generator=torch.Generator().manual_seed(0), **kwargs)
    return out.images


def test_shapes_sd_loads_in_stable_diffusion_pipeline_and_draws_shapes():
    pipe = StableDiffusionPipeline.from_pretrained(builtin_path("shapes-sd"), safety_checker=None)
    images = _pipeline_images(pipe)
    assert images.shape == (len(COLOR_PROMPTS), 3, 48, 48)
    accuracy = score_images(images, COLOR_PROMPTS).summary()["accuracy/colors"]
    assert accuracy >= 0.6, accuracy


def test_shapes_flow_loads_in_stable_diffusion_3_pipeline_and_draws_shapes():
    pipe = StableDiffusion3Pipeline.from_pretrained(builtin_path("shapes-flow"))
    images = _pipeline_images(pipe, max_sequence_length=16)
    assert images.shape == (len(COLOR_PROMPTS), 3, 48, 48)
    accuracy = score_images(images, COLOR_PROMPTS).summary()["accuracy/colors"]
    assert accuracy >= 0.6, accuracy


def test_shapes_flow_runs_with_precomputed_embeddings_and_no_text_encoders():
    """SD3's pipeline needs no text encoder when given prompt embeddings."""
    policy = load_policy("shapes-flow")
    cond, uncond = policy.encode(COLOR_PROMPTS[:4]), policy.encode([""] * 4)
    pipe = StableDiffusion3Pipeline.from_pretrained(
        builtin_path("shapes-flow"), text_encoder=None, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled,
                  negative_prompt_embeds=uncond.embeds, negative_pooled_prompt_embeds=uncond.pooled,
                  num_inference_steps=20, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    accuracy = score_images(images, COLOR_PROMPTS[:4]).summary()["accuracy/colors"]
    assert accuracy >= 0.5, accuracy


@pytest.mark.parametrize("name", ["shapes-sd", "shapes-flow"])
def test_model_card_and_metadata_are_shipped(name):
    folder = builtin_path(name)
    meta = json.loads((folder / "ddrl.json").read_text())
    assert meta["world"] == "shapes"
    heldout = meta["evaluation"]["heldout"]
    assert 0.3 <= heldout["accuracy"] <= 0.8, heldout
    assert (folder / "README.md").read_text().startswith("---")


def test_weights_are_safetensors_under_25_mb_in_all():
    files = [f for name in ("shapes-sd", "shapes-flow") for f in builtin_path(name).rglob("*")
             if f.is_file()]
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    size = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
    assert 5e6 < size < 25e6, size


def test_built_in_vocabulary_is_enforced():
    from ddrl.models import ModelError

    with pytest.raises(ModelError, match=r"outside the model's vocabulary: \['dog'\]"):
        load_policy("shapes-sd").encode(["a red dog"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shapes-sd", "shapes-flow"])
def test_model_card_accuracy_is_reproduced(name):
    """Re-running the model card's evaluation gives its numbers (same seeds; CPU float32 kernels
    may differ across machines in the last bits, so allow one image in a hundred to flip)."""
    from ddrl.pretrain.card import evaluate_model

    card = json.loads((builtin_path(name) / "ddrl.json").read_text())["evaluation"]
    results = evaluate_model(builtin_path(name))
    for split_name in ("heldout", "train"):
        assert results[split_name]["accuracy"] == pytest.approx(card[split_name]["accuracy"], abs=0.01)
