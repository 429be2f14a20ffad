"""Bradley-Terry reward-model training: the loss against its closed form, a taste learned from
pairs and recovered on held-out prompts, and the saved model served by the registry."""

import json
import math

import numpy as np
import pytest
import torch

from ddrl.rewards import RewardError, get_reward, score
from ddrl.rewards.learned import bradley_terry_loss, random_shift, train_reward_model
from ddrl.worlds.shapes import render, split


def test_bradley_terry_loss_is_minus_log_sigmoid_of_the_margin():
    """-log sigmoid(d) = log(1 + e^-d): log 2 at d = 0, about e^-d for large d, about -d for very negative d."""
    d = torch.tensor([0.0, 2.0, -3.0, 40.0, -40.0])
    loss = torch.stack([bradley_terry_loss(x[None], torch.zeros(1)) for x in d])
    want = torch.tensor([math.log(2), math.log1p(math.exp(-2)), math.log1p(math.exp(3)), math.exp(-40), 40.0])
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=0)


def test_random_shift_translates_without_changing_content():
    img = torch.zeros(1, 3, 12, 12)
    img[:, :, 5:7, 5:7] = 1.0
    out = random_shift(img.repeat(50, 1, 1, 1), 3, torch.Generator().manual_seed(0))
    assert torch.equal(out.sum(dim=(1, 2, 3)), img.sum().repeat(50))  # the square stays whole (edges are background)
    assert len({tuple(o[0].nonzero()[0].tolist()) for o in out}) > 10  # and lands in many places


def _saturation_pairs(folder, prompts, per_prompt, seed):
    """Rendered scenes at several colour strengths; the more saturated image of a pair is chosen."""
    rows = []
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, p in enumerate(prompts):
        base = np.asarray(render(p, seed=seed + i)).astype(np.float32)
        grey = base.mean(-1, keepdims=True)
        strengths = rng.uniform(0.2, 1.0, per_prompt)
        names = []
        for k, s in enumerate(strengths):
            name = f"img/{seed}_{i}_{k}.png"
            from PIL import Image
            Image.fromarray((grey + s * (base - grey)).round().astype(np.uint8)).save(folder / name)
            names.append(name)
        for a in range(per_prompt):
            for b in range(a + 1, per_prompt):
                if abs(strengths[a] - strengths[b]) > 0.05:
                    w, l_ = (a, b) if strengths[a] > strengths[b] else (b, a)
                    rows.append({"prompt": p, "chosen": names[w], "rejected": names[l_]})
    path = folder / f"pairs_{seed}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_colour_taste_is_learned_and_recovered_on_held_out_prompts(tmp_path):
    train_file = _saturation_pairs(tmp_path, split("train")[:40], 5, seed=0)
    held_file = _saturation_pairs(tmp_path, split("heldout")[:20], 5, seed=1000)
    m = train_reward_model(train_file, tmp_path / "rm", heldout=[held_file], epochs=4, progress=False)
    accs = [r["pairs_1000_accuracy"] for r in m["history"]]
    assert m["pairs_1000_accuracy"] >= 0.9, accs  # chance is 0.5
    # the registry's reward orders the held-out pairs as training measured
    reward = get_reward(f"learned(path={tmp_path / 'rm'})")
    rows = [json.loads(x) for x in held_file.read_text().splitlines()]
    from ddrl.rewards.learned import load_images
    chosen = load_images([str(tmp_path / r["chosen"]) for r in rows]).float() / 255
    rejected = load_images([str(tmp_path / r["rejected"]) for r in rows]).float() / 255
    prompts = [r["prompt"] for r in rows]
    wins = (score(reward, chosen, prompts)[0] > score(reward, rejected, prompts)[0]).float().mean()
    assert float(wins) == pytest.approx(m["pairs_1000_accuracy"], abs=1e-6)


def test_bad_pair_files_are_clear_errors(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a circle", "chosen": "x.png"}\n')
    with pytest.raises(RewardError, match="p.jsonl:1: rejected must be non-empty text, got None"):
        train_reward_model(tmp_path / "p.jsonl", tmp_path / "out", progress=False)
    (tmp_path / "q.jsonl").write_text('{"prompt": "a circle", "chosen": "x.png", "rejected": "y.png"}\n')
    with pytest.raises(RewardError, match="q.jsonl:1: no image at"):
        train_reward_model(tmp_path / "q.jsonl", tmp_path / "out", progress=False)
    with pytest.raises(RewardError, match="not a `ddrl reward-train` output"):
        get_reward(f"learned(path={tmp_path})")


def test_a_damaged_reward_model_folder_is_one_clear_error(tmp_path):
    from ddrl.rewards.learned import CONFIG, WEIGHTS

    (tmp_path / CONFIG).write_text('{"text_encoder": "shapes-sd"}')
    (tmp_path / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(RewardError, match="damaged or foreign reward model"):
        get_reward(f"learned(path={tmp_path})")
