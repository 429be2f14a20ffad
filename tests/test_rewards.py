"""The rewards DDPO needs: JPEG (in)compressibility as the DDPO paper defines it, the shapes
verifier, and the checks that stop bad input or bad output with the reward's name."""

import io

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
