"""Closed-form and transcription tests of the control math: DPPO's DDPM step, ReinFlow's chain
log-prob, FPO's ratio, GAE, the running return scale, and the schedules. Each transcription names
the reference file it was read from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddrl.advantages import gae
from ddrl.control.algorithms import DPPO, FPO, ReinFlow
from ddrl.control.algorithms.dppo import DPPOOptions
from ddrl.control.algorithms.fpo import FPOOptions
from ddrl.control.algorithms.reinflow import ReinFlowOptions
from ddrl.control.policies import ChunkPolicy
from ddrl.control.returns import RunningReturnScale
from ddrl.sampling import cosine_alpha_bar, ddim_step, ddpm_step

TA, DA, DO = 4, 2, 2


def _policy(kind: str, steps: int, seed: int = 0) -> ChunkPolicy:
    torch.manual_seed(seed)
    return ChunkPolicy(kind, DO, DA, TA, width=32, depth=1, steps=steps).double()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ DPPO

def _dppo_schedule_reference(k: int):
    """irom-princeton/dppo model/diffusion/sampling.py cosine_beta_schedule and
    model/diffusion/diffusion.py's buffers, transcribed in numpy float64."""
    s, steps = 0.008, k + 1
    x = np.linspace(0, steps, steps)
    ac = np.cos(((x / steps) + s) / (1 + s) * np.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = np.clip(1 - (ac[1:] / ac[:-1]), 0, 0.999)
    alphas = 1 - betas
    alphas_cumprod = np.cumprod(alphas)
    prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    return dict(betas=betas, alphas=alphas, ab=alphas_cumprod, prev=prev,
                sqrt_recip=np.sqrt(1 / alphas_cumprod), sqrt_recipm1=np.sqrt(1 / alphas_cumprod - 1),
                var=betas * (1 - prev) / (1 - alphas_cumprod),
                coef1=betas * np.sqrt(prev) / (1 - alphas_cumprod),
                coef2=(1 - prev) * np.sqrt(alphas) / (1 - alphas_cumprod))


def test_cosine_schedule_matches_dppo():
    ref = _dppo_schedule_reference(20)
    torch.testing.assert_close(cosine_alpha_bar(20), torch.from_numpy(ref["ab"]), rtol=0, atol=1e-15)
    # the posterior stds of DPPO's ten fine-tuned steps (research notes): 0.339 ... 0.076, then 0 at t = 0
    std = np.sqrt(np.clip(ref["var"], 1e-20, None))[:10][::-1]
    np.testing.assert_allclose(std[:9], [0.3392, 0.3107, 0.2827, 0.2546, 0.2257, 0.1952, 0.1617, 0.1232, 0.0758], atol=5e-5)


@pytest.mark.parametrize("t", [0, 1, 9, 19])
def test_ddpm_step_matches_dppo_transcription_with_clamp_and_floor(t):
    """diffusion_vpg.py p_mean_var (DDPM branch) and get_logprobs: x0 = sqrt(1/ab) x - sqrt(1/ab - 1) eps,
    clamped to +-1; mu = coef1 x0 + coef2 x; std = exp(0.5 log(clip(var, 1e-20))), clipped below at 0.1;
    log N elementwise. Float64 on both sides: equal to rounding."""
    ref = _dppo_schedule_reference(20)
    g = _gen(t)
    x = 1.5 * torch.randn(8, TA, DA, generator=g, dtype=torch.float64)
    eps = torch.randn(8, TA, DA, generator=g, dtype=torch.float64)
    x_next = torch.randn(8, TA, DA, generator=g, dtype=torch.float64)
    x0 = (ref["sqrt_recip"][t] * x - ref["sqrt_recipm1"][t] * eps).clamp(-1, 1)
    mu = ref["coef1"][t] * x0 + ref["coef2"][t] * x
    std = torch.exp(0.5 * torch.log(torch.tensor(max(ref["var"][t], 1e-20), dtype=torch.float64))).clip(min=0.1)
    lp = torch.distributions.Normal(mu, std).log_prob(x_next)
    ab = cosine_alpha_bar(20)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    step = ddpm_step(x, eps, ab[t], prev[t], x0_clip=1.0, std_min=0.1, x_prev=x_next)
    from ddrl.sampling import gaussian_log_prob

    torch.testing.assert_close(step.mean, mu, rtol=0, atol=1e-12)
    torch.testing.assert_close(step.std, std.expand_as(step.std), rtol=0, atol=1e-15)
    torch.testing.assert_close(gaussian_log_prob(x_next, step.mean, step.std), lp, rtol=0, atol=1e-11)


def test_ddpm_without_clamp_or_floor_is_ddim_eta_one():
    """The DDPM posterior N(mu_t, beta~_t) is DDIM's step at eta = 1 (Song et al. 2021, sec. 4.1):
    both means are sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps with s^2 = beta~; equal to fp32 rounding."""
    ab = cosine_alpha_bar(20).float()
    prev = torch.cat([torch.ones(1), ab[:-1]])
    g = _gen(1)
    x, eps, z = (torch.randn(16, TA, DA, generator=g) for _ in range(3))
    for t in (1, 5, 19):
        a = ddpm_step(x, eps, ab[t], prev[t], noise=z)
        b = ddim_step(x, eps, ab[t], prev[t], eta=1.0, noise=z)
        torch.testing.assert_close(a.mean, b.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.std.expand_as(x), b.std.expand_as(x), rtol=1e-5, atol=1e-7)
    clamped = ddpm_step(4 * x, eps, ab[19], prev[19], x0_clip=1.0, noise=z)
    unclamped = ddim_step(4 * x, eps, ab[19], prev[19], eta=1.0, noise=z)
    assert (clamped.mean - unclamped.mean).abs().max() > 0.1  # with the clamp they differ


def test_dppo_clip_schedule():
    """diffusion_ppo.py: eps_i = base + (coef - base)(e^{rate t} - 1)/(e^rate - 1), t = i/(K'-1):
    constant in Gym (base = coef = 0.01); Robomimic's 0.001 -> 0.01 from the first to the last step."""
    policy = _policy("ddpm", 20)
    gym = DPPO(policy, DPPOOptions())
    torch.testing.assert_close(gym.clip_ranges(torch.arange(10)), torch.full((10,), 0.01, dtype=torch.float64))
    robo = DPPO(_policy("ddpm", 20), DPPOOptions(clip_range_base=0.001))
    c = robo.clip_ranges(torch.arange(10))
    assert c[0] == pytest.approx(0.001, abs=1e-15) and c[-1] == pytest.approx(0.01, abs=1e-15)
    assert c[4] == pytest.approx(0.001 + 0.009 * (math.exp(3 * 4 / 9) - 1) / (math.exp(3) - 1), abs=1e-15)


def test_dppo_chain_and_per_element_clamp_before_the_mean():
    """act stores the last K'+1 chain points and per-element old log-probs; the loss clamps each
    element to [-5, 2] before the mean over (Ta, Da), so its ratio is exactly 1 on-policy."""
    policy = _policy("ddpm", 20)
    algo = DPPO(policy, DPPOOptions(ft_steps=10))
    obs = torch.rand(6, DO, dtype=torch.float64) * 2 - 1
    action, rec = algo.act(obs, _gen(3))
    assert rec["chain"].shape == (6, 11, TA, DA) and rec["old_log_prob"].shape == (6, 10, TA, DA)
    assert torch.equal(rec["chain"][:, -1], action)
    rows = torch.arange(60)
    s = algo.sample_of(rows)
    loss, log_ratio, stats = algo.policy_loss(obs[s], {k: v[s] for k, v in rec.items()}, torch.randn(60, dtype=torch.float64), rows, _gen())
    assert log_ratio.abs().max() < 1e-12 and stats["train/clipfrac"] == 0
    # the clamp acts per element: a mean over elements clamped after averaging would differ
    lp = rec["old_log_prob"]
    assert not torch.allclose(lp.clamp(-5, 2).mean((2, 3)), lp.mean((2, 3)).clamp(-5, 2)) or (lp.min() > -5 and lp.max() < 2)


# ------------------------------------------------------------------ ReinFlow

def _reinflow_logprob_reference(algo: ReinFlow, obs, chain):
    """ReinFlow/ReinFlow model/flow/ft_ppo/ppoflow.py get_logprobs with
    account_for_initial_stochasticity, clip_intermediate_actions, normalize_denoising_horizon and
    normalize_act_space_dimension (as train_ppo_flow_agent.py sets them), on ONE grid t_k = k/K.
    ReinFlow's velocity points from noise to data on t = 1 - sigma: v_ref(x, t) = -v_ddrl(x, 1 - t)."""
    b, kp1 = chain.shape[:2]
    k_steps = kp1 - 1
    dt = 1.0 / k_steps
    init = torch.distributions.Normal(torch.zeros(b, TA * DA, dtype=chain.dtype), 1.0)
    logprob = init.log_prob(chain[:, 0].reshape(b, -1)).sum(-1)
    steps = 1
    for i in range(k_steps):
        t = torch.full((b,), i * dt, dtype=chain.dtype)
        xt = chain[:, i]
        vt = -algo.velocity(xt, 1 - t, obs)
        nt = algo.noise_net(torch.cat([algo.velocity.embed_time(1 - t).detach(), obs], -1))
        mean = (xt + vt * dt).clamp(-1, 1)
        logprob = logprob + torch.distributions.Normal(mean.flatten(1), nt.flatten(1)).log_prob(chain[:, i + 1].flatten(1)).sum(-1)
        steps += 1
    return logprob / steps / (TA * DA)


def test_reinflow_chain_log_prob_matches_reference_with_initial_term():
    policy = _policy("flow", 4)
    algo = ReinFlow(policy, ReinFlowOptions())
    algo.actor.double()
    obs = torch.rand(5, DO, dtype=torch.float64) * 2 - 1
    _, rec = algo.act(obs, _gen(7))
    ref = _reinflow_logprob_reference(algo, obs, rec["chain"])
    torch.testing.assert_close(rec["old_log_prob"], ref, rtol=0, atol=1e-12)
    _, scored, _ = algo._steps(rec["chain"], obs, None)
    torch.testing.assert_close(scored, ref, rtol=0, atol=1e-12)


def test_reinflow_closed_form_with_zero_velocity_and_constant_std():
    """v = 0 and sigma_k = s = 0.25 (exact in binary, as the fp32 bounds are stored): log pi = [sum log N(a0; 0, 1) + sum_k sum log N(a^{k+1}; clamp(a^k), s^2)] / ((K+1) D)."""
    policy = _policy("flow", 3)
    algo = ReinFlow(policy, ReinFlowOptions(sigma_min=0.25, sigma_max=0.25))
    algo.actor.double()
    for p in algo.velocity.mlp.out.parameters():
        torch.nn.init.zeros_(p)
    chain = torch.randn(4, 4, TA, DA, generator=_gen(2), dtype=torch.float64) * 0.7
    obs = torch.zeros(4, DO, dtype=torch.float64)
    _, lp, ent = algo._steps(chain, obs, None)
    d = TA * DA
    expected = -0.5 * (chain[:, 0] ** 2).flatten(1).sum(1) - 0.5 * d * math.log(2 * math.pi)
    for k in range(3):
        r = chain[:, k + 1] - chain[:, k].clamp(-1, 1)
        expected = expected - (r ** 2).flatten(1).sum(1) / (2 * 0.0625) - d * (math.log(0.25) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(lp, expected / (4 * d), rtol=0, atol=1e-12)
    h = (0.5 * d * math.log(2 * math.pi * math.e) + 3 * d * (0.5 * math.log(2 * math.pi * math.e) + math.log(0.25))) / (4 * d)
    torch.testing.assert_close(ent, torch.full((4,), h, dtype=torch.float64), rtol=0, atol=1e-12)


def test_reinflow_sigma_max_holds_then_anneals_to_0198():
    algo = ReinFlow(_policy("flow", 4), ReinFlowOptions())
    values = []
    for it in range(100):
        algo.start_iteration(it, 100)
        values.append(float(algo.noise_net.sigma_max))
    assert values[:35] == [pytest.approx(0.24)] * 35
    assert values[-1] == pytest.approx(0.198 + (0.24 - 0.198) * 0.5 * (1 + math.cos(math.pi * 64 / 65)), abs=1e-6)
    assert all(a >= b for a, b in zip(values, values[1:]))
    algo.start_iteration(100, 100)
    assert float(algo.noise_net.sigma_max) == pytest.approx(0.198, abs=1e-7)


def test_two_time_grids_fail_the_ratio_check():
    """ReinFlow issue #5: sampling on linspace(0, 1, K) but scoring on linspace(0, 1 - 1/K, K) makes
    the ratio differ from 1 before any update; ddrl's one grid gives exactly 1."""
    policy = _policy("flow", 4)
    algo = ReinFlow(policy, ReinFlowOptions())
    algo.actor.double()
    obs = torch.rand(8, DO, dtype=torch.float64) * 2 - 1
    _, rec = algo.act(obs, _gen(4))
    _, same, _ = algo._steps(rec["chain"], obs, None)
    assert torch.equal(same, rec["old_log_prob"])
    policy.sigmas = torch.cat([1 - torch.linspace(0, 1, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    _, shifted, _ = algo._steps(rec["chain"], obs, None)
    assert (shifted - rec["old_log_prob"]).abs().max() > 1e-3


# ------------------------------------------------------------------ FPO

def test_fpo_ratio_is_exactly_one_on_policy_with_stored_draws():
    """playground/src/flow_policy/fpo.py: rho = exp(mean_j L_old - mean_j L_theta) with the (tau, eps)
    draws and L_old stored at rollout; the normaliser is fixed, so re-scoring gives rho = 1 exactly.
    Fresh draws instead give a ratio away from 1."""
    policy = _policy("flow", 4)
    algo = FPO(policy, FPOOptions())
    algo.actor.double()
    obs = torch.rand(16, DO, dtype=torch.float64) * 2 - 1
    _, rec = algo.act(obs, _gen(5))
    assert rec["tau"].shape == (16, 8) and rec["eps"].shape == (16, 8, TA, DA)
    assert torch.isin(rec["tau"], algo.sigmas[:-1]).all() and not torch.isin(algo.sigmas[-1], rec["tau"])
    _, log_ratio, stats = algo.policy_loss(obs, rec, torch.randn(16, dtype=torch.float64), torch.arange(16), _gen())
    assert torch.equal(log_ratio, torch.zeros(16, dtype=torch.float64)) and stats["train/clipfrac"] == 0
    _, fresh = algo.act(obs, _gen(6))
    fresh = fresh | {"action": rec["action"], "old_loss": rec["old_loss"]}
    _, log_ratio2, _ = algo.policy_loss(obs, fresh, torch.randn(16, dtype=torch.float64), torch.arange(16), _gen())
    assert log_ratio2.abs().max() > 1e-3


def test_fpo_eps_space_loss_is_the_weighted_velocity_loss():
    """eps - x1_hat = eps - x_tau - (1 - tau) v = (1 - tau)((eps - a) - v): the eps-space loss is the
    velocity loss times (1 - tau)^2, so draws at tau = 1 add nothing."""
    policy = _policy("flow", 4)
    eps_algo, vel_algo = FPO(policy, FPOOptions(space="eps")), FPO(policy, FPOOptions(space="velocity"))
    vel_algo.actor = eps_algo.actor
    eps_algo.actor.double()
    obs = torch.rand(3, DO, dtype=torch.float64)
    a = torch.rand(3, TA, DA, dtype=torch.float64) * 2 - 1
    tau = torch.tensor([[1.0, 0.5, 0.1]] * 3, dtype=torch.float64)
    eps = torch.randn(3, 3, TA, DA, generator=_gen(1), dtype=torch.float64)
    le, lv = eps_algo.cfm_loss(obs, a, tau, eps), vel_algo.cfm_loss(obs, a, tau, eps)
    torch.testing.assert_close(le, (1 - tau) ** 2 * lv, rtol=1e-12, atol=1e-14)
    assert torch.all(le[:, 0] == 0)


def test_fpo_gridworld_ratio_clamps_each_draw():
    """gridworld/models/fpo.py: per-draw differences clamped to +-3, the mean clamped to +-3, then exp."""
    policy = _policy("flow", 4)
    algo = FPO(policy, FPOOptions(ratio="per_draw", tau="uniform", space="velocity", draws=4))
    algo.actor.double()
    obs = torch.zeros(2, DO, dtype=torch.float64)
    _, rec = algo.act(obs, _gen(2))
    new = algo.cfm_loss(obs, rec["action"], rec["tau"], rec["eps"])
    rec["old_loss"] = new + torch.tensor([[10.0, -1.0, 0.5, 0.0], [-10.0, -10.0, -10.0, 2.0]], dtype=torch.float64)
    _, log_ratio, _ = algo.policy_loss(obs, rec, torch.ones(2, dtype=torch.float64), torch.arange(2), _gen())
    torch.testing.assert_close(log_ratio, torch.tensor([(3 - 1 + 0.5) / 4, (-9 + 2) / 4], dtype=torch.float64))


# ------------------------------------------------------------------ returns

def test_gae_by_hand_with_termination_and_truncation():
    """One environment, 5 steps: steps 0-1 an episode truncated at step 1 (bootstrapped from its
    last observation), steps 2-3 an episode terminated at step 3, step 4 cut by the window.
    gamma = 0.9, lambda = 0.5."""
    g, lam = 0.9, 0.5
    r = torch.tensor([[1.0], [2.0], [0.5], [1.0], [3.0]])
    v = torch.tensor([[0.5], [1.0], [2.0], [0.2], [1.5]])
    v_next = torch.tensor([[1.0], [4.0], [0.2], [9.0], [0.7]])  # V of the observation each step led to
    term = torch.tensor([[False], [False], [False], [True], [False]])
    trunc = torch.tensor([[False], [True], [False], [False], [False]])
    d4 = 3.0 + g * 0.7 - 1.5
    d3 = 1.0 - 0.2  # terminated: no bootstrap, and the recursion stops
    d2 = 0.5 + g * 0.2 - 2.0
    d1 = 2.0 + g * 4.0 - 1.0  # truncated: bootstrapped from V(last obs) = 4, recursion stops
    d0 = 1.0 + g * 1.0 - 0.5
    a4, a3 = d4, d3
    a2 = d2 + g * lam * a3
    a1 = d1
    a0 = d0 + g * lam * a1
    adv = gae(r, v, v_next, term, trunc, gamma=g, lam=lam)
    torch.testing.assert_close(adv, torch.tensor([[a0], [a1], [a2], [a3], [a4]]), rtol=0, atol=1e-6)


def test_running_return_scale_matches_dppo():
    """DPPO util/reward_scaling.py RunningRewardScaler (RunningMeanStd with count 1e-4,
    backward_discounted_sum with `first`), transcribed; float64 on both sides."""
    rng = np.random.default_rng(0)
    n_env, gamma = 3, 0.99
    ours = RunningReturnScale(n_env, gamma)
    mean, var, count, ret = np.zeros(()), np.ones(()), 1e-4, np.zeros(n_env)
    for _ in range(3):
        rew = rng.normal(size=(5, n_env))
        first = (rng.random((5, n_env)) < 0.3).astype(float)
        rets = np.zeros_like(rew)
        prev = ret
        for t in range(5):
            prev = rets[t] = rew[t] + (1 - first[t]) * gamma * prev
        ret = rets[-1]
        x = rets.reshape(-1)
        bm, bv, bc = x.mean(), x.var(), len(x)
        delta, tot = bm - mean, count + bc
        m2 = var * count + bv * bc + delta**2 * count * bc / tot
        mean, var, count = mean + delta * bc / tot, m2 / (tot - 1), tot
        expected = np.clip(rew / np.sqrt(var + 1e-8), -10, 10)
        np.testing.assert_allclose(ours(rew, first.astype(bool)), expected, rtol=1e-13, atol=0)
