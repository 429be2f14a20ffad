"""Sampler steps and schedules against closed forms and against diffusers' schedulers."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from torch.testing import assert_close

from ddrl.pretrain.components import make_ddim_scheduler
from ddrl.sampling import (ddim_schedule, ddim_step, ddim_timesteps, eps_from_prediction, flow_ode_step,
                           flow_sigmas, gaussian_log_prob_per_dim, rollout)


def _tensors(generator, shape=(3, 4, 6, 6)):
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def test_gaussian_log_prob_per_dim_is_the_mean_of_normal_log_prob(generator):
    x, mean = _tensors(generator)
    std = torch.tensor(0.3)
    expected = torch.distributions.Normal(mean, std).log_prob(x).flatten(1).mean(1)
    assert_close(gaussian_log_prob_per_dim(x, mean, std), expected)


def test_ddim_eta_zero_is_deterministic_ddim(generator):
    """eta = 0: std 0 and x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps (DDIM eq. 12)."""
    x_t, eps = _tensors(generator)
    ab_t, ab_prev = torch.tensor(0.5), torch.tensor(0.8)
    step = ddim_step(x_t, eps, ab_t, ab_prev, eta=0.0)
    x0 = (x_t - math.sqrt(0.5) * eps) / math.sqrt(0.5)
    assert_close(step.x_prev, math.sqrt(0.8) * x0 + math.sqrt(0.2) * eps)
    assert float(step.std) == 0.0


def test_ddim_eta_one_has_the_ddpm_posterior_variance(generator):
    """eta = 1: std^2 = (1 - ab_prev)/(1 - ab_t) * beta_t with beta_t = 1 - ab_t/ab_prev, the
    variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7)."""
    x_t, eps = _tensors(generator)
    ab_t, ab_prev = 0.3, 0.6
    step = ddim_step(x_t, eps, ab_t, ab_prev, eta=1.0, noise=torch.zeros_like(x_t))
    beta = 1 - ab_t / ab_prev
    assert_close(step.std ** 2, torch.tensor((1 - ab_prev) / (1 - ab_t) * beta))


def test_ddim_matches_diffusers_scheduler_step(generator):
    """Our step with eta and the same noise equals DDIMScheduler.step (variance_noise=z)."""
    sched = make_ddim_scheduler()
    sched.set_timesteps(10)
    x_t, eps = _tensors(generator)
    z = torch.randn(x_t.shape, generator=generator)
    t = int(sched.timesteps[3])
    prev = t - 1000 // 10
    ours = ddim_step(x_t, eps, sched.alphas_cumprod[t], sched.alphas_cumprod[prev], eta=0.7, noise=z)
    theirs = sched.step(eps, t, x_t, eta=0.7, variance_noise=z).prev_sample
    assert_close(ours.x_prev, theirs, rtol=1e-5, atol=1e-5)


def test_sample_then_score_gives_the_identical_log_prob(generator):
    x_t, eps = _tensors(generator)
    z = torch.randn(x_t.shape, generator=generator)
    sampled = ddim_step(x_t, eps, 0.4, 0.7, eta=1.0, noise=z)
    scored = ddim_step(x_t, eps, 0.4, 0.7, eta=1.0, x_prev=sampled.x_prev)
    assert torch.equal(sampled.log_prob, scored.log_prob)
    assert torch.equal(sampled.mean, scored.mean)


def test_ddim_step_needs_exactly_one_of_noise_and_x_prev(generator):
    x_t, eps = _tensors(generator)
    with pytest.raises(ValueError, match="exactly one"):
        ddim_step(x_t, eps, 0.4, 0.7, eta=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        ddim_step(x_t, eps, 0.4, 0.7, eta=1.0, noise=x_t, x_prev=x_t)


def test_flow_ode_step_is_the_euler_step(generator):
    x, v = _tensors(generator)
    assert_close(flow_ode_step(x, v, 0.8, 0.6), x - 0.2 * v)


def test_schedules_match_diffusers():
    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    for n in (1, 7, 20, 50):
        s.set_timesteps(n)
        assert torch.equal(ddim_timesteps(n), s.timesteps)
    for shift in (1.0, 3.0):
        f = FlowMatchEulerDiscreteScheduler(shift=shift)
        for n in (1, 10, 40):
            f.set_timesteps(n)
            assert_close(flow_sigmas(n, shift), f.sigmas.float())


@pytest.mark.parametrize("bad", [0, -3])
def test_schedules_reject_non_positive_step_counts(bad):
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(bad)
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(bad)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_for_eps_v_and_x0_models_matches_diffusers(generator, prediction_type):
    """A v- or x0-prediction output converted to eps gives DDIMScheduler.step's sample."""
    sched = DDIMScheduler.from_config(make_ddim_scheduler().config, prediction_type=prediction_type)
    sched.set_timesteps(10)
    x_t, out = _tensors(generator)
    z = torch.randn(x_t.shape, generator=generator)
    t = int(sched.timesteps[4])
    ab_t, ab_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[t - 100]
    eps = eps_from_prediction(out, x_t, ab_t, prediction_type)
    ours = ddim_step(x_t, eps, ab_t, ab_prev, eta=0.7, noise=z)
    theirs = sched.step(out, t, x_t, eta=0.7, variance_noise=z).prev_sample
    assert_close(ours.x_prev, theirs, rtol=1e-5, atol=1e-5)


def test_rollout_records_a_trajectory_whose_steps_rescore_exactly(generator):
    """A rollout with a fixed linear 'network' stores x_T..x_0 and per-step log-probs; scoring
    each stored transition again gives the same log-prob bit for bit."""
    ab = make_ddim_scheduler().alphas_cumprod
    sched = ddim_schedule(5, ab)  # the last step's previous timestep is clamped to 0: std > 0

    def predict(x, t):
        return 0.5 * x + t.view(-1, 1, 1, 1) / 1000

    x_T = torch.randn(3, 4, 2, 2, generator=generator)
    traj = rollout(predict, x_T, sched, eta=1.0, noise=lambda: torch.randn(3, 4, 2, 2, generator=generator))
    assert traj.latents.shape == (3, 6, 4, 2, 2) and traj.log_probs.shape == (3, 5)
    assert torch.equal(traj.latents[:, 0], x_T) and torch.equal(traj.final, traj.latents[:, -1])
    for j in range(5):
        x_t, t = traj.latents[:, j], sched.timesteps[j].expand(3)
        step = ddim_step(x_t, predict(x_t, t), sched.alpha_bar[j], sched.alpha_bar_prev[j], eta=1.0,
                         x_prev=traj.latents[:, j + 1])
        assert torch.equal(step.log_prob, traj.log_probs[:, j])
