"""Flow-matching RL math against closed forms: the Flow-SDE and CPS steps, their behaviour on 1-D
Gaussian data with the exact velocity field, GRPO group advantages, win rates, the Gaussian KL
and the DiffusionNFT loss."""

import math

import pytest
import torch

from ddrl.advantages import group_advantages, judged_win_rates, win_rates
from ddrl.losses.ddpo import gaussian_kl_same_std
from ddrl.losses.nft import nft_velocity_loss, optimality_weights
from ddrl.sampling import FlowSampler, flow_cps_step, flow_ode_step, flow_sde_step, flow_sigmas, rollout


@pytest.fixture
def state():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g), g


def test_sde_with_noise_level_0_is_the_euler_ode_step(state):
    x, v, _ = state
    for sigma, nxt in [(1.0, 0.9), (0.6, 0.45), (0.1, 0.0)]:
        step = flow_sde_step(x, v, sigma, nxt, noise_level=0.0)
        # float32 sigmas inside vs Python floats here: equal up to rounding
        torch.testing.assert_close(step.x_prev, flow_ode_step(x, v, sigma, nxt), atol=1e-6, rtol=0)
        assert (step.log_prob == 0).all()


def test_sde_mean_is_the_ode_step_plus_the_score_correction(state):
    """mean = x - [v + s^2/(2 sigma) (x + (1 - sigma) v)] dt and std = s sqrt(dt), s = a sqrt(sigma/(1-sigma))."""
    x, v, g = state
    sigma, nxt, a = 0.6, 0.45, 0.7
    s = a * math.sqrt(sigma / (1 - sigma))
    step = flow_sde_step(x, v, sigma, nxt, noise_level=a, noise=torch.randn(x.shape, generator=g))
    want = flow_ode_step(x, v, sigma, nxt) - s**2 / (2 * sigma) * (x + (1 - sigma) * v) * (sigma - nxt)
    torch.testing.assert_close(step.mean, want, atol=1e-6, rtol=0)
    assert float(step.std) == pytest.approx(s * math.sqrt(sigma - nxt), rel=1e-6)


def test_cps_with_eta_0_is_the_euler_ode_step(state):
    """(1 - t')(x - t v) + t'(x + (1 - t) v) = x + (t' - t) v."""
    x, v, _ = state
    for sigma, nxt in [(1.0, 0.9), (0.6, 0.45), (0.1, 0.0)]:
        torch.testing.assert_close(flow_cps_step(x, v, sigma, nxt, noise_level=0.0).x_prev,
                                   flow_ode_step(x, v, sigma, nxt), atol=1e-6, rtol=0)


@pytest.mark.parametrize("eta", [0.3, 0.8, 1.0])
def test_cps_total_noise_std_at_each_step_is_the_schedules_sigma(eta):
    """With the exact velocity of one pair (x_0, x_1), x1_hat = x_1 ~ N(0, 1) and the next sample
    is (1 - t') x_0 + t' cos(eta pi/2) x_1 + t' sin(eta pi/2) z: total noise std t'. Checked by
    Monte Carlo with 200k samples (standard error of the std about t'/630)."""
    g = torch.Generator().manual_seed(1)
    sigmas = flow_sigmas(10, shift=3.0)
    n = 200_000
    x0, x1 = torch.randn(n, 1, generator=g) * 0.3 + 2.0, torch.randn(n, 1, generator=g)
    for j in range(10):
        sigma, nxt = sigmas[j], sigmas[j + 1]
        x_t = (1 - sigma) * x0 + sigma * x1
        step = flow_cps_step(x_t, x1 - x0, sigma, nxt, noise_level=eta, noise=torch.randn(n, 1, generator=g))
        noise = step.x_prev - (1 - nxt) * x0
        assert float(noise.std()) == pytest.approx(float(nxt), abs=4 * float(nxt) / math.sqrt(2 * n) + 1e-7)
        assert float(step.std) == pytest.approx(float(nxt) * math.sin(eta * math.pi / 2), rel=1e-6)


@pytest.mark.parametrize("kind,eta", [("sde", 0.7), ("cps", 0.8)])
def test_sample_then_score_gives_the_same_log_prob(state, kind, eta):
    x, v, g = state
    sampler = FlowSampler(flow_sigmas(8, shift=3.0), kind, eta)
    # every SDE step is stochastic; CPS's last step (to sigma' = 0) has std 0 and is an ODE step
    assert sampler.stochastic.tolist() == [True] * 8 if kind == "sde" else [True] * 7 + [False]
    for j in sampler.stochastic.nonzero().flatten().tolist():
        jt = torch.tensor(j)
        drawn = sampler.step(jt, x, v, noise=torch.randn(x.shape, generator=g))
        scored = sampler.step(jt, x, v, x_prev=drawn.x_prev)
        torch.testing.assert_close(scored.log_prob, drawn.log_prob, atol=0, rtol=0)
        assert torch.isfinite(drawn.log_prob).all()  # also at sigma = 1 and at the last step


def _exact_velocity(mu, s):
    """For data N(mu, s^2) and x_sigma = (1 - sigma) x_0 + sigma x_1, the velocity field
    E[x_1 - x_0 | x_sigma = x] by Gaussian conditioning: var = (1-sigma)^2 s^2 + sigma^2,
    E[x_1 | x] = sigma/var (x - (1-sigma) mu), E[x_0 | x] = mu + (1-sigma) s^2/var (x - (1-sigma) mu)."""
    def v(x, sigma):
        sigma = sigma.view(-1, 1)
        var = (1 - sigma) ** 2 * s**2 + sigma**2
        d = x - (1 - sigma) * mu
        return sigma / var * d - (mu + (1 - sigma) * s**2 / var * d)
    return v


def test_ode_and_sde_reach_the_data_distribution_and_cps_comes_out_narrower():
    """N(1.5, 0.5^2) data, 200 steps (the Euler error is O(1/T): 0.004 in std here), 200k samples:
    ODE and SDE end within 0.01 of the data's mean and std. CPS keeps the mean but replaces a
    fixed fraction of the noise at every step, so its std stays about 20% short however many
    steps are taken."""
    mu, s, n = 1.5, 0.5, 200_000
    v = _exact_velocity(mu, s)
    g = torch.Generator().manual_seed(2)
    for kind, eta in [("ode", 0.0), ("sde", 0.7), ("cps", 0.8)]:
        traj = rollout(v, torch.randn(n, 1, generator=g), FlowSampler(flow_sigmas(200), kind, eta),
                       noise=lambda: torch.randn(n, 1, generator=g))
        mean, std = float(traj.final.mean()), float(traj.final.std())
        assert mean == pytest.approx(mu, abs=0.01), kind
        if kind == "cps":
            assert std < 0.85 * s
        else:
            assert std == pytest.approx(s, abs=0.01), kind


def test_noise_window_makes_only_its_steps_stochastic():
    sampler = FlowSampler(flow_sigmas(10), "cps", 0.8, window_start=2, window_size=3)
    assert sampler.stochastic.tolist() == [False] * 2 + [True] * 3 + [False] * 5
    x = torch.randn(2, 4)
    traj = rollout(lambda x, t: -x, x, sampler, noise=lambda: torch.randn(2, 4))
    assert (traj.log_probs[:, [0, 1, 5, 6, 7, 8, 9]] == 0).all() and (traj.log_probs[:, 2:5] != 0).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="cps", noise_level=1.2), r"CPS needs noise_level \(eta\) in \[0, 1\]"),
    (dict(kind="sde", noise_level=-0.1), "noise_level must be >= 0"),
    (dict(kind="sde", window_start=8, window_size=4), r"noise window \[8, 12\) is outside the 10 steps"),
    (dict(kind="euler"), "unknown flow sampler 'euler'"),
])
def test_bad_sampler_settings_fail_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlowSampler(flow_sigmas(10), **kwargs)


def test_group_advantages_are_standardised_per_group_and_zero_for_a_constant_group():
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    r = torch.tensor([1.0, 2.0, 6.0, 0.5, 0.5, 0.5, -1.0, 3.0, 4.0])
    a = group_advantages(r, groups, global_std=False)
    for g in (0, 2):
        m = groups == g
        std = float(r[m].std(unbiased=False))
        assert float(a[m].mean()) == pytest.approx(0, abs=1e-6)
        assert float(a[m].std(unbiased=False)) == pytest.approx(std / (std + 1e-4), rel=1e-6)  # 1 up to the 1e-4
    assert (a[groups == 1] == 0).all()
    b = group_advantages(r, groups, global_std=True)  # group means, the batch's std
    torch.testing.assert_close(b[:3], (r[:3] - r[:3].mean()) / (r.std(unbiased=False) + 1e-4))
    assert (b[groups == 1] == 0).all()


def test_win_rates_count_wins_and_half_ties_within_groups():
    s = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 5.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    beats = torch.sigmoid(s[:, None] - s[None, :])  # Bradley-Terry from pointwise scores
    torch.testing.assert_close(win_rates(beats, groups), torch.tensor([1.0, 0.0, 0.5, 0.5, 0.5, 0.5]))


def test_a_pairwise_judge_is_asked_each_pair_within_a_group_once():
    """With a judge that compares hidden scores, the win rates equal those of the full matrix, and
    the judge saw the 6 + 1 pairs i < j inside the groups (not the 8 across them), with the prompt."""
    s = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 4.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    images = s.view(6, 1, 1, 1).expand(6, 3, 2, 2)  # each image carries its score
    prompts = ["a", "a", "a", "a", "b", "b"]
    asked = []

    def compare(a, b, ps):
        asked.extend(zip(a[:, 0, 0, 0].tolist(), b[:, 0, 0, 0].tolist(), ps))
        return torch.sigmoid(a[:, 0, 0, 0] - b[:, 0, 0, 0])

    rates = judged_win_rates(compare, images, prompts, groups)
    torch.testing.assert_close(rates, win_rates(torch.sigmoid(s[:, None] - s[None, :]), groups))
    torch.testing.assert_close(rates, torch.tensor([1.0, 0.0, 0.5, 0.5, 1.0, 0.0]))
    assert sorted(asked) == sorted([(3.0, 1.0, "a"), (3.0, 2.0, "a"), (3.0, 2.0, "a"), (1.0, 2.0, "a"),
                                    (1.0, 2.0, "a"), (2.0, 2.0, "a"), (5.0, 4.0, "b")])


def test_step_kl_matches_torch_distributions(state):
    """KL(N(m1, s^2) || N(m2, s^2)) per dim, averaged, for two Flow-SDE steps (policy, reference)."""
    x, v, g = state
    v_ref = v + 0.1 * torch.randn(v.shape, generator=g)
    a = flow_sde_step(x, v, 0.6, 0.45, noise_level=0.7, noise=torch.zeros_like(x))
    b = flow_sde_step(x, v_ref, 0.6, 0.45, noise_level=0.7, noise=torch.zeros_like(x))
    want = torch.distributions.kl_divergence(torch.distributions.Normal(a.mean, a.std),
                                             torch.distributions.Normal(b.mean, b.std)).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_kl_same_std(a.mean, b.mean, a.std), want, rtol=1e-5, atol=1e-7)


def test_nft_velocity_loss_is_flow_matching_when_all_weights_are_1_and_beta_is_1(state):
    v_theta, target, g = state
    v_old = torch.randn(v_theta.shape, generator=g)
    fm = ((v_theta - target) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(nft_velocity_loss(v_theta, v_old, target, torch.ones(4), beta=1.0), fm)
    # r = 0 with beta = 1: the negative policy 2 v_old - v_theta is pulled to the target
    neg = ((2 * v_old - v_theta - target) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(nft_velocity_loss(v_theta, v_old, target, torch.zeros(4), beta=1.0), neg)


def test_optimality_weights_map_clipped_advantages_into_0_1():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0])
    torch.testing.assert_close(optimality_weights(a, 5.0), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))
