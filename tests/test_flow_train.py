"""Flow-GRPO, Pref-GRPO and DiffusionNFT in the training loop, on a tiny SD3 pipeline built from
configs (the SD3/SD3.5 adapter end to end) and on the built-in shapes-flow model."""

import json

import pytest
import torch

from ddrl.algorithms.nft import old_policy_decay
from ddrl.config import Config, ConfigError, apply_overrides
from ddrl.algorithms import algorithm_class
from ddrl.config_checks import validate
from ddrl.models.policy import ModelError
from ddrl.images.loop import ImageRun



def trained_steps(cfg) -> int:
    return algorithm_class(cfg.train.algorithm).trained_steps(cfg)


def flow_config(folder, **overrides) -> Config:
    base = {"model.name": str(folder), "reward.name": "jpeg-incompressibility", "train.algorithm": "flow-grpo",
            "sample.sampler": "flow-sde", "sample.num_steps": 4, "sample.batch_size": 4,
            "sample.num_batches_per_epoch": 2, "sample.images_per_prompt": 4, "train.advantages": "group",
            "train.batch_size": 4, "run.epochs": 2, "eval.max_prompts": 2, "eval.images_per_prompt": 1,
            "eval.grid_every": 0, "eval.grid_size": 2, "sample.guidance_scale": 1.0}
    cfg = apply_overrides(Config(), base | overrides)
    validate(cfg)
    return cfg


def _changed(before, tr) -> bool:
    return any(not torch.equal(before[k], v) for k, v in tr.trainable_state().items())


@pytest.mark.parametrize("sampler", ["flow-sde", "flow-cps"])
def test_flow_grpo_first_minibatch_is_on_policy_and_a_step_trains_sd3(tiny_sd3_folder, tmp_path, sampler):
    """Re-scoring the first minibatch gives the sampled log-probs bit for bit (ratio 1); the
    epoch's two optimizer steps change the LoRA, with KL to the base model (adapter off)."""
    cfg = flow_config(tiny_sd3_folder, **{"sample.sampler": sampler, "sample.noise_level": 0.7,
                                          "train.kl_coef": 0.04, "train.filter_zero_std": False})
    tr = ImageRun(cfg, tmp_path)
    before = {k: v.clone() for k, v in tr.trainable_state().items()}
    m = tr.run_epoch(0)
    assert m["train/logprob_gap"] == 0.0
    assert m["train/kl_ref"] > 0 and torch.isfinite(torch.tensor(m["train/loss"]))
    assert _changed(before, tr)


def test_a_noise_window_trains_only_its_steps(tiny_sd3_folder, tmp_path):
    cfg = flow_config(tiny_sd3_folder, **{"sample.sampler": "flow-cps", "sample.noise_level": 0.8,
                                          "sample.noise_window_start": 1, "sample.noise_window_size": 2})
    assert trained_steps(cfg) == 2
    tr = ImageRun(cfg, tmp_path)
    ro = tr.collector(0).rollouts
    assert (ro.log_probs[:, [0, 3]] == 0).all() and (ro.log_probs[:, 1:3] != 0).all()


def test_zero_spread_groups_are_skipped(tiny_sd3_folder, tmp_path, monkeypatch):
    """A constant reward gives every group zero spread: advantages 0, nothing re-scored, no update."""
    from ddrl.rewards import REWARDS, RewardOutput, RewardSpec

    class Constant:
        name, differentiable, device = "constant", False, "cpu"

        def __call__(self, images, prompts, metadata):
            return RewardOutput(torch.ones(len(images)))

    monkeypatch.setitem(REWARDS, "constant", RewardSpec(Constant, "images", "test"))
    tr = ImageRun(flow_config(tiny_sd3_folder, **{"reward.name": "constant"}), tmp_path)
    before = {k: v.clone() for k, v in tr.trainable_state().items()}
    m = tr.run_epoch(0)
    assert m["prompts/zero_std_ratio"] == 1.0 and "train/loss" not in m
    assert not _changed(before, tr)


def test_nft_trains_from_ode_rollouts_and_moves_the_old_policy_by_its_ema(tiny_sd3_folder, tmp_path):
    cfg = flow_config(tiny_sd3_folder, **{"train.algorithm": "nft", "sample.sampler": "flow-ode",
                                          "train.timestep_fraction": 0.5, "train.kl_coef": 1e-4})
    tr = ImageRun(cfg, tmp_path)
    old0 = {k: v.clone() for k, v in tr.algorithm.old.items()}
    m = tr.run_epoch(0)
    assert cfg.optimizer_steps_per_epoch == 2 and tr.optimizer_steps == 2
    d = old_policy_decay("ramp", 2)  # the decay counts optimizer steps, as DiffusionNFT's return_decay
    assert d == pytest.approx(0.002) and m["train/nft_old_decay"] == pytest.approx(d)
    assert _changed(old0, tr)
    for k, v in tr.trainable_state().items():  # old <- d old + (1 - d) theta
        torch.testing.assert_close(tr.algorithm.old[k], d * old0[k] + (1 - d) * v)


@pytest.mark.parametrize("integer", [True, False])
def test_nft_rollouts_feed_the_references_integer_timesteps(tiny_sd3_folder, tmp_path, integer):
    """DiffusionNFT's sampler gives the SD3 transformer long(1000 sigma); its training step feeds
    the stored float timesteps. `nft.integer_timesteps false` feeds 1000 sigma in both."""
    cfg = flow_config(tiny_sd3_folder, **{"train.algorithm": "nft", "sample.sampler": "flow-dpm2",
                                          "sample.guidance_scale": 1.0, "nft.integer_timesteps": integer,
                                          "sample.num_steps": 7})  # sigmas k/7: 1000 sigma is not whole
    tr = ImageRun(cfg, tmp_path)
    seen, denoiser = [], tr.policy.denoiser
    real = denoiser.forward

    def recording(*args, timestep=None, **kwargs):
        seen.append(timestep.detach().float().clone())
        return real(*args, timestep=timestep, **kwargs)

    denoiser.forward = recording
    tr.run_epoch(0)
    rollout_calls = cfg.sample.num_batches_per_epoch * cfg.sample.num_steps
    rolled, trained = torch.cat(seen[:rollout_calls]), torch.cat(seen[rollout_calls:])
    sigmas = tr.sampler.sigmas[:-1]
    # the reference's torch.full([B], sigma * 1000, dtype=torch.long), sigma a float32 element of
    # scheduler.sigmas.float(): the product rounds in float32 (0.667 x 1000 is 667.0) before truncation
    want = torch.stack([torch.full([1], s * 1000, dtype=torch.long)[0] for s in sigmas.float()]).float()
    assert set(rolled.tolist()) == set((want if integer else sigmas * 1000).tolist())
    assert not torch.equal(trained, trained.round())  # training: the unrounded levels


def test_nft_trains_on_the_rollout_noise_levels_whatever_the_noise_window():
    """A noise window picks the stochastic steps of a GRPO sampler; NFT noises its samples afresh
    at timestep_fraction of all the rollout's levels."""
    cfg = apply_overrides(Config(), {"model.name": "shapes-flow", "train.algorithm": "nft", "sample.sampler": "flow-ode",
                                     "sample.num_steps": 10, "sample.noise_window_size": 3,
                                     "train.timestep_fraction": 0.5})
    assert trained_steps(cfg) == 5
    assert trained_steps(apply_overrides(cfg, {"train.algorithm": "flow-grpo", "sample.sampler": "flow-sde"})) == 1


def test_pref_grpo_trains_on_win_rates(tiny_sd3_folder, tmp_path):
    tr = ImageRun(flow_config(tiny_sd3_folder, **{"train.algorithm": "pref-grpo"}), tmp_path)
    before = {k: v.clone() for k, v in tr.trainable_state().items()}
    m = tr.run_epoch(0)
    assert m["reward/win_rate_std"] > 0 and _changed(before, tr)


def test_pref_grpo_trains_on_a_pairwise_vlm_judges_win_rates(tiny_sd3_folder, tiny_vlm_folder, tmp_path, monkeypatch):
    """The judge's win rates replace the reward comparisons. Every pair in a group is judged in
    both orders and averaged, so P(a > b) + P(b > a) = 1 and each group's win rates average 1/2."""
    import ddrl.algorithms.pref_grpo as pref

    seen = []
    original = pref.win_rate_advantages
    monkeypatch.setattr(pref, "win_rate_advantages", lambda rates, groups: seen.append(rates) or original(rates, groups))
    tr = ImageRun(flow_config(tiny_sd3_folder, **{"train.algorithm": "pref-grpo",
                                                 "reward.pairwise": f"vlm-judge(model={tiny_vlm_folder})"}), tmp_path)
    before = {k: v.clone() for k, v in tr.trainable_state().items()}
    m = tr.run_epoch(0)
    group_means = seen[0].view(-1, 4).mean(1)
    torch.testing.assert_close(group_means, torch.full_like(group_means, 0.5))
    assert m["reward/win_rate_std"] > 0 and _changed(before, tr)


def _lora_reproduces_the_trained_denoiser(folder, run_dir, cfg, pipeline_cls):
    """The exported LoRA, loaded by diffusers into a fresh pipeline, gives the trained model's output."""
    tr = ImageRun(cfg, run_dir)
    tr.load_latest()
    pipe = pipeline_cls.from_pretrained(folder)
    pipe.load_lora_weights(str(run_dir / "lora"))
    x = torch.randn(2, *tr.policy.latent_shape, generator=torch.Generator().manual_seed(0))
    t, cond = torch.tensor([0.9, 0.3]), tr.cond_table[:2]
    with torch.no_grad():
        ours = tr.policy.predict(x, t, cond)
        tr.policy.denoiser = pipe.transformer
        theirs = tr.policy.predict(x, t, cond)
        tr.policy.denoiser = pipeline_cls.from_pretrained(folder).transformer
        base = tr.policy.predict(x, t, cond)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, ours, atol=1e-6)  # the LoRA changed the model


def test_flow_run_exports_an_sd3_lora_that_reproduces_the_trained_transformer(tiny_sd3_folder, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from helpers import train

    cfg = flow_config(tiny_sd3_folder, **{"run.epochs": 1, "run.output_dir": str(tmp_path)})
    train(cfg, tmp_path)
    _lora_reproduces_the_trained_denoiser(tiny_sd3_folder, tmp_path, cfg, StableDiffusion3Pipeline)


@pytest.mark.parametrize("overrides,message", [
    ({"sample.sampler": "flow-cps", "sample.noise_level": 1.5}, r"in \[0, 1\] for flow-cps"),
    ({"sample.noise_window_start": 3, "sample.noise_window_size": 3}, r"noise window \[3, 6\) .* outside the 4 steps"),
    ({"sample.images_per_prompt": 3}, "must divide the samples per epoch"),
    ({"sample.sampler": "ddim"}, "needs a stochastic flow sampler"),
    ({"sample.sampler": "flow-ode"}, "needs a stochastic flow sampler"),
    ({"sample.sampler": "flow-dpm2"}, "needs a stochastic flow sampler"),
    ({"train.kl_form": "exact"}, "train.kl_form must be one of code, paper"),
    ({"train.algorithm": "pref-grpo", "train.advantages": "batch"}, "win rates within groups"),
    ({"reward.pairwise": "jpeg-compressibility"}, "reward.pairwise is read by pref-grpo only"),
    ({"train.algorithm": "pref-grpo", "reward.pairwise": "jpeg-compressibility", "sample.images_per_prompt": 8,
      "sample.batch_size": 8}, r"images_per_prompt \(8\) must divide train.batch_size \(4\)"),
])
def test_bad_flow_settings_fail_before_any_work(tiny_sd3_folder, overrides, message):
    with pytest.raises(ConfigError, match=message):
        flow_config(tiny_sd3_folder, **overrides)


def test_model_kind_mismatches_are_refused_before_training(tiny_sd_folder, tiny_sd3_folder, tmp_path):
    with pytest.raises(ModelError, match=r"is a diffusion \(epsilon\) model .*; train.algorithm flow-grpo trains a flow"):
        ImageRun(flow_config(tiny_sd_folder), tmp_path)
    ddpo = apply_overrides(Config(), {"model.name": str(tiny_sd3_folder), "reward.name": "jpeg-compressibility"})
    with pytest.raises(ModelError, match=r"flow-matching \(velocity\) model .*; train.algorithm ddpo-is trains a diff"):
        ImageRun(ddpo, tmp_path)


def test_flux_adapter_reproduces_the_diffusers_pipeline(tiny_flux_folder):
    """Packing, position ids, embedded guidance and the dynamic-shift sigmas: ddrl's ODE rollout
    of a FLUX model gives FluxPipeline's latents."""
    from diffusers import FluxPipeline

    from ddrl.models import load_policy
    from ddrl.models.flux import pack, unpack
    from ddrl.sampling import FlowSampler, rollout

    policy = load_policy(str(tiny_flux_folder))
    assert policy.latent_shape == (4, 12, 12)
    x = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = policy.encode(["a red circle"])
    with torch.no_grad():
        ours = rollout(lambda z, t: policy.predict(z, t, cond), x, FlowSampler(policy.sigmas(4), "ode", 0.0),
                       noise=None).final
        theirs = FluxPipeline.from_pretrained(tiny_flux_folder)(
            ["a red circle"], height=48, width=48, num_inference_steps=4, guidance_scale=3.5, latents=pack(x),
            output_type="latent", max_sequence_length=16).images
    torch.testing.assert_close(ours, unpack(theirs, 12, 12), atol=1e-5, rtol=0)


def test_flow_grpo_trains_flux_and_exports_its_lora(tiny_flux_folder, tmp_path):
    from diffusers import FluxPipeline

    from helpers import train

    cfg = flow_config(tiny_flux_folder, **{"run.epochs": 1, "run.output_dir": str(tmp_path), "train.kl_coef": 0.01})
    train(cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/logprob_gap"] == 0.0 and rows[0]["train/kl_ref"] >= 0
    _lora_reproduces_the_trained_denoiser(tiny_flux_folder, tmp_path, cfg, FluxPipeline)


def test_ema_of_the_trained_weights_follows_each_optimizer_step_and_is_checkpointed(tiny_sd3_folder, tmp_path):
    """One optimizer step per epoch, flow_grpo's warm-up (flow_grpo/ema.py): the decay of update
    s = 1 is min((1 + 1) / (10 + 1), 0.9) = 2/11, so ema = 2/11 theta_0 + 9/11 theta_1."""
    cfg = flow_config(tiny_sd3_folder, **{"train.ema_decay": 0.9, "sample.num_batches_per_epoch": 1,
                                          "run.epochs": 1, "run.output_dir": str(tmp_path)})
    assert cfg.optimizer_steps_per_epoch == 1
    tr = ImageRun(cfg, tmp_path)
    theta0 = {k: v.clone() for k, v in tr.trainable_state().items()}
    tr.run_epoch(0)
    assert _changed(theta0, tr)
    for k, v in tr.trainable_state().items():
        torch.testing.assert_close(tr.ema[k], 2 / 11 * theta0[k] + 9 / 11 * v)
    tr.epoch = 1
    tr.save(1)
    again = ImageRun(cfg, tmp_path)
    again.load_latest()
    for k in tr.ema:
        torch.testing.assert_close(again.ema[k], tr.ema[k], atol=0, rtol=0)


def test_nft_checkpoint_resumes_exactly_with_its_old_policy_and_the_ema(tiny_sd3_folder, tmp_path):
    """The algorithm's state (NFT's old policy, in algorithm.safetensors), the EMA and the
    optimizer-step count that schedules the old policy's decay survive a checkpoint: epoch 2 run
    after a reload equals epoch 2 of a run that never stopped, bit for bit."""
    cfg = flow_config(tiny_sd3_folder, **{"train.algorithm": "nft", "sample.sampler": "flow-dpm2",
                                          "train.timestep_fraction": 0.5, "train.kl_coef": 1e-4,
                                          "train.ema_decay": 0.9, "run.output_dir": str(tmp_path / "b")})
    straight = ImageRun(cfg, tmp_path / "a")
    for e in range(2):
        straight.run_epoch(e)
    first = ImageRun(cfg, tmp_path / "b")
    first.run_epoch(0)
    first.epoch = 1
    first.save(1)
    assert (tmp_path / "b/checkpoints/epoch_000001/algorithm.safetensors").exists()
    resumed = ImageRun(cfg, tmp_path / "b")
    resumed.load_latest()
    assert resumed.optimizer_steps == 2
    resumed.run_epoch(1)
    for got, ref in ((resumed.trainable_state(), straight.trainable_state()), (resumed.algorithm.old, straight.algorithm.old),
                     (resumed.ema, straight.ema)):
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
