"""The rewards DDPO needs: JPEG (in)compressibility as the DDPO paper defines it, the shapes
verifier, and the checks that stop bad input or bad output with the reward's name."""

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ddrl.rewards import REWARDS, RewardError, RewardOutput, get_reward, score
from ddrl.worlds.shapes import render


def test_jpeg_rewards_are_the_quality_95_size_in_kilobytes():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    images[1] = 0.5  # flat: compresses far better than noise
    sizes = []
    for img in images:
        buf = io.BytesIO()
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        sizes.append(len(buf.getvalue()) / 1000)
    inc, _ = score(get_reward("jpeg-incompressibility"), images, ["", ""])
    comp, details = score(get_reward("jpeg-compressibility"), images, ["", ""])
    torch.testing.assert_close(inc, torch.tensor(sizes))
    torch.testing.assert_close(comp, -torch.tensor(sizes))
    assert details["jpeg_kb"] == pytest.approx(sizes)
    assert comp[1] > comp[0]


def test_verifier_rewards_score_ground_truth_renders_as_correct():
    prompts = ["a red circle", "two squares", "a triangle left of a circle"]
    images = torch.stack([torch.from_numpy(np.asarray(render(p, seed=3)).copy()).permute(2, 0, 1).float() / 255 for p in prompts])
    acc, details = score(get_reward("shapes-accuracy"), images, prompts)
    partial, _ = score(get_reward("shapes-verifier"), images, prompts)
    assert acc.tolist() == [1.0, 1.0, 1.0] and partial.tolist() == [1.0, 1.0, 1.0]
    wrong, _ = score(get_reward("shapes-accuracy"), images[:1], ["a blue square"])
    assert wrong.tolist() == [0.0]
    with pytest.raises(RewardError, match="shapes-world prompts only"):
        score(get_reward("shapes-verifier"), images[:1], ["a photo of a cat"])


@pytest.mark.parametrize("images, message", [
    (torch.rand(2, 48, 48, 3), r"shape \(B, 3, H, W\)"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "float images"),
    (torch.rand(0, 3, 8, 8), "empty batch"),
    (torch.rand(2, 3, 8, 8) * 2, r"in \[0, 1\]"),
])
def test_bad_images_are_refused_naming_the_reward(images, message):
    with pytest.raises(RewardError, match=rf"reward 'jpeg-compressibility': .*{message}"):
        score(get_reward("jpeg-compressibility"), images, [""] * len(images))


@pytest.mark.parametrize("scores, message", [
    (torch.tensor([1.0]), r"scores of shape \(1,\) for a batch of 2"),
    (torch.tensor([1.0, float("nan")]), "non-finite scores at batch positions \\[1\\]"),
])
def test_bad_reward_output_is_an_error_naming_the_reward(scores, message):
    class Bad:
        name, differentiable = "bad", False

        def __call__(self, images, prompts, metadata):
            return RewardOutput(scores)

    with pytest.raises(RewardError, match=rf"reward 'bad' returned {message}"):
        score(Bad(), torch.rand(2, 3, 8, 8), ["", ""])


def test_unknown_reward_suggests_the_closest_name():
    with pytest.raises(RewardError, match="did you mean 'shapes-verifier'"):
        get_reward("shape-verifier")
    assert {"jpeg-compressibility", "jpeg-incompressibility", "shapes-verifier", "shapes-accuracy"} <= set(REWARDS)


def test_reward_specs_parse_names_options_sums_and_routes():
    from ddrl.rewards.spec import Atom, Route, Sum, parse

    assert parse("aesthetic") == Atom("aesthetic")
    assert parse("pickscore(model=/m/p, batch_size=8, half=true, w=2.5)") == Atom(
        "pickscore", {"model": "/m/p", "batch_size": 8, "half": True, "w": 2.5})
    assert parse("remote:http://10.0.0.2:8100(timeout=60)") == Atom("remote:http://10.0.0.2:8100", {"timeout": 60})
    assert parse("vlm-judge(question='Is \"{prompt}\" shown, really?')").options == {
        "question": 'Is "{prompt}" shown, really?'}
    assert parse("a + -0.5*b + 2*c") == Sum(((1.0, Atom("a")), (-0.5, Atom("b")), (2.0, Atom("c"))))
    assert parse("route[task](geneval=a, *=b + 0.1*c)") == Route(
        "task", (("geneval", Atom("a")), ("*", Sum(((1.0, Atom("b")), (0.1, Atom("c")))))))
    for bad, where in [("a +", "a reward name"), ("a(b=)", "a value for 'b'"), ("x*a", "a number before"),
                       ("a b", "'+' or the end"), ("route[k](a=b", "')'"), ("", "empty")]:
        with pytest.raises(RewardError, match=re.escape(where)):
            parse(bad)


class _Const:
    differentiable, device = True, "cpu"

    def __init__(self, name, value):
        self.name, self.value = name, value

    def __call__(self, images, prompts, metadata):
        return RewardOutput(self.value * images.mean(dim=(1, 2, 3)), {"tag": [self.name] * len(images)})


def test_weighted_sum_is_the_sum_of_weighted_components():
    from ddrl.rewards.compose import WeightedSum

    images = torch.rand(4, 3, 8, 8, requires_grad=True)
    r = WeightedSum([(1.0, _Const("a", 1.0)), (-0.5, _Const("b", 3.0))])
    out = r(images, ["p"] * 4, [{}] * 4)
    m = images.mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.scores, m - 1.5 * m)
    assert out.details["component/b"] == pytest.approx((3 * m).tolist()) and out.details["b/tag"] == ["b"] * 4
    out.scores.sum().backward()  # differentiable parts make a differentiable sum
    assert images.grad.abs().sum() > 0
    with pytest.raises(RewardError, match="names a reward twice"):
        WeightedSum([(1.0, _Const("a", 1.0)), (2.0, _Const("a", 1.0))])


def test_routing_scores_each_sample_with_its_own_reward():
    from ddrl.rewards.compose import Routed

    images = torch.rand(5, 3, 8, 8)
    m = images.mean(dim=(1, 2, 3))
    meta = [{"task": "x"}, {"task": "y"}, {}, {"task": "x"}, {"task": "z"}]
    r = Routed("task", {"x": _Const("ten", 10.0), "y": _Const("one", 1.0)}, default=_Const("zero", 0.0))
    out = r(images, ["p"] * 5, meta)
    torch.testing.assert_close(out.scores, torch.stack([10 * m[0], m[1], 0 * m[2], 10 * m[3], 0 * m[4]]))
    assert out.details["route"] == ["x", "y", "*", "x", "*"]
    assert out.details["component/ten"] == [pytest.approx(10 * m[0].item()), None, None,
                                            pytest.approx(10 * m[3].item()), None]
    with pytest.raises(RewardError, match="task='z', which has no route"):
        Routed("task", {"x": _Const("ten", 10.0)})(images, ["p"] * 5, meta[:1] * 4 + meta[4:])


def test_pil_lists_are_accepted_and_checked():
    from ddrl.grid import to_pil

    images = torch.rand(2, 3, 16, 16)
    reward = get_reward("jpeg-incompressibility")
    torch.testing.assert_close(score(reward, to_pil(images), ["a", "b"])[0],
                               score(reward, (torch.tensor(np.array(to_pil(images))).permute(0, 3, 1, 2) / 255),
                                     ["a", "b"])[0])
    mixed = to_pil(images[:1]) + to_pil(torch.rand(1, 3, 8, 8))
    with pytest.raises(RewardError, match="different sizes"):
        score(reward, mixed, ["a", "b"])
    with pytest.raises(RewardError, match="empty batch"):
        score(reward, [], [])


def test_a_pointwise_reward_becomes_a_bradley_terry_preference():
    """P(a > b) = sigmoid((s_a - s_b) / T); so P(a > b) + P(b > a) = 1 and P(a > a) = 1/2."""
    from ddrl.rewards.pairwise import as_pairwise

    a, b = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    jpeg = get_reward("jpeg-incompressibility")
    pref = as_pairwise(jpeg, temperature=0.5)
    s_a, s_b = score(jpeg, a, ["p"] * 3)[0], score(jpeg, b, ["p"] * 3)[0]
    torch.testing.assert_close(pref.compare(a, b, ["p"] * 3), torch.sigmoid((s_a - s_b) / 0.5))
    torch.testing.assert_close(pref.compare(a, b, ["p"] * 3) + pref.compare(b, a, ["p"] * 3), torch.ones(3))
    torch.testing.assert_close(pref.compare(a, a, ["p"] * 3), torch.full((3,), 0.5))
