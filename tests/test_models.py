"""The Policy adapters on tiny pipelines built from configs, checked against diffusers itself."""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from torch.testing import assert_close

from ddrl.generate import generate
from ddrl.models import ModelError, load_policy


def _initial_latents(policy, seeds):
    return torch.stack([torch.randn(policy.latent_shape, generator=torch.Generator().manual_seed(s))
                        for s in seeds])


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_sd_adapter_samples_what_the_diffusers_pipeline_samples(tiny_sd_folder, guidance):
    """Same starting latents, DDIM eta 0, CFG: ddrl's own loop equals StableDiffusionPipeline."""
    policy = load_policy(str(tiny_sd_folder))
    prompts, seeds = ["a red circle", "two squares"], [3, 4]
    ddrl_images = generate(policy, prompts, seeds, num_steps=6, guidance_scale=guidance, progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompts, latents=_initial_latents(policy, seeds), num_inference_steps=6,
               guidance_scale=guidance, output_type="pt").images
    assert_close(ddrl_images, out, rtol=0, atol=2e-5)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("folder, pipeline", [("tiny_sd3_folder", "StableDiffusion3Pipeline"),
                                              ("tiny_sdxl_folder", "StableDiffusionXLPipeline")])
def test_sd3_and_sdxl_adapters_sample_what_their_diffusers_pipelines_sample(folder, pipeline, guidance, request):
    """SD3: three text encoders, flow sigmas. SDXL: both text encoders, the pooled embedding,
    add_time_ids (R, R, 0, 0, R, R) and, with guidance, the zero negative embeddings of
    force_zeros_for_empty_prompt. Same starting latents: ddrl's loop equals the pipeline."""
    import diffusers

    path = request.getfixturevalue(folder)
    policy = load_policy(str(path))
    prompts, seeds = ["a blue triangle", "a circle left of a square"], [5, 6]
    ddrl_images = generate(policy, prompts, seeds, num_steps=5, guidance_scale=guidance, progress=False)
    pipe = getattr(diffusers, pipeline).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompts, latents=_initial_latents(policy, seeds), num_inference_steps=5,
               guidance_scale=guidance, output_type="pt").images
    assert_close(ddrl_images, out, rtol=0, atol=2e-5)


def test_images_depend_on_their_seed_not_their_batch(tiny_sd_folder):
    policy = load_policy(str(tiny_sd_folder))
    prompts, seeds = ["a circle", "a square", "a triangle"], [0, 1, 2]
    whole = generate(policy, prompts, seeds, num_steps=3, guidance_scale=3.0, eta=1.0, batch_size=3,
                     progress=False)
    split = generate(policy, prompts, seeds, num_steps=3, guidance_scale=3.0, eta=1.0, batch_size=2,
                     progress=False)
    assert_close(whole, split, rtol=0, atol=1e-5)


@pytest.mark.parametrize("folder", ["tiny_sd_folder", "tiny_sdxl_folder", "tiny_sd3_folder"])
def test_reference_is_the_base_model_with_lora_disabled(folder, request):
    policy = load_policy(str(request.getfixturevalue(folder)))
    c, h, w = policy.latent_shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, h, w, generator=g)
    t = torch.tensor([500, 300]) if policy.prediction == "epsilon" else torch.tensor([0.7, 0.4])
    cond = policy.encode(["a red circle", "a square"])
    with torch.no_grad():
        base = policy.predict(x, t, cond)
        policy.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                               target_modules=policy.lora_target_modules()))
        for n, p in policy.denoiser.named_parameters():  # make the adapter do something
            if "lora_B" in n:
                p.normal_(generator=g)
        adapted = policy.predict(x, t, cond)
        with policy.reference():
            ref = policy.predict(x, t, cond)
        after = policy.predict(x, t, cond)
    assert (adapted - base).abs().max() > 1e-3
    assert_close(ref, base)
    assert_close(after, adapted)


def test_unknown_missing_and_corrupt_models_give_one_line_errors(tiny_sd_folder, tmp_path):
    with pytest.raises(ModelError, match="no model 'no-such-model'"):
        load_policy("no-such-model")
    with pytest.raises(ModelError, match="no model"):
        load_policy(str(tmp_path / "missing" / "folder"))
    with pytest.raises(ModelError, match="not a diffusers pipeline folder"):
        load_policy(str(tmp_path))
    with pytest.raises(ModelError, match="could not load 'someone/some-model'"):
        load_policy("someone/some-model")  # offline: the hub cannot be reached
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_folder, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="could not load") as info:
        load_policy(str(broken))
    assert "\n" not in str(info.value)


def test_v_prediction_models_sample_what_the_pipeline_samples(tiny_sd_folder, tmp_path):
    """SD 2.x-style v-prediction: the adapter converts v to eps = sqrt(ab) v + sqrt(1 - ab) x_t,
    after which the DDIM step must agree with the pipeline's own v-prediction DDIM step."""
    import json
    import shutil

    folder = tmp_path / "tiny-v"
    shutil.copytree(tiny_sd_folder, folder)
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg | {"prediction_type": "v_prediction"}))
    policy = load_policy(str(folder))
    prompts, seeds = ["a yellow square", "four circles"], [8, 9]
    ours = generate(policy, prompts, seeds, num_steps=4, guidance_scale=3.0, progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompts, latents=_initial_latents(policy, seeds), num_inference_steps=4,
                  guidance_scale=3.0, output_type="pt").images
    assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_eta_is_refused_for_velocity_models(tiny_sd3_folder):
    policy = load_policy(str(tiny_sd3_folder))
    with pytest.raises(ValueError, match="eta"):
        generate(policy, ["a circle"], [0], num_steps=2, eta=0.5, progress=False)


def test_sd3_samples_at_model_resolution_and_encodes_max_sequence_length_tokens(tiny_sd3_folder, tiny_sd_folder, tmp_path):
    """flow_grpo and DiffusionNFT train SD3.5 at 512 px with 128 T5 tokens, below the model's own
    1024 px (its transformer's sample_size) and 256 tokens: model.resolution and
    model.max_sequence_length set them; the sd35 presets use the references' values."""
    from ddrl.images.loop import ImageRun
    from ddrl.models.policy import ModelError
    from ddrl.presets import preset_config

    from test_train import tiny_config

    default = load_policy(str(tiny_sd3_folder))
    unit = default.pipe.vae_scale_factor * default.denoiser.config.patch_size
    side = default.latent_shape[-1] * default.pipe.vae_scale_factor
    policy = load_policy(str(tiny_sd3_folder), resolution=side + unit, max_sequence_length=12)
    assert policy.latent_shape[-1] == (side + unit) // policy.pipe.vae_scale_factor and policy.max_sequence_length == 12
    cond = policy.encode(["a red circle"])
    clip = policy.pipe.tokenizer.model_max_length  # CLIP's tokens and T5's, joined along the sequence
    assert cond.embeds.shape[1] == clip + 12 and default.encode(["a red circle"]).embeds.shape[1] == clip + 256
    cfg = tiny_config(tiny_sd3_folder, **{"model.resolution": side + unit, "sample.sampler": "flow-sde",
                                          "train.algorithm": "flow-grpo", "sample.images_per_prompt": 2,
                                          "train.advantages": "group"})
    run = ImageRun(cfg, tmp_path / "run")
    assert run.policy.latent_shape == policy.latent_shape
    images = run.policy.decode(torch.zeros(1, *policy.latent_shape))
    assert images.shape[-1] == side + unit
    with pytest.raises(ModelError, match=rf"model.resolution {side + 1} must be a multiple of {unit}"):
        load_policy(str(tiny_sd3_folder), resolution=side + 1)
    with pytest.raises(ModelError, match="model.resolution and model.max_sequence_length apply to SD3 and FLUX"):
        load_policy(str(tiny_sd_folder), resolution=64)
    for name in ("sd35-geneval-flow-grpo", "sd35-pickscore-flow-grpo", "sd35-geneval-nft"):
        m = preset_config(name).model
        assert (m.resolution, m.max_sequence_length) == (512, 128)
