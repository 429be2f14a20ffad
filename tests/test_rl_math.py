"""The RL math of DDPO and RWR against closed forms and hand-computed examples."""

import math

import pytest
import torch

from ddrl.advantages import batch_advantages, per_prompt_advantages
from ddrl.losses.ddpo import gaussian_kl_same_std, ppo_clip_loss, score_function_loss
from ddrl.losses.rwr import rwr_sparse_weights, rwr_weights, weighted_denoising_loss


def test_per_prompt_tracking_matches_a_hand_example():
    """buffer_size 3, min_count 3; prompt a has one old reward (2) in its buffer.

    a: buffer [2, 1, 4] holds 3 >= min_count rewards: mean 7/3, population std sqrt(42/27);
       A = (1 - 7/3) / sqrt(42/27) = -1.069045, (4 - 7/3) / sqrt(42/27) = 1.336306.
    b: buffer [5] is short, so batch statistics of [1, 4, 5]: mean 10/3, std sqrt(78/27);
       A = (5 - 10/3) / sqrt(78/27) = 0.980581."""
    adv, state = per_prompt_advantages(["a", "a", "b"], torch.tensor([1.0, 4.0, 5.0]), {"a": [2.0]},
                                       buffer_size=3, min_count=3)
    torch.testing.assert_close(adv, torch.tensor([-1.069045, 1.336306, 0.980581]), rtol=0, atol=2e-6)
    assert state == {"a": [2.0, 1.0, 4.0], "b": [5.0]}
    # FIFO: the next rewards of a push out the oldest; the input state is not mutated.
    _, state2 = per_prompt_advantages(["a"], torch.tensor([7.0]), state, buffer_size=3, min_count=3)
    assert state2["a"] == [1.0, 4.0, 7.0] and state["a"] == [2.0, 1.0, 4.0]


def test_per_prompt_tracking_uses_batch_statistics_until_min_count():
    r = torch.tensor([0.0, 1.0, 2.0, 7.0])
    adv, _ = per_prompt_advantages(["a", "b", "c", "d"], r, {}, buffer_size=16, min_count=2)
    torch.testing.assert_close(adv, batch_advantages(r), rtol=0, atol=1e-5)


def test_batch_advantages_have_mean_zero_and_unit_population_std():
    adv = batch_advantages(torch.tensor([1.0, 2.0, 4.0, 9.0]))
    assert abs(float(adv.mean())) < 1e-6
    assert abs(float(adv.std(unbiased=False)) - 1) < 1e-6
    assert torch.equal(batch_advantages(torch.full((4,), 3.0)), torch.zeros(4))


def test_ppo_at_ratio_one_has_the_score_function_gradient():
    """d/dtheta max(-A rho, -A clip(rho)) at rho = exp(lp - lp_old) = 1 is -A d(lp)."""
    lp = torch.tensor([-1.0, -2.0, 0.5], requires_grad=True)
    adv = torch.tensor([1.5, -0.7, 2.0])
    loss, stats = ppo_clip_loss(lp, lp.detach(), adv, clip_range=1e-4)
    (g_ppo,) = torch.autograd.grad(loss.sum(), lp)
    (g_sf,) = torch.autograd.grad(score_function_loss(lp, adv).sum(), lp)
    assert torch.equal(g_ppo, g_sf) and torch.equal(g_sf, -adv)
    assert stats["ratio"] == 1 and stats["clipfrac"] == 0 and stats["approx_kl"] == 0


def test_ppo_clip_is_pessimistic_outside_the_range():
    """rho = e^0.1 > 1 + eps: with A > 0 the clipped term -A(1+eps) is the max (zero gradient);
    with A < 0 the unclipped -A*rho is the max. approx_kl = 0.1^2 / 2."""
    eps = 0.05
    lp = torch.tensor([0.1, 0.1], requires_grad=True)
    adv = torch.tensor([2.0, -2.0])
    loss, stats = ppo_clip_loss(lp, torch.zeros(2), adv, eps)
    torch.testing.assert_close(loss, torch.tensor([-2.0 * (1 + eps), 2.0 * math.exp(0.1)]))
    (g,) = torch.autograd.grad(loss.sum(), lp)
    torch.testing.assert_close(g, torch.tensor([0.0, 2.0 * math.exp(0.1)]))
    assert stats["clipfrac"] == 1.0
    assert abs(float(stats["approx_kl"]) - 0.005) < 1e-7


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    std = torch.tensor(0.3)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std),
                                                 torch.distributions.Normal(ref, std)).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_kl_same_std(mean, ref, std), expected)


def test_rwr_exponential_weights_are_a_softmax_scaled_to_mean_one():
    r = torch.tensor([0.0, 0.5, 1.0])
    w = rwr_weights(r, beta=5.0)
    z = 1 + math.exp(2.5) + math.exp(5.0)
    torch.testing.assert_close(w, torch.tensor([1 / z, math.exp(2.5) / z, math.exp(5.0) / z]) * 3)
    assert abs(float(w.mean()) - 1) < 1e-6


def test_rwr_sparse_weights_keep_the_top_percentile():
    """Rewards 0..9: the 70th percentile (linear interpolation) is 6.3, so 7, 8, 9 are kept,
    each with weight 10/3 (mean 1 over the batch)."""
    w = rwr_sparse_weights(torch.arange(10.0), 70)
    torch.testing.assert_close(w, torch.tensor([0.0] * 7 + [10 / 3] * 3))
    with pytest.raises(ValueError, match="percentile"):
        rwr_sparse_weights(torch.arange(3.0), 100)


def test_weighted_denoising_loss_is_the_weighted_per_sample_mse():
    pred, eps = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    pred[1] = 3.0
    torch.testing.assert_close(weighted_denoising_loss(pred, eps, torch.tensor([2.0, 0.5])), torch.tensor([2.0, 4.5]))


def test_paired_change_is_the_mean_difference_with_its_standard_error():
    """Differences (after - before) 0.1, 0.3, 0.2, 0.2: mean 0.2, sample variance
    (0.01 + 0.01 + 0 + 0) / 3, s.e. = sqrt(0.02 / 3 / 4) = 0.0408; images without a verdict
    (None) are left out."""
    from ddrl.run.report import paired_change

    mean, se = paired_change([0.5, 0.2, 0.0, 0.4, None], [0.6, 0.5, 0.2, 0.6, 0.9])
    assert mean == pytest.approx(0.2)
    assert se == pytest.approx((0.02 / 12) ** 0.5)
    mean, se = paired_change([0.5], [0.75])  # one image: its difference, and no standard error
    assert mean == 0.25 and se != se
