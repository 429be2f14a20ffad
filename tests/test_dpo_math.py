"""Diffusion-DPO's loss, its forward process and the online pair selection, against closed forms
and transcriptions of the reference code."""

import math
from types import SimpleNamespace

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from ddrl.algorithms import EpochRewards
from ddrl.algorithms.dpo import group_best, group_winners, pair_step
from ddrl.algorithms.forward_process import ForwardProcess
from ddrl.losses.dpo import diffusion_dpo_loss, dpo_margin
from ddrl.models.policy import Cond
from ddrl.sampling import eps_from_prediction


def _errors(seed=0, b=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, generator=g, dtype=torch.float64) for _ in range(4)]


def test_the_loss_is_log_2_when_the_policy_is_the_reference():
    """err_theta = err_ref for winner and loser => Delta = 0, s = 0, L = -log sigmoid(0) = log 2."""
    e_w, e_l, _, _ = _errors()
    loss, s = diffusion_dpo_loss(e_w, e_l, e_w.clone(), e_l.clone(), beta=2500.0)
    assert torch.equal(s, torch.zeros_like(s))
    torch.testing.assert_close(loss, torch.full_like(loss, math.log(2)), rtol=0, atol=1e-15)


def test_swapping_winner_and_loser_negates_the_margin():
    e_w, e_l, r_w, r_l = _errors(1)
    s = dpo_margin(e_w, e_l, r_w, r_l, 7.0)
    torch.testing.assert_close(dpo_margin(e_l, e_w, r_l, r_w, 7.0), -s, rtol=0, atol=0)


def test_the_gradient_lowers_the_winner_error_and_raises_the_loser_error():
    """L = -log sigmoid(-beta Delta), Delta = (e_w - r_w) - (e_l - r_l):
    dL/de_w = beta sigmoid(beta Delta) > 0 and dL/de_l = -beta sigmoid(beta Delta) < 0, so a gradient
    step lowers e_w and raises e_l; at Delta = 0 both have size beta / 2."""
    e_w, e_l, r_w, r_l = (x.requires_grad_() if i < 2 else x for i, x in enumerate(_errors(2)))
    beta = 3.0
    loss, _ = diffusion_dpo_loss(e_w, e_l, r_w, r_l, beta)
    loss.sum().backward()
    delta = (e_w - r_w) - (e_l - r_l)
    expected = beta * torch.sigmoid(beta * delta.detach())
    torch.testing.assert_close(e_w.grad, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(e_l.grad, -expected, rtol=1e-12, atol=0)
    e = torch.zeros(1, requires_grad=True)
    diffusion_dpo_loss(e, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta)[0].sum().backward()
    assert float(e.grad) == pytest.approx(beta / 2)


def salesforce_loss(model_pred, ref_pred, target, beta_dpo):
    """A transcription of SalesforceAIResearch/DiffusionDPO train.py (the DPO branch of the loss):
    predictions of the winners then the losers, chunked in two."""
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    ref_losses = (ref_pred - target).pow(2).mean(dim=[1, 2, 3])
    ref_losses_w, ref_losses_l = ref_losses.chunk(2)
    ref_diff = ref_losses_w - ref_losses_l
    scale_term = -0.5 * beta_dpo
    inside_term = scale_term * (model_diff - ref_diff)
    implicit_acc = (inside_term > 0).sum().float() / inside_term.size(0)
    loss = -1 * F.logsigmoid(inside_term).mean()
    return loss, implicit_acc


def diffusers_loss(model_pred, ref_pred, target, beta_dpo):
    """A transcription of diffusers examples/research_projects/diffusion_dpo/train_diffusion_dpo.py:
    the same errors, scaled by -beta_dpo (no 1/2)."""
    model_losses = F.mse_loss(model_pred, target, reduction="none").mean(dim=list(range(1, len(target.shape))))
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    ref_loss = F.mse_loss(ref_pred, target, reduction="none").mean(dim=list(range(1, len(target.shape))))
    ref_losses_w, ref_losses_l = ref_loss.chunk(2)
    ref_diff = ref_losses_w - ref_losses_l
    logits = ref_diff - model_diff
    return -1 * F.logsigmoid(beta_dpo * logits).mean()


@pytest.mark.parametrize("beta_eff", [2500.0, 50.0])
def test_the_loss_matches_the_references_at_the_same_effective_beta(beta_eff):
    """Salesforce's beta_dpo = 2 beta_eff, diffusers' beta_dpo = beta_eff, and flow_grpo's train.beta
    = 2 beta_eff (its inside term is -0.5 * beta * w_l_diff, as Salesforce's)."""
    g = torch.Generator().manual_seed(3)
    target = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    target = torch.cat([target[:2], target[:2]])  # shared noise: the same target for winner and loser
    model_pred = target + 0.05 * torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    ref_pred = target + 0.05 * torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    err = ((model_pred - target) ** 2).flatten(1).mean(1)
    ref = ((ref_pred - target) ** 2).flatten(1).mean(1)
    loss, s = diffusion_dpo_loss(err[:2], err[2:], ref[:2], ref[2:], beta_eff)
    sf_loss, sf_acc = salesforce_loss(model_pred, ref_pred, target, 2 * beta_eff)
    torch.testing.assert_close(loss.mean(), sf_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close((s > 0).double().mean(), sf_acc.double(), rtol=0, atol=0)
    torch.testing.assert_close(loss.mean(), diffusers_loss(model_pred, ref_pred, target, beta_eff), rtol=1e-12, atol=0)


class _EpsPolicy:
    """A stand-in diffusion policy: a linear map on the latent, epsilon or v prediction."""

    def __init__(self, kind="epsilon", seed=0):
        g = torch.Generator().manual_seed(seed)
        self.prediction, self.scheduler_prediction = "epsilon", kind
        # float32 values held in float64, so the forward process's fp32 schedule is this one exactly
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float().double()
        self.net = torch.nn.Linear(8, 8, dtype=torch.float64)
        with torch.no_grad():
            self.net.weight.copy_(torch.eye(8, dtype=torch.float64) + 0.1 * torch.randn(8, 8, generator=g, dtype=torch.float64))
            self.net.bias.copy_(0.1 * torch.randn(8, generator=g, dtype=torch.float64))  # not the global RNG's
        self.device = torch.device("cpu")

    def native(self, x_t, t):
        return self.net(x_t.flatten(1)).view_as(x_t)

    def predict(self, x_t, t, cond):
        ab = self.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        return eps_from_prediction(self.native(x_t, t), x_t, ab, self.scheduler_prediction)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_the_error_is_that_of_the_native_target(kind):
    """policy.predict converts v or x0 to eps. eps_hat - eps = sqrt(ab)(v_hat - v) and
    = -sqrt(ab / (1 - ab))(x0_hat - x0), so ForwardProcess.error must equal the plain MSE of the native
    prediction against v = sqrt(ab) eps - sqrt(1 - ab) x0, or against x0."""
    policy = _EpsPolicy(kind)
    fp = ForwardProcess(policy)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(5, 2, 2, 2, generator=g, dtype=torch.float64)
    gens = [torch.Generator().manual_seed(i) for i in range(5)]
    level, noise = fp.draw((2, 2, 2), gens)
    x_t, target = fp.noised(x0, level, noise.double())
    err = fp.error(policy.predict(x_t, level, None), target, level).double()
    ab = policy.alphas_cumprod[level].view(-1, 1, 1, 1)
    native_target = ab.sqrt() * noise - (1 - ab).sqrt() * x0 if kind == "v_prediction" else x0
    expected = ((policy.native(x_t, level) - native_target) ** 2).flatten(1).mean(1)
    # fp.error rounds pred and target to fp32 (unit roundoff u), subtracts, squares, averages n
    # elements and multiplies by the native factor. With d = pred - target and a = |pred| + |target|,
    # fl(d) = d + e with |e| <= u (a + |d|); squaring adds 2|d||e| + e^2 + u d^2; the fp32 mean of n
    # terms adds (n - 1) u mean(d^2); the factor's and the product's roundings add 2 u of the result.
    u = 2.0 ** -24
    pred = policy.predict(x_t, level, None)
    d, mag = pred - target, pred.abs() + target.abs()
    e = u * (mag + d.abs())
    per_element = (2 * d.abs() * e + e ** 2 + u * d ** 2).flatten(1).mean(1)
    n = d[0].numel()
    factor = 1 / ab.flatten() if kind == "v_prediction" else (1 - ab.flatten()) / ab.flatten()
    bound = factor * (per_element + (n - 1) * u * (d ** 2).flatten(1).mean(1)) + 2 * u * expected
    assert ((err - expected).abs() <= bound).all(), ((err - expected).abs(), bound)


def test_flow_noise_levels_follow_the_references_logit_normal_draw():
    """flow_grpo: u = compute_density_for_timestep_sampling('logit_normal', mean 0, std 1) =
    sigmoid(N(0, 1)); sigma = scheduler.sigmas[floor(1000 u)] of FlowMatchEulerDiscreteScheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    fp = ForwardProcess(SimpleNamespace(prediction="velocity", pipe=SimpleNamespace(scheduler=sched)))
    gens = [torch.Generator().manual_seed(i) for i in range(64)]
    level, _ = fp.draw((1,), gens)
    u = torch.sigmoid(torch.stack([torch.randn((), generator=torch.Generator().manual_seed(i)) for i in range(64)]))
    torch.testing.assert_close(level, sched.sigmas[(u * 1000).long()].float(), rtol=0, atol=1e-6)
    x0, noise = torch.randn(64, 1), torch.randn(64, 1)
    x_t, target = fp.noised(x0, level, noise)
    torch.testing.assert_close(x_t, (1 - level[:, None]) * x0 + level[:, None] * noise)
    torch.testing.assert_close(target, noise - x0)


def test_a_dpo_step_lowers_the_winner_error_relative_to_the_loser():
    """One SGD step on pair_step with the same t and noise: (e_w - e_l) - (r_w - r_l) falls below 0."""
    policy = _EpsPolicy("epsilon", seed=5)
    ref_net = torch.nn.Linear(8, 8, dtype=torch.float64)
    ref_net.load_state_dict(policy.net.state_dict())
    fp = ForwardProcess(policy)
    g = torch.Generator().manual_seed(6)
    x0_w, x0_l = torch.randn(4, 2, 2, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, 2, 2, generator=g, dtype=torch.float64)

    def gens():
        return [torch.Generator().manual_seed(10 + i) for i in range(4)]

    import contextlib

    @contextlib.contextmanager
    def reference():
        net, policy.net = policy.net, ref_net
        try:
            yield
        finally:
            policy.net = net

    ctx = SimpleNamespace(policy=policy, autocast=contextlib.nullcontext)
    cond = Cond(torch.zeros(4, 1, 1))
    loss, first = pair_step(ctx, fp, x0_w, x0_l, cond, gens(), reference, beta=10.0)
    loss.backward()
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-6) and first["train/reward_margin"] == 0
    with torch.no_grad():
        for p in policy.net.parameters():
            p -= 0.05 * p.grad
            p.grad = None
    _, after = pair_step(ctx, fp, x0_w, x0_l, cond, gens(), reference, beta=10.0)
    assert after["train/mse_gap_policy"] < after["train/mse_gap_reference"]
    assert after["train/reward_margin"] > 0 and after["train/loss"] < math.log(2)


def _batch(rewards, group_size):
    r = torch.tensor(rewards)
    return EpochRewards(r, torch.zeros(len(r), dtype=torch.long), [""] * len(r), torch.arange(len(r)) // group_size)


def test_online_pairs_are_each_groups_best_and_worst_and_ties_carry_none():
    out = group_winners(_batch([0.2, 0.9, 0.5, 0.1, 1.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.7, 0.7], 4), "drop")
    assert out.tolist() == [0, 1, 0, -1, 0, 0, 0, 0, -1, 0, 1, 0]  # first argmax / argmin on ties within a group
    arbitrary = group_winners(_batch([1.0, 1.0, 1.0, 1.0], 4), "arbitrary")
    assert arbitrary.tolist() == [-1, 1, 0, 0]  # flow_grpo: min_idx 0, max_idx 1


def flow_grpo_stat_tracker(prompts, rewards, kind):
    """A transcription of flow_grpo flow_grpo/stat_tracking.py PerPromptStatTracker.update, its
    'dpo' and 'sft' branches (the per-prompt advantages the DPO and SFT scripts train on)."""
    prompts = np.array(prompts)
    rewards = np.array(rewards, dtype=np.float64)
    advantages = np.empty_like(rewards) * 0.0
    for prompt in np.unique(prompts):
        prompt_rewards = rewards[prompts == prompt]
        if kind == "sft":
            advantages[prompts == prompt] = (torch.tensor(prompt_rewards) == torch.max(torch.tensor(prompt_rewards))).float().numpy()
        elif kind == "dpo":
            prompt_advantages = torch.tensor(prompt_rewards)
            max_idx = torch.argmax(prompt_advantages)
            min_idx = torch.argmin(prompt_advantages)
            if max_idx == min_idx:
                min_idx = 0
                max_idx = 1
            result = torch.zeros_like(prompt_advantages).float()
            result[max_idx] = 1.0
            result[min_idx] = -1.0
            advantages[prompts == prompt] = result.numpy()
    return advantages


@pytest.mark.parametrize("seed", range(4))
def test_online_pairs_and_sft_winners_match_flow_grpos_stat_tracker(seed):
    """On groups of 4 with ties (rewards in {0, 0.5, 1}, as a verifier gives): the winners equal
    the 'sft' branch everywhere, the pairs the 'dpo' branch with tied groups paired arbitrarily,
    and with tied groups dropped the same except that those groups carry nothing."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (24,), generator=g).float() / 2
    rewards[4:8] = 0.5  # one group all tied
    groups = torch.arange(24) // 4
    batch = EpochRewards(rewards, groups, [f"p{int(i)}" for i in groups], groups)
    prompts = [f"p{int(i)}" for i in groups]
    assert np.array_equal(group_best(batch).numpy(), flow_grpo_stat_tracker(prompts, rewards.tolist(), "sft"))
    reference = flow_grpo_stat_tracker(prompts, rewards.tolist(), "dpo")
    assert np.array_equal(group_winners(batch, "arbitrary").numpy(), reference)
    tied = torch.tensor([bool((rewards[groups == k] == rewards[groups == k][0]).all()) for k in groups.tolist()])
    dropped = group_winners(batch, "drop").numpy()
    assert np.array_equal(dropped[~tied.numpy()], reference[~tied.numpy()]) and not dropped[tied.numpy()].any()


def test_diffusion_noising_is_the_schedulers_add_noise():
    """SalesforceAIResearch/DiffusionDPO train.py noises with noise_scheduler.add_noise(latents, noise, t)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    fp = ForwardProcess(SimpleNamespace(prediction="epsilon", alphas_cumprod=sched.alphas_cumprod))
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    level, noise = fp.draw((4, 8, 8), gens)
    x0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    x_t, target = fp.noised(x0, level, noise)
    torch.testing.assert_close(x_t, sched.add_noise(x0, noise, level), rtol=0, atol=1e-6)
    assert torch.equal(target, noise) and level.min() >= 0 and level.max() < 1000
