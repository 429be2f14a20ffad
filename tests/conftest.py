import os

# Tests never reach a model hub: a hub id must fail fast and clearly, not hang on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A random-weight Stable Diffusion pipeline built from configs and saved in diffusers layout."""
    from diffusers import StableDiffusionPipeline

    from ddrl.pretrain import components as C

    tok = C.make_clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=C.make_vae(seed=1), text_encoder=C.make_clip_text_model(tok, hidden=32, seed=2),
        tokenizer=tok, unet=C.make_unet(cross_attention_dim=32, seed=3),
        scheduler=C.make_ddim_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    path = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    """A random-weight SDXL pipeline: two CLIP text encoders (the second with a projection, whose
    pooled output conditions the UNet with the size ids)."""
    from diffusers import StableDiffusionXLPipeline

    from ddrl.pretrain import components as C

    tok = C.make_clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=C.make_vae(seed=1), text_encoder=C.make_clip_text_model(tok, hidden=16, seed=2), tokenizer=tok,
        text_encoder_2=C.make_clip_text_model(tok, hidden=16, projection=16, seed=3), tokenizer_2=tok,
        unet=C.make_sdxl_unet(cross_attention_dim=32, pooled_dim=16, seed=4), scheduler=C.make_ddim_scheduler(),
        force_zeros_for_empty_prompt=True)
    path = tmp_path_factory.mktemp("tiny-sdxl")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd3_folder(tmp_path_factory):
    """A random-weight SD3 pipeline (two CLIPs with projection and a T5) built from configs."""
    from diffusers import StableDiffusion3Pipeline

    from ddrl.pretrain import components as C

    tok, tok3 = C.make_clip_tokenizer(), C.make_t5_tokenizer()
    vae = C.make_vae(seed=1)
    vae.register_to_config(scaling_factor=1.5, shift_factor=0.1)
    pipe = StableDiffusion3Pipeline(
        transformer=C.make_sd3_transformer(joint_attention_dim=32, pooled_projection_dim=32, seed=4),
        scheduler=C.make_flow_scheduler(), vae=vae,
        text_encoder=C.make_clip_text_model(tok, hidden=16, projection=16, seed=5), tokenizer=tok,
        text_encoder_2=C.make_clip_text_model(tok, hidden=16, projection=16, seed=6), tokenizer_2=tok,
        text_encoder_3=C.make_t5_text_model(tok3, d_model=32, seed=7), tokenizer_3=tok3)
    path = tmp_path_factory.mktemp("tiny-sd3")
    pipe.save_pretrained(path)
    return path


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory):
    from tiny_rewards import tiny_clip
    return tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory):
    from tiny_rewards import tiny_bert
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_blip_folder(tmp_path_factory):
    from tiny_rewards import tiny_blip
    return tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture(scope="session")
def tiny_vlm_folder(tmp_path_factory):
    from tiny_rewards import tiny_vlm
    return tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


@pytest.fixture(scope="session")
def tiny_flux_folder(tmp_path_factory):
    """A random-weight FLUX.1 pipeline (CLIP + T5, a 1+1-block transformer with guidance embedding,
    dynamic shifting) built from configs."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from ddrl.pretrain import components as C

    tok, tok3 = C.make_clip_tokenizer(), C.make_t5_tokenizer()
    torch.manual_seed(8)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * C.LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=16, max_image_seq_len=256)
    pipe = FluxPipeline(scheduler=scheduler, vae=C.make_vae(seed=1), text_encoder=C.make_clip_text_model(tok, hidden=16, seed=9),
                        tokenizer=tok, text_encoder_2=C.make_t5_text_model(tok3, d_model=32, seed=10),
                        tokenizer_2=tok3, transformer=transformer)
    path = tmp_path_factory.mktemp("tiny-flux")
    pipe.save_pretrained(path)
    (path / "ddrl.json").write_text('{"resolution": 48, "max_sequence_length": 16}')
    return path


@pytest.fixture
def epoch_gradient():
    """run(trainer) -> (the gradient its epoch's one optimizer step would apply, the epoch's
    metrics): the step is replaced by a capture, so the weights do not move."""

    def run(tr):
        grads = []

        def capture():
            grads.append([p.grad.clone() for p in tr.params])
            tr.optimizer.zero_grad()
            return 0.0

        tr.optimizer_step = capture
        metrics = tr.run_epoch(0)
        assert len(grads) == 1, "expected one optimizer step per epoch"
        return grads[0], metrics

    return run


@pytest.fixture(scope="session")
def saturation_reward(tmp_path_factory):
    """A differentiable `learned` reward fitted to a taste for saturated colour (the pairs of
    test_reward_training): the reward-backprop learning test optimises it."""
    from test_reward_training import _saturation_pairs

    from ddrl.rewards.learned import train_reward_model
    from ddrl.worlds.shapes import split

    folder = tmp_path_factory.mktemp("saturation-reward")
    pairs = _saturation_pairs(folder, split("train")[:40], 5, seed=0)
    train_reward_model(pairs, folder / "rm", epochs=4, progress=False)
    return f"learned(path={folder / 'rm'})"
