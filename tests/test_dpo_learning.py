"""Offline Diffusion-DPO learns the hidden preference that labelled its pairs.

`ddrl reward-pairs` labels pairs of shapes-sd images by a preference the model never sees written
down (verifier correctness + 0.5 x saturation). DPO on those pairs must make the model's images on
the held-out prompts, drawn from the same seeds as the base model's, win against the base's under
that preference. A model that learned nothing wins about 0.5 (its images equal the base's: ties
count one half); the test asks for 0.6, more than 3 standard errors above 0.5 at its size.
"""

import pytest

from ddrl.config import Config, apply_overrides
from ddrl.rewards.shapes_pairs import against_base, make_shapes_pairs
from ddrl.images.loop import ImageRun
from ddrl.worlds.shapes import split


@pytest.mark.learning
def test_offline_dpo_wins_against_the_base_under_the_hidden_preference(tmp_path):
    counts = make_shapes_pairs(tmp_path / "pairs", images_per_prompt=6, heldout_images_per_prompt=0,
                               max_prompts=40, seed=0, progress=False)
    cfg = apply_overrides(Config(), {
        "model.name": "shapes-sd", "train.algorithm": "dpo", "data.pairs": str(tmp_path / "pairs" / "train.jsonl"),
        "data.cache_dir": str(tmp_path / "cache"), "data.hflip": False, "data.pairs_per_epoch": 256,
        "train.batch_size": 16, "train.learning_rate": 1e-3, "run.epochs": 4, "sample.num_steps": 10,
        "eval.max_prompts": 1, "eval.images_per_prompt": 1, "eval.train_images_per_prompt": 0,
        "eval.grid_every": 0, "run.output_dir": str(tmp_path / "run")})
    tr = ImageRun(cfg, tmp_path / "run")
    tr.run()
    prompts = [p for p in split("heldout") for _ in range(2)]
    r = against_base(tr.policy, prompts, [100_000 + i for i in range(len(prompts))], num_steps=10)
    msg = (f"{counts['train']} pairs; held-out win rate {r['win_rate']:.3f} ± {r['win_rate_se']:.3f} over {r['n']} images; "
           f"saturation {r['saturation_base']:.3f} -> {r['saturation_trained']:.3f}, "
           f"accuracy {r['accuracy_base']:.3f} -> {r['accuracy_trained']:.3f}")
    print(msg)
    assert r["win_rate"] >= 0.6, msg
