"""ddrl against its reference implementations, one test per documented point (docs/fidelity.md).

Each `_ref_*` function is a transcription of the reference's formula, in the reference's own
order of operations, with the repository and file named in its docstring. ddrl's code is then
run on the same tensors and must agree to float precision.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from ddrl.advantages import win_rate_advantages
from ddrl.algorithms.ddpo import DDPO
from ddrl.algorithms.flow_grpo import FlowGRPO
from ddrl.config import Config, apply_overrides
from ddrl.run.ema import ema_step_
from ddrl.losses.flow_grpo import flow_grpo_kl
from ddrl.losses.nft import nft_velocity_loss, nft_x0_loss, optimality_weights
from ddrl.presets import preset_config
from ddrl.sampling import DDIMSampler, FlowSampler, ddim_schedule, ddim_step, flow_sde_step, flow_sigmas, rollout


def _ref_sde_step(v, x, sigma, sigma_prev, sigma_max, noise_level, prev_sample):
    """yifan123/flow_grpo, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, sde_step_with_logprob
    (sigma the current sigma, sigma_prev the next one, dt < 0)."""
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    prev_sample_mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    log_prob = (-((prev_sample.detach() - prev_sample_mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
                - torch.log(std_dev_t * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample_mean, std_dev_t, log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def _states(g, n=3):
    return [torch.randn(n, 4, 6, 6, generator=g) for _ in range(3)]


# ---------------------------------------------------------------- a. Flow-GRPO's KL term

def test_a_flow_grpo_kl_code_form_is_the_training_scripts_and_the_paper_form_is_1_over_dt_larger(generator):
    """flow_grpo scripts/train_sd3.py: kl = mean_D (mean - mean_ref)^2 / (2 std_dev_t^2), with
    std_dev_t the SDE's s (no sqrt(dt)). ddrl's default `code` form is that; `paper` divides by
    the step's full variance s^2 dt, so paper = code / dt per step (flow_grpo issue #78)."""
    x, v, v_ref = _states(generator)
    sigmas = flow_sigmas(10, shift=3.0)
    sampler = FlowSampler(sigmas, "sde", 0.7)
    for j in (0, 4, 9):
        s, nxt = sigmas[j], sigmas[j + 1]
        mean, std_dev_t, _ = _ref_sde_step(v, x, s, nxt, sigmas[1], 0.7, x)
        mean_ref, _, _ = _ref_sde_step(v_ref, x, s, nxt, sigmas[1], 0.7, x)
        ref = ((mean - mean_ref) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std_dev_t**2)
        a = sampler.step(torch.tensor(j), x, v, noise=torch.zeros_like(x))
        b = sampler.step(torch.tensor(j), x, v_ref, noise=torch.zeros_like(x))
        dt = sampler.step_size(torch.tensor(j))
        code = flow_grpo_kl(a.mean, b.mean, a.std, dt, "code")
        torch.testing.assert_close(code, ref.flatten(), rtol=1e-5, atol=0)
        torch.testing.assert_close(flow_grpo_kl(a.mean, b.mean, a.std, dt, "paper"), code / dt, rtol=1e-5, atol=0)


def test_a_the_sd35_presets_use_the_papers_beta_under_the_code_form():
    for name, beta in (("sd35-geneval-flow-grpo", 0.04), ("sd35-pickscore-flow-grpo", 0.01)):
        t = preset_config(name).train
        assert (t.kl_coef, t.kl_form) == (beta, "code")


# ---------------------------------------------------------------- b. DiffusionNFT

def _ref_nft_policy_loss(forward_prediction, old_prediction, xt, x0, t, advantages, beta, adv_clip_max):
    """NVlabs/DiffusionNFT, scripts/train_nft_sd3.py, the training loop's policy loss."""
    advantages_clip = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    normalized_advantages_clip = (advantages_clip / adv_clip_max) / 2.0 + 0.5
    r = torch.clamp(normalized_advantages_clip, 0, 1)
    t_expanded = t.view(-1, *([1] * (len(x0.shape) - 1)))
    positive_prediction = beta * forward_prediction + (1 - beta) * old_prediction.detach()
    implicit_negative_prediction = (1.0 + beta) * old_prediction.detach() - beta * forward_prediction
    x0_prediction = xt - t_expanded * positive_prediction
    with torch.no_grad():
        weight_factor = (torch.abs(x0_prediction.double() - x0.double())
                         .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    negative_x0_prediction = xt - t_expanded * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = (torch.abs(negative_x0_prediction.double() - x0.double())
                                  .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    ori_policy_loss = r * positive_loss / beta + (1.0 - r) * negative_loss / beta
    return (ori_policy_loss * adv_clip_max).mean()


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_b_nft_x0_loss_and_its_gradient_are_the_reference_codes(generator, beta):
    x0, x1, v_old = _states(generator, n=6)
    t = torch.tensor([0.95, 0.8, 0.6, 0.4, 0.2, 0.05])
    s = t.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * x1
    adv = torch.tensor([7.0, 2.0, 0.5, -0.5, -2.0, -9.0])
    v1 = (v_old + 0.3 * torch.randn(v_old.shape, generator=generator)).requires_grad_()
    v2 = v1.detach().clone().requires_grad_()
    ref = _ref_nft_policy_loss(v1, v_old, x_t, x0, t, adv, beta, 5.0)
    ours = nft_x0_loss(v2, v_old, x_t, x0, t, optimality_weights(adv, 5.0), beta, 5.0).mean()
    torch.testing.assert_close(ours.double(), ref.double(), rtol=1e-6, atol=0)
    ref.backward()
    ours.backward()
    torch.testing.assert_close(v2.grad, v1.grad.float(), rtol=1e-5, atol=1e-8)
    # the paper's velocity form is not a rescaling of it: per-sample gradient sizes differ by t / MAE
    v3 = v1.detach().clone().requires_grad_()
    nft_velocity_loss(v3, v_old, x1 - x0, optimality_weights(adv, 5.0), beta).mean().backward()
    ratio = v2.grad.flatten(1).norm(dim=1) / v3.grad.flatten(1).norm(dim=1)
    assert ratio.max() / ratio.min() > 2


def test_b_nft_preset_takes_one_optimizer_step_per_epoch_with_the_references_solver():
    """DiffusionNFT config/nft.py sd3_geneval: gradient_step_per_epoch = 1, solver dpm2, CFG-free,
    timestep_fraction 0.99, KL beta 1e-4, EMA 0.9 every step."""
    cfg = preset_config("sd35-geneval-nft")
    assert cfg.optimizer_steps_per_epoch == 1
    assert (cfg.sample.sampler, cfg.sample.guidance_scale, cfg.train.timestep_fraction) == ("flow-dpm2", 1.0, 0.99)
    assert (cfg.train.kl_coef, cfg.options.loss, cfg.train.ema_decay, cfg.train.ema_update_interval) == (
        1e-4, "x0-adaptive", 0.9, 1)


def _ref_dpm2_rollout(v_pred_fn, z, sigmas):
    """NVlabs/DiffusionNFT, flow_grpo/diffusers_patch/solver.py: run_sampling(solver="dpm2",
    determistic=True) with DPMState(order=2), dpm_step, ddim_update(eta=0),
    multistep_dpm_solver_second_order_update."""
    sig = sigmas.double()
    outputs = [None, None]
    lower_order_nums = 0
    for i in range(len(sigmas) - 1):
        pred = v_pred_fn(z, sigmas[i])
        lower_order_final = i == len(sigmas) - 2
        model_output = z - sigmas[i] * pred  # convert_model_output: x0 prediction
        outputs = [outputs[1], model_output]
        sample = z.float()
        if lower_order_nums < 1 or lower_order_final:  # step 0 or the last: ddim_update with eta 0
            t, s = sig[i + 1], sig[i]
            noise_pred = (sample - (1 - s) * model_output) / s
            prev = (1 - t) * model_output + torch.sqrt(t**2) * noise_pred
        else:
            sigma_t, sigma_s0, sigma_s1 = sig[i + 1], sig[i], sig[i - 1]
            lam = lambda x: torch.log(1 - x) - torch.log(x)  # noqa: E731
            h, h_0 = lam(sigma_t) - lam(sigma_s0), lam(sigma_s0) - lam(sigma_s1)
            r0 = h_0 / h
            m0, m1 = outputs[-1], outputs[-2]
            D0, D1 = m0, (1.0 / r0) * (m0 - m1)
            alpha_t = 1 - sigma_t
            prev = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * D0 \
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
        lower_order_nums = min(lower_order_nums + 1, 2)
        z = prev.float()
    return z


def test_b_flow_dpm2_rollout_is_the_nft_references_solver(generator):
    w = torch.randn(4, 4, generator=generator) * 0.3

    def velocity(z, sigma):  # a smooth nonlinear field of (z, sigma)
        return torch.tanh(torch.einsum("ij,bjhw->bihw", w, z)) * (1 + sigma) - 0.5 * z

    x = torch.randn(3, 4, 6, 6, generator=generator)
    sigmas = flow_sigmas(10, shift=3.0)
    ours = rollout(lambda z, t: velocity(z, t[0]), x, FlowSampler(sigmas, "dpm2", 0.0), noise=None).final
    torch.testing.assert_close(ours, _ref_dpm2_rollout(velocity, x, sigmas), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- c. which steps are trained

def _algorithm(cls, cfg, sampler):
    ctx = SimpleNamespace(cfg=cfg, sampler=sampler)
    return cls(cfg.options, ctx)


def test_c_flow_grpo_trains_the_first_steps_in_order_never_the_last():
    """flow_grpo scripts/train_sd3.py: num_train_timesteps = int(num_steps * timestep_fraction),
    train_timesteps = range(num_train_timesteps), the same for every sample."""
    cfg = apply_overrides(Config(), {"train.algorithm": "flow-grpo", "sample.sampler": "flow-sde",
                                     "sample.num_steps": 10, "train.timestep_fraction": 0.99})
    algo = _algorithm(FlowGRPO, cfg, FlowSampler(flow_sigmas(10), "sde", 0.7))
    assert algo.trained.tolist() == list(range(int(10 * 0.99))) == list(range(9))
    windowed = apply_overrides(cfg, {"sample.noise_window_start": 2, "sample.noise_window_size": 4,
                                     "train.timestep_fraction": 0.5})
    algo = _algorithm(FlowGRPO, windowed, FlowSampler(flow_sigmas(10), "sde", 0.7, 2, 4))
    assert algo.trained.tolist() == [2, 3]  # the first half of the window, in order


def test_c_ddpo_trains_the_first_steps_of_a_per_sample_permutation():
    """kvablack/ddpo-pytorch scripts/train.py: perms = stack([randperm(num_timesteps) for each
    sample]); the training loop takes perms[:, :num_train_timesteps]."""
    cfg = apply_overrides(Config(), {"sample.num_steps": 10, "train.timestep_fraction": 0.5})
    sched = ddim_schedule(10, torch.linspace(0.999, 0.01, 1000))
    algo = _algorithm(DDPO, cfg, DDIMSampler(sched, 1.0))
    for seed in range(5):
        ours = algo.steps_of(torch.Generator().manual_seed(seed))
        ref = torch.randperm(10, generator=torch.Generator().manual_seed(seed))[:int(10 * 0.5)]
        assert torch.equal(ours, ref)
    draws = torch.stack([algo.steps_of(torch.Generator().manual_seed(s)) for s in range(400)])
    counts = torch.bincount(draws.flatten(), minlength=10).float() / 400
    assert (counts - 0.5).abs().max() < 0.1  # every step trained in about half the samples


# ---------------------------------------------------------------- d. the Flow-SDE step at sigma = 1

def test_d_flow_sde_step_at_sigma_1_substitutes_sigma_max_only_in_the_denominator(generator):
    x, v, z = _states(generator)
    sigmas = flow_sigmas(10, shift=3.0)
    assert sigmas[0] == 1.0
    for j in (0, 1, 5):
        ours = flow_sde_step(x, v, sigmas[j], sigmas[j + 1], noise_level=0.7, sigma_max=sigmas[1], noise=z)
        mean, std_dev_t, log_prob = _ref_sde_step(v, x, sigmas[j], sigmas[j + 1], sigmas[1].item(), 0.7, ours.x_prev)
        torch.testing.assert_close(ours.mean, mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours.std, std_dev_t * (sigmas[j] - sigmas[j + 1]).sqrt(), rtol=1e-6, atol=0)
        torch.testing.assert_close(ours.log_prob, log_prob, rtol=1e-6, atol=1e-6)
    # at sigma = 1 the std is a sqrt(1 / (1 - sigma_max)): not a sqrt(sigma_max / (1 - sigma_max))
    first = flow_sde_step(x, v, 1.0, sigmas[1], noise_level=0.7, sigma_max=sigmas[1], noise=z)
    torch.testing.assert_close(first.std, 0.7 * (1 / (1 - sigmas[1])).sqrt() * (1 - sigmas[1]).sqrt())
    with pytest.raises(ValueError, match="needs sigma_max"):
        flow_sde_step(x, v, 1.0, sigmas[1], noise_level=0.7, noise=z)


# ---------------------------------------------------------------- e. Pref-GRPO's normalisation

def _ref_pref_grpo_advantages(rewards, num_generations):
    """CodeGoat24/Pref-GRPO, fastvideo/rewards/dispatcher.py, compute_weighted_advantages with
    use_group=True (one reward, weight 1)."""
    n = len(rewards) // num_generations
    adv = torch.zeros_like(rewards)
    for i in range(n):
        group_rewards = rewards[i * num_generations:(i + 1) * num_generations]
        adv[i * num_generations:(i + 1) * num_generations] = (
            (group_rewards - group_rewards.mean()) / (group_rewards.std() + 1e-8))
    return adv


def test_e_pref_grpo_divides_win_rates_by_each_groups_own_unbiased_std():
    rates = torch.tensor([1.0, 2 / 3, 1 / 3, 0.0, 0.5, 0.5, 0.5, 0.5, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    groups = torch.arange(12) // 4
    ours = win_rate_advantages(rates, groups)
    torch.testing.assert_close(ours, _ref_pref_grpo_advantages(rates, 4), rtol=1e-6, atol=1e-6)
    assert torch.equal(ours[4:8], torch.zeros(4))  # all ties: exactly 0, not NaN


def _ref_pref_grpo_weighted(rewards: dict, weights: dict, num_generations, apply_gdpo):
    """CodeGoat24/Pref-GRPO, fastvideo/rewards/dispatcher.py, compute_weighted_advantages with
    use_group=True: each reward's group advantages, weighted and summed; apply_gdpo normalises the
    sum over the (gathered) batch."""
    advantages = torch.zeros_like(next(iter(rewards.values())))
    for name in weights:
        advantages = advantages + weights.get(name, 0.0) * _ref_pref_grpo_advantages(rewards[name], num_generations)
    if apply_gdpo:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return advantages


def _pref_grpo(sampler=None, **options):
    from ddrl.algorithms.pref_grpo import PrefGRPO, PrefGRPOOptions

    algo = object.__new__(PrefGRPO)
    algo.options = PrefGRPOOptions(**options)
    algo.ctx = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(adv_clip_max=5.0)), sampler=sampler)
    return algo


@pytest.mark.parametrize("weight,gdpo", [(0.6, True), (0.6, False), (0.0, True)])
def test_e_pref_grpo_mixes_rewards_as_its_scripts(generator, weight, gdpo):
    """The scripts' --reward_spec '{"unifiedreward_think": 0.4, "clip": 0.6}' with --apply_gdpo:
    pref_grpo.pointwise_weight 0.6 and batch_normalize true (float64 in, so the float32 results
    agree to rounding)."""
    groups = torch.arange(16) // 4
    rates = torch.tensor([1.0, 2 / 3, 1 / 3, 0.0, 0.5, 0.5, 0.5, 0.5, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 0, 1, 1 / 3, 2 / 3])
    clip = torch.rand(16, generator=generator) * 0.3
    ours = _pref_grpo(pointwise_weight=weight, batch_normalize=gdpo).mixed_advantages(rates, clip, groups)
    want = _ref_pref_grpo_weighted({"judge": rates.double(), "clip": clip.double()},
                                   {"judge": 1 - weight, "clip": weight}, 4, gdpo).clamp(-5, 5)
    torch.testing.assert_close(ours, want.float(), rtol=1e-6, atol=1e-6)


def test_e_pref_grpo_trains_a_random_subset_of_each_samples_steps():
    """fastvideo/train_flux.py: perms = torch.stack([torch.randperm(T) for _ in range(B)]); each
    sample trains steps perms[i][:int(T * timestep_fraction)]. The same seed through a sample's
    generator gives the same steps; `steps first` is Flow-GRPO's first steps."""
    T, k = 10, 6  # timestep_fraction 0.6 of 10 steps, as the reference's scripts
    sampler = SimpleNamespace(stochastic=torch.ones(T, dtype=torch.bool))
    algo = _pref_grpo(sampler)
    algo.trained = torch.arange(k)
    for seed in range(50):
        torch.manual_seed(seed)
        want = torch.stack([torch.randperm(T) for _ in range(1)])[0][:int(T * 0.6)]
        assert torch.equal(algo.steps_of(torch.Generator().manual_seed(seed)), want)
    first = _pref_grpo(sampler, steps="first")
    first.trained = torch.arange(k)
    assert torch.equal(first.steps_of(torch.Generator()), torch.arange(k))


# ---------------------------------------------------------------- f. DDIM's last step

def _ref_ddim_step(alphas_cumprod, num_train_timesteps, num_inference_steps, timestep, model_output, sample,
                   eta, prev_sample):
    """kvablack/ddpo-pytorch, ddpo_pytorch/diffusers_patch/ddim_with_logprob.py,
    ddim_step_with_logprob (epsilon prediction, no clipping); the previous timestep is clamped to
    [0, num_train_timesteps - 1], so final_alpha_cumprod is never used."""
    prev_timestep = timestep - num_train_timesteps // num_inference_steps
    prev_timestep = torch.clamp(prev_timestep, 0, num_train_timesteps - 1)
    alpha_prod_t = alphas_cumprod.gather(0, timestep)
    alpha_prod_t_prev = alphas_cumprod.gather(0, prev_timestep)
    beta_prod_t = 1 - alpha_prod_t
    pred_original_sample = (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
    variance = ((1 - alpha_prod_t_prev) / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance ** 0.5
    pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * model_output
    prev_sample_mean = alpha_prod_t_prev ** 0.5 * pred_original_sample + pred_sample_direction
    log_prob = (-((prev_sample.detach() - prev_sample_mean) ** 2) / (2 * (std_dev_t**2))
                - torch.log(std_dev_t) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample_mean, log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def test_f_ddim_last_step_has_a_finite_log_prob_with_set_alpha_to_one(generator):
    """A scheduler with set_alpha_to_one=True has final_alpha_cumprod 1; the reference never uses
    it (the clamp), so its last step keeps std > 0 and a finite log-prob, and so does ddrl's."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          set_alpha_to_one=True, steps_offset=1, clip_sample=False)
    assert float(sched.final_alpha_cumprod) == 1.0
    ab = sched.alphas_cumprod
    schedule = ddim_schedule(10, ab, steps_offset=1)
    x, eps, z = _states(generator)
    for j in range(10):
        t = schedule.timesteps[j]
        ours = ddim_step(x, eps, schedule.alpha_bar[j], schedule.alpha_bar_prev[j], eta=1.0, noise=z)
        mean, log_prob = _ref_ddim_step(ab, 1000, 10, t, eps, x, 1.0, ours.x_prev)
        assert torch.isfinite(ours.log_prob).all()
        torch.testing.assert_close(ours.mean, mean.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.log_prob, log_prob.float(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- g. zero-spread filtering

def test_g_zero_advantage_samples_are_dropped_and_the_rest_rebatched(tiny_sd3_folder, tmp_path, monkeypatch,
                                                                    epoch_gradient):
    """flow_grpo scripts/train_sd3.py drops samples whose advantages are all 0 and re-batches the
    rest, so each minibatch's loss is a mean over kept samples. One minibatch of 8 samples, half
    of them in a zero-spread group: the filtered gradient is 2x the unfiltered one, whose mean
    counts the 4 dropped samples as zeros (their policy-gradient term is -0 * ratio)."""
    from ddrl.rewards import REWARDS, RewardOutput, RewardSpec
    from ddrl.images.loop import ImageRun

    class HalfConstant:  # first sampling batch (group 0): all equal; second (group 1): spread
        name, differentiable, device = "half-constant", False, "cpu"
        calls = 0

        def __call__(self, images, prompts, metadata):
            HalfConstant.calls += 1
            return RewardOutput(torch.ones(len(images)) if HalfConstant.calls % 2 else torch.arange(len(images)).float())

    monkeypatch.setitem(REWARDS, "half-constant", RewardSpec(HalfConstant, "images", "test"))
    grads = {}
    for filtered in (True, False):
        HalfConstant.calls = 0
        cfg = apply_overrides(Config(), {
            "model.name": str(tiny_sd3_folder), "reward.name": "half-constant", "reward.asynchronous": False,
            "train.algorithm": "flow-grpo", "sample.sampler": "flow-sde", "sample.num_steps": 4,
            "sample.batch_size": 4, "sample.num_batches_per_epoch": 2, "sample.images_per_prompt": 4,
            "train.advantages": "group", "train.batch_size": 8, "sample.guidance_scale": 1.0,
            "train.filter_zero_std": filtered, "train.single_pass": False})
        grads[filtered], m = epoch_gradient(ImageRun(cfg, tmp_path / str(filtered)))
        assert m["prompts/zero_std_ratio"] == 0.5
    assert max(float(g.abs().max()) for g in grads[True]) > 0
    # The two gradients sum the same non-zero terms (4 kept rows x 4 steps, through the network's
    # batched passes) in different orders and batch sizes (4 rows against 8, half of them zero),
    # so they differ by fp32 summation rounding, at most (n - 1) u sum|terms| for n terms
    # (u = 2^-24). Taking the terms no larger than 32 times the tensor's largest element (they
    # are means over 32 (row, step) pairs of the same network's gradients), with n = 32:
    # |a - 2b| <= 32 * 32 * u * max|a|. An absolute bound: elements where terms cancel are small.
    u = 2.0 ** -24
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, 2 * b, rtol=0, atol=32 * 32 * u * float(a.abs().max()))


# ---------------------------------------------------------------- h. the EMA

class _RefEMA:
    """yifan123/flow_grpo, flow_grpo/ema.py, EMAModuleWrapper (get_current_decay and step);
    DiffusionNFT ships the same file."""

    def __init__(self, parameters, decay, update_step_interval):
        self.ema_parameters = [p.clone().detach() for p in parameters]
        self.decay, self.update_step_interval = decay, update_step_interval

    def step(self, parameters, optimization_step):
        one_minus_decay = 1 - min((1 + optimization_step) / (10 + optimization_step), self.decay)
        if (optimization_step + 1) % self.update_step_interval == 0:
            for ema_parameter, parameter in zip(self.ema_parameters, parameters):
                ema_parameter.add_(one_minus_decay * (parameter - ema_parameter))


@pytest.mark.parametrize("interval", [1, 8])
def test_h_ema_is_flow_grpos_with_its_warmup_and_interval(generator, interval):
    params = [torch.randn(5, generator=generator), torch.randn(3, 2, generator=generator)]
    ref = _RefEMA(params, 0.9, interval)
    ours = {str(i): p.clone() for i, p in enumerate(params)}
    for step in range(1, 30):  # the step counter after each optimizer step
        params = [p + torch.randn(p.shape, generator=generator) for p in params]
        ref.step(params, step)
        ema_step_(ours, {str(i): p for i, p in enumerate(params)}, step, 0.9, interval)
    for i, e in enumerate(ref.ema_parameters):
        torch.testing.assert_close(ours[str(i)], e, rtol=1e-6, atol=1e-6)


def _ref_grpo_ema_placement(grads, ga, interval, lr=0.1):
    """yifan123/flow_grpo, scripts/train_sd3.py (training loop): for each training minibatch i
    (its timesteps inside), the optimizer steps when accelerate syncs, every `ga`-th minibatch, and
    global_step += 1; then, still inside the minibatch loop, ema.step(params, global_step). With
    `per_step` the EMA follows DiffusionNFT's scripts/train_nft_sd3.py instead: ema.step after each
    optimizer step only."""
    def run(per_step):
        w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
        opt = torch.optim.SGD([w], lr=lr)
        ema = _RefEMA([w.detach()], 0.9, interval)
        global_step = 0
        for i, g in enumerate(grads):
            w.grad = g.clone() if w.grad is None else w.grad + g
            stepped = (i + 1) % ga == 0
            if stepped:
                opt.step()
                opt.zero_grad()
                global_step += 1
            if stepped or not per_step:
                ema.step([w.detach()], global_step)
        return ema.ema_parameters[0]

    return run(per_step=False), run(per_step=True)


@pytest.mark.parametrize("ga,interval", [(1, 8), (4, 2), (3, 8), (2, 1)])
def test_h_ema_is_checked_where_each_reference_checks_it(generator, ga, interval):
    """train.ema_per minibatch is flow_grpo's GRPO placement (after every training minibatch, at
    the steps taken so far), step is DiffusionNFT's (after every optimizer step)."""
    from ddrl.run.step import Accumulation, OptimizerStep

    grads = [torch.randn(4, generator=generator, dtype=torch.float64) for _ in range(48)]
    want = dict(zip(("minibatch", "step"), _ref_grpo_ema_placement(grads, ga, interval)))
    for per in ("minibatch", "step"):
        w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
        step = OptimizerStep([w], torch.optim.SGD([w], lr=0.1), lr=0.1, max_grad_norm=float("inf"),
                             named=lambda: {"w": w.detach()}, ema_decay=0.9, ema_interval=interval, ema_per=per)
        acc = Accumulation(step, ga, after_minibatch=step.after_minibatch)
        for i, g in enumerate(grads):
            w.grad = g.clone() if w.grad is None else w.grad + g  # the gradient a backward pass would add
            acc.end_minibatch(i)
        # float64; the two update forms (d e + (1-d) p against e + (1-d)(p - e)) round differently
        torch.testing.assert_close(step.ema["w"], want[per], rtol=1e-12, atol=1e-12)
    if ga > 1 and interval > 1:  # the placements really differ here
        assert not torch.allclose(want["minibatch"], want["step"])


def test_h_the_sd35_presets_keep_the_references_ema():
    """flow_grpo config/grpo.py: train.ema = True with EMAModuleWrapper(decay=0.9,
    update_step_interval=8); DiffusionNFT: decay 0.9, update_step_interval=1."""
    for name in ("sd35-geneval-flow-grpo", "sd35-pickscore-flow-grpo"):
        t = preset_config(name).train
        assert (t.ema_decay, t.ema_update_interval, t.ema_per) == (0.9, 8, "minibatch")
    t = preset_config("sd35-geneval-nft").train
    assert (t.ema_decay, t.ema_update_interval, t.ema_per) == (0.9, 1, "step")
