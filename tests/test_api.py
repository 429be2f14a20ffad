"""The Python API: ddrl.load_config, ddrl.train with a custom reward (ddrl's and TRL's signature)
and custom prompts, and the errors a wrong callable gets."""

import json
import random

import pytest
import torch

import ddrl
from ddrl.api import CallableReward
from ddrl.config import ConfigError
from ddrl.rewards import REWARDS, RewardError, RewardOutput

from test_train import tiny_config


def test_load_config_sources(tmp_path):
    assert ddrl.load_config().train.algorithm == "pref-grpo"  # the default preset, shapes-quick
    cfg = ddrl.load_config("shapes-alignment", {"train.learning_rate": 1e-4}, run__epochs=3)
    assert (cfg.train.algorithm, cfg.train.learning_rate, cfg.run.epochs) == ("ddpo-is", 1e-4, 3)
    assert ddrl.load_config({"train": {"batch_size": 2}, "run.seed": 5}).train.batch_size == 2
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  epochs: 7\n")
    assert ddrl.load_config(path).run.epochs == 7
    assert ddrl.load_config(cfg, run__epochs=9).run.epochs == 9
    with pytest.raises(ConfigError, match="did you mean 'train.learning_rate'"):
        ddrl.load_config("shapes-quick", train__learning_rat=1)


def test_train_with_a_trl_reward_and_a_trl_prompt_fn(tiny_sd_folder, tmp_path):
    """A TRL DDPO reward_fn(images, prompts, metadata) -> (rewards, info) and prompt_fn() ->
    (prompt, metadata), passed to ddrl.train as they are. The epoch's logged reward is the mean of
    what the function returned, and it saw only the prompt function's prompts with their metadata."""
    seen = []

    def brightness(images, prompts, metadata):
        assert images.shape[1] == 3 and 0 <= float(images.min()) and float(images.max()) <= 1
        rewards = images.mean(dim=(1, 2, 3)).numpy()
        seen.append((list(prompts), list(metadata), rewards.tolist()))
        return rewards, {"colour": [m["colour"] for m in metadata]}

    def prompt_fn():
        colour = random.choice(["red", "green", "blue"])
        return f"a {colour} circle", {"colour": colour}

    cfg = tiny_config(tiny_sd_folder, **{"run.epochs": 2, "run.save_every": 2})
    result = ddrl.train(cfg, run_dir=tmp_path / "run", reward=brightness, prompts=prompt_fn,
                        eval_prompts=["a red circle"])
    assert set(result) == {"before", "after"}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_calls = [s for s in seen if len(s[0]) == cfg.sample.batch_size][-2:]  # one batch per epoch
    for row, (prompts, metadata, rewards) in zip(rows, train_calls):
        assert row["reward/mean"] == pytest.approx(sum(rewards) / len(rewards), rel=1e-6)
    prompts = {p for s in seen for p in s[0]}
    assert prompts <= {"a red circle", "a green circle", "a blue circle"}
    assert all(m["colour"] in p for s in seen for p, m in zip(s[0], s[1]) if m)
    assert REWARDS["brightness"].description == "a Python callable"


def test_callable_reward_return_forms():
    images, prompts, meta = torch.rand(3, 3, 8, 8), ["a", "b", "c"], [{}, {}, {}]
    forms = [[1, 2, 3], torch.tensor([1.0, 2, 3]), ([1, 2, 3], {"note": ["x", "y", "z"]}),
             RewardOutput(torch.tensor([1.0, 2, 3]))]
    for form in forms:
        out = CallableReward("r", lambda *a, form=form: form)(images, prompts, meta)
        assert out.scores.tolist() == [1, 2, 3] and out.scores.dtype == torch.float32
    assert CallableReward("r", lambda *a: forms[2])(images, prompts, meta).details == {"note": ["x", "y", "z"]}
    with pytest.raises(RewardError, match=r"reward 'r' returned scores of shape \(2,\) for 3 images"):
        CallableReward("r", lambda *a: [1, 2])(images, prompts, meta)


def test_differentiable_callable_reward_keeps_the_graph():
    images = torch.rand(2, 3, 4, 4, requires_grad=True)
    out = CallableReward("r", lambda x, p, m: x.mean(dim=(1, 2, 3)), differentiable=True)(images, ["a", "b"], [{}, {}])
    out.scores.sum().backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, 1 / 48))


def test_register_errors():
    with pytest.raises(ConfigError, match="is built in"):
        ddrl.register_reward("clipscore", lambda *a: [0])
    with pytest.raises(ConfigError, match="expected a callable"):
        ddrl.register_reward("mine", 3)
    with pytest.raises(ConfigError, match="non-empty prompt strings"):
        ddrl.register_prompts("empty", [])
    with pytest.raises(ConfigError, match=r"must return \(prompt, metadata dict\).*'a red circle'"):
        ddrl.register_prompts("bare", lambda: "a red circle")
    from ddrl.config_checks import validate

    with pytest.raises(ConfigError, match="no prompt set 'nope' was registered"):
        validate(ddrl.load_config("shapes-quick", prompts__source="python:nope"))
