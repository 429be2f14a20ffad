"""Reward backpropagation (ddrl.algorithms.reward_backprop): the gradients of DRaFT-K, DRaFT-LV,
AlignProp and ReFL against unrolled transcriptions of their chains, in float64 on a toy model;
checkpointing; AlignProp's truncation draw; the losses; config-time refusals."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from ddrl.algorithms.base import Context
from ddrl.algorithms.reward_backprop import (AlignProp, DRaFT, ReFL, alignprop_acceptance, alignprop_first_step,
                                             refl_window)
from ddrl.config import Config, ConfigError, apply_overrides
from ddrl.config_checks import validate
from ddrl.losses.reward_backprop import reward_loss
from ddrl.models.policy import Cond
from ddrl.rewards import RewardOutput
from ddrl.sampling import DDIMSampler, FlowSampler, ddim_schedule, flow_sigmas

T, B, SHAPE, W = 6, 4, (3, 4, 4), 3.0


class ToyPolicy:
    """An epsilon (or velocity) model in float64: a small conv net, its output shifted by the time
    and the condition, so guidance and the time input matter."""

    def __init__(self, prediction: str = "epsilon"):
        self.prediction, self.latent_shape, self.device = prediction, SHAPE, torch.device("cpu")
        g = torch.Generator().manual_seed(0)
        self.denoiser = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(),
                                            torch.nn.Conv2d(8, 3, 3, padding=1)).double()
        with torch.no_grad():
            for p in self.denoiser.parameters():
                p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=torch.float64))

    def predict(self, x, t, cond):
        scale = 1 + t.double().view(-1, 1, 1, 1) / 1000
        return self.denoiser(x.double()) * scale + cond.embeds.mean((1, 2)).view(-1, 1, 1, 1)

    def decode(self, latents):
        return torch.sigmoid(latents)  # (B, 3, 4, 4) in [0, 1]


class ToyReward:
    name, differentiable, device = "toy", True, "cpu"

    def __init__(self):
        self.w = torch.linspace(-1, 1, 48, dtype=torch.float64).view(1, 3, 4, 4)

    def __call__(self, images, prompts, metadata):
        return RewardOutput((images * self.w).flatten(1).sum(1) + (images ** 2).flatten(1).mean(1))


def _gen(*key, purpose="train"):
    seed = sum((i + 3) * 7919 * (k + 2) for i, k in enumerate(key)) + 104729 * len(purpose)
    return torch.Generator().manual_seed(seed)


def _ctx(algorithm: str, prediction: str = "epsilon", **overrides) -> tuple[Context, ToyPolicy, list]:
    cfg = apply_overrides(Config(), {"train.algorithm": algorithm, "sample.num_steps": T, "sample.guidance_scale": W,
                                     "sample.batch_size": B, "sample.num_batches_per_epoch": 1, "train.batch_size": B,
                                     "reward.name": "learned", **overrides})
    policy = ToyPolicy(prediction)
    if prediction == "epsilon":
        ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
        sampler = DDIMSampler(ddim_schedule(T, ab), eta=cfg.sample.eta)
    else:
        sampler = FlowSampler(flow_sigmas(T, shift=3.0), "ode")
    g = torch.Generator().manual_seed(1)
    cond_table = Cond(torch.randn(3, 2, 5, generator=g, dtype=torch.float64))
    grads: list = []
    params = list(policy.denoiser.parameters())

    def optimizer_step():
        grads.append([p.grad.clone() for p in params])
        for p in params:
            p.grad = None
        return 0.0

    ctx = Context(cfg=cfg, policy=policy, sampler=sampler, cond_table=cond_table, uncond=Cond(torch.zeros(1, 2, 5, dtype=torch.float64)),
                  autocast=contextlib.nullcontext, reference=contextlib.nullcontext, optimizer_step=optimizer_step,
                  optimizer_steps=lambda: 0, generator=_gen, gather=lambda x: x, trainable_state=dict,
                  swapped=lambda w: contextlib.nullcontext(), collect=None, reward=ToyReward(),
                  plan=lambda epoch: (torch.arange(B), torch.tensor([0, 1, 2, 0])),
                  prompts_of=lambda pids: (["p"] * len(pids), [{}] * len(pids)))
    return ctx, policy, grads


def _guided(policy, x, t, cond, uncond):
    u = policy.predict(x, t, uncond)
    return u + W * (policy.predict(x, t, cond) - u)


def _noise(gens):
    """fp32 draws, as the algorithm and the loop make them (x_t becomes float64 at the first step)."""
    return torch.stack([torch.randn(SHAPE, generator=g) for g in gens])


def _reference_grad(policy, loss):
    return torch.autograd.grad(loss, list(policy.denoiser.parameters()))


def _assert_same(ours, ref):
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("K", [1, 3, T])
def test_draft_k_gradient_is_autograd_through_the_unrolled_last_k_ddim_steps(K):
    """DRaFT-K (Clark et al. 2023, Alg. 1 with truncation): the gradient of -mean r(decode(x_0)) with
    x_{T-K} held fixed. The transcription writes DDIM (eta 1) out by hand: x0 = (x - sqrt(1-ab) eps)
    / sqrt(ab), std = eta sqrt((1-ab')/(1-ab)) sqrt(1-ab/ab'), x' = sqrt(ab') x0 + sqrt(1-ab'-std^2)
    eps + std z, with guidance u + w (c - u), the same noise draws, and no gradient before step T-K."""
    ctx, policy, grads = _ctx("draft", **{"backprop.steps": K})
    metrics = DRaFT(ctx.cfg.options, ctx).train_epoch(0)
    assert metrics["train/backprop_steps"] == K  # network calls with gradients

    gens = [_gen(0, i, purpose="noise") for i in range(B)]
    cond, uncond = ctx.cond_table[torch.tensor([0, 1, 2, 0])], ctx.uncond.repeat(B)
    s = ctx.sampler.schedule
    x = _noise(gens)
    for j in range(T):
        with torch.set_grad_enabled(j >= T - K):
            t = s.timesteps[j].expand(B)
            eps = _guided(policy, x, t, cond, uncond)
            ab, ab_prev = s.alpha_bar[j], s.alpha_bar_prev[j]  # fp32 constants, as the schedule holds them
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            std = ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev - std ** 2).sqrt() * eps + std * _noise(gens)
    r = ToyReward()(policy.decode(x), [], []).scores
    assert metrics["reward/mean"] == pytest.approx(float(r.detach().mean()), rel=1e-12)
    _assert_same(grads[0], _reference_grad(policy, -r.mean()))


def test_draft_k_through_the_flow_ode_is_autograd_through_unrolled_euler_steps():
    """The same on a velocity model with the flow-ode sampler: x_{j+1} = x_j + (sigma_{j+1} -
    sigma_j) v(x_j, sigma_j), gradients through the last K = 2 steps."""
    K = 2
    ctx, policy, grads = _ctx("draft", "velocity", **{"backprop.steps": K, "sample.sampler": "flow-ode"})
    DRaFT(ctx.cfg.options, ctx).train_epoch(0)
    gens = [_gen(0, i, purpose="noise") for i in range(B)]
    cond, uncond = ctx.cond_table[torch.tensor([0, 1, 2, 0])], ctx.uncond.repeat(B)
    sigmas = ctx.sampler.sigmas
    x = _noise(gens).double()
    for j in range(T):
        with torch.set_grad_enabled(j >= T - K):
            x = x + (sigmas[j + 1] - sigmas[j]) * _guided(policy, x, sigmas[j].expand(B), cond, uncond)
    r = ToyReward()(policy.decode(x), [], []).scores
    _assert_same(grads[0], _reference_grad(policy, -r.mean()))


def test_draft_lv_averages_the_last_step_over_noised_copies_of_x0():
    """DRaFT-LV (K = 1): x_0 from the chain without gradients; n copies x^i = sqrt(ab) x_0 +
    sqrt(1 - ab) eps_i at the last step's level; loss -(1/n) sum_i r(x0_hat(x^i))."""
    n = 3
    ctx, policy, grads = _ctx("draft", **{"backprop.lv_samples": n})
    metrics = DRaFT(ctx.cfg.options, ctx).train_epoch(0)
    assert metrics["train/reward_queries"] == n * B

    gens = [_gen(0, i, purpose="noise") for i in range(B)]
    cond, uncond = ctx.cond_table[torch.tensor([0, 1, 2, 0])], ctx.uncond.repeat(B)
    s = ctx.sampler.schedule
    with torch.no_grad():
        x = _noise(gens)
        for j in range(T):
            eps = _guided(policy, x, s.timesteps[j].expand(B), cond, uncond)
            x = ctx.sampler.step(torch.tensor(j), x, eps, noise=_noise(gens)).x_prev
    ab = s.alpha_bar[-1]
    losses = []
    for _ in range(n):
        x1 = ab.sqrt() * x + (1 - ab).sqrt() * _noise(gens)
        eps = _guided(policy, x1, s.timesteps[-1].expand(B), cond, uncond)
        losses.append(-ToyReward()(policy.decode((x1 - (1 - ab).sqrt() * eps) / ab.sqrt()), [], []).scores.mean())
    _assert_same(grads[0], _reference_grad(policy, sum(losses) / n))


def test_alignprop_gives_the_same_gradient_with_and_without_checkpointing():
    out = []
    for ck in (True, False):
        ctx, _, grads = _ctx("alignprop", **{"backprop.checkpointing": ck, "backprop.truncation_mean_steps": 3.0,
                                             "backprop.truncation_std": 1.0})
        m = AlignProp(ctx.cfg.options, ctx).train_epoch(0)
        out.append((grads[0], m["train/backprop_steps"]))
    assert out[0][1] == out[1][1] >= 1
    _assert_same(out[0][0], out[1][0])


def test_alignprop_truncation_follows_the_reference_draw():
    """mihirp1998/AlignProp sd_pipeline.py: b = int(Normal(mean, std).sample()) (or
    int(randint(min, max))) under the global RNG, redrawn while b >= steps or b < 1. The same
    seed through a generator gives the same b, and the steps backpropagated are T - b."""
    def reference(strategy, seed, steps=50):
        torch.manual_seed(seed)
        b = -1
        while b >= steps or b < 1:
            if strategy == "gaussian":
                b = int(torch.distributions.Normal(42, 5).sample().item())
            else:
                b = int(torch.randint(0, 50, (1,)).item())
        return b

    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        assert alignprop_first_step(g, 50, "gaussian", 8.0, 5.0, 1) == reference("gaussian", seed)
        g = torch.Generator().manual_seed(seed)
        assert alignprop_first_step(g, 50, "uniform", 8.0, 5.0, 1) == reference("uniform", seed)
    assert alignprop_first_step(torch.Generator(), 50, "fixed", 8.0, 5.0, 1) == 49  # the reference's 'fixed': 49


@pytest.mark.parametrize("T,mean,std", [(50, 8.0, 5.0), (10, 9.0, 0.5), (4, 3.5, 1.0), (4, 0.5, 2.0), (6, 5.9, 0.3)])
def test_alignprop_acceptance_is_the_frequency_of_valid_draws(T, mean, std):
    """The closed form P(1 <= int(x) < T), x ~ N(T - mean, std), against 20,000 draws of the
    sampler's own Gaussian: the binomial standard error is at most sqrt(0.25/20000) = 0.0035, so
    5 standard errors is 0.018."""
    g = torch.Generator().manual_seed(0)
    x = torch.normal(float(T - mean), float(std), (20_000,), generator=g)
    b = x.to(torch.int64)  # int(): toward zero, as alignprop_first_step
    freq = float(((b >= 1) & (b < T)).double().mean())
    assert abs(freq - alignprop_acceptance(T, "gaussian", mean, std)) < 0.018
    assert alignprop_acceptance(T, "uniform", mean, std) == (T - 1) / T


@pytest.mark.parametrize("mean,std,accepted", [
    (3.5, 0.0, False),     # x = 0.5 on every draw, int(x) = 0: the redraw loop never ended
    (3.9, 0.01, False),    # x near 0.1: P(x >= 1) underflows to 0
    (3.0, 0.0, True),      # x = 1: b = 1, the last 3 of 4 steps
    (0.001, 1e-4, True),   # x just under 4: b = 3, one step
])
def test_alignprop_truncation_that_can_never_be_drawn_is_refused(mean, std, accepted):
    cfg = apply_overrides(Config(), {"model.name": "shapes-sd", "sample.sampler": "ddim", "sample.num_steps": 4,
                                     "train.algorithm": "alignprop", "reward.name": "learned(path=x)",
                                     "backprop.truncation_mean_steps": mean, "backprop.truncation_std": std})
    if not accepted:
        with pytest.raises(ConfigError, match=r"with probability 0 per draw"):
            validate(cfg)
        return
    validate(cfg)
    assert alignprop_first_step(torch.Generator().manual_seed(0), 4, "gaussian", mean, std, 1) == int(4 - mean)


def test_alignprop_draw_is_bounded():
    with pytest.raises(RuntimeError, match="no truncation point in"):
        alignprop_first_step(torch.Generator().manual_seed(0), 4, "gaussian", 3.5, 0.0, 1)


@pytest.mark.parametrize("prediction", ["epsilon", "velocity"])
def test_refl_scores_the_samplers_data_prediction_at_its_one_grad_step(prediction):
    """ReFL (THUDM/ImageReward ReFL.py): steps before m without gradients, one network call at m,
    and the reward of x0_hat = sampler.x0_prediction(m, x_m, output), not of a further step."""
    ctx, policy, grads = _ctx("refl", prediction)
    algo = ReFL(ctx.cfg.options, ctx)
    first, last = refl_window(ctx.cfg)
    assert (first, last) == ((3 * T) // 4, T - 1)
    gen = _gen(0, 0, purpose="truncation")
    m = int(torch.randint(first, last + 1, (), generator=_gen(0, 0, purpose="truncation")))
    gens = [_gen(0, i, purpose="noise") for i in range(B)]
    noise = lambda: _noise(gens)  # noqa: E731
    cond, uncond = ctx.cond_table[torch.tensor([0, 1, 2, 0])], ctx.uncond.repeat(B)
    x0_hat, _, calls, copies = algo.final_latents(noise(), cond, uncond, noise, gen)
    assert calls == 1 and copies == 1 and x0_hat.requires_grad

    gens = [_gen(0, i, purpose="noise") for i in range(B)]
    with torch.no_grad():
        x = _noise(gens)
        for j in range(m):
            out = _guided(policy, x, ctx.sampler.model_time(torch.tensor(j)).expand(B), cond, uncond)
            z = _noise(gens) if ctx.sampler.stochastic[j] else None
            x = ctx.sampler.step(torch.tensor(j), x, out, noise=z).x_prev
    out = _guided(policy, x, ctx.sampler.model_time(torch.tensor(m)).expand(B), cond, uncond)
    torch.testing.assert_close(x0_hat, ctx.sampler.x0_prediction(torch.tensor(m), x, out), rtol=1e-12, atol=1e-12)


def test_ddim_data_prediction_is_diffusers_pred_original_sample():
    """ReFL takes `noise_scheduler.step(noise_pred, t, latents).pred_original_sample` of diffusers'
    DDPMScheduler; the DDIM sampler's x0_prediction is the same number."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                          clip_sample=False)  # SD 1.4's scheduler_config.json
    sched.set_timesteps(40)
    sampler = DDIMSampler(ddim_schedule(40, sched.alphas_cumprod), eta=1.0)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for j in (0, 30, 39):
        t = int(sched.timesteps[j])
        assert t == int(sampler.model_time(torch.tensor(j)))
        ref = sched.step(eps, t, x, generator=g).pred_original_sample
        torch.testing.assert_close(sampler.x0_prediction(torch.tensor(j), x, eps), ref, rtol=1e-5, atol=1e-5)


def test_reward_losses_and_their_gradients():
    r = torch.tensor([1.0, 2.5, -0.5], requires_grad=True)
    loss = reward_loss(r, "relu", 2.0, 1e-3)  # ReFL: mean ReLU(2 - r) * 1e-3
    assert float(loss.detach()) == pytest.approx((1.0 + 0.0 + 2.5) / 3 * 1e-3)
    (g,) = torch.autograd.grad(loss, r)
    torch.testing.assert_close(g, torch.tensor([-1.0, 0.0, -1.0]) * 1e-3 / 3)  # none above the target
    (g,) = torch.autograd.grad(reward_loss(r, "abs", 10.0, 0.01), r)
    torch.testing.assert_close(g, torch.full((3,), -0.01 / 3))
    (g,) = torch.autograd.grad(reward_loss(r, "neg", None, 1.0), r)
    torch.testing.assert_close(g, torch.full((3,), -1 / 3))


@pytest.mark.parametrize("reward", ["shapes-verifier", "jpeg-compressibility", "learned(path=x) + 0.5*shapes-verifier",
                                    "remote:http://localhost:1"])
def test_a_reward_without_gradients_is_refused_at_config_time(reward):
    cfg = apply_overrides(Config(), {"model.name": "shapes-sd", "sample.sampler": "ddim", "train.algorithm": "draft",
                                     "reward.name": reward})
    with pytest.raises(ConfigError, match="has none. Differentiable rewards: aesthetic, clipscore"):
        validate(cfg)


def test_bad_backprop_settings_are_clear_errors():
    base = {"model.name": "shapes-sd", "sample.sampler": "ddim", "reward.name": "learned(path=x)", "sample.num_steps": 10}
    for overrides, match in [({"train.algorithm": "draft", "backprop.steps": 11}, "backprop.steps"),
                             ({"train.algorithm": "draft", "backprop.steps": 2, "backprop.lv_samples": 2}, "K = 1"),
                             ({"train.algorithm": "refl", "backprop.refl_first_step": 10}, "ReFL window"),
                             ({"train.algorithm": "draft", "backprop.loss": "relu"}, "needs backprop.target"),
                             ({"train.algorithm": "alignprop", "backprop.truncation_mean_steps": 12.0}, "truncation_mean_steps")]:
        with pytest.raises(ConfigError, match=match):
            validate(apply_overrides(Config(), {**base, **overrides}))
    validate(apply_overrides(Config(), {**base, "train.algorithm": "refl"}))  # relu with its reference target


def test_config_dataclass_defaults_resolve_to_the_references():
    from ddrl.algorithms.reward_backprop import RewardBackprop  # noqa: F401

    cfg = Config()
    assert ReFL.loss_settings(cfg) == ("relu", 2.0, 1e-3)  # ReFL.py: ReLU(2 - r) * grad_scale 1e-3
    assert AlignProp.loss_settings(cfg) == ("neg", None, 0.01)  # alignprop_trainer.py: loss_coeff 0.01
    assert DRaFT.loss_settings(cfg) == ("neg", None, 1.0)
    assert refl_window(dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, num_steps=40))) == (30, 39)
