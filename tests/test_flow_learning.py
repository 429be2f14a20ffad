"""Each flow-matching preset on the built-in world raises its reward in a short run.

A short run keeps the preset's algorithm, sampler, guidance and trained steps (the first 3) and
shrinks the rest: one training prompt on which the base `shapes-flow` scores about 0.4 (partial
credit), 2 groups of 16 images per epoch, 24 epochs of 4 rollout steps, and 3 times the preset's
learning rate (about a minute each on 2 CPU cores). The reward, the verifier's partial credit, is
measured before and after with the ODE from the same 256 seeds, so its change is a paired
difference. The change must exceed three of its standard errors: a change that large has a
probability under 0.2% when training does nothing. (The presets' full runs and their held-out
results are in docs/flow.md.)
"""

import pytest

from ddrl.config import apply_overrides
from ddrl.presets import preset_config
from helpers import train
from ddrl.run.report import paired_change

pytestmark = pytest.mark.learning

PROMPT = "a purple square and a red triangle"


def _short_run(tmp_path, preset: str) -> tuple[float, float]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT)
    cfg = preset_config(preset)
    cfg = apply_overrides(cfg, {
        "prompts.source": f"file:{prompts}", "prompts.eval_source": f"file:{prompts}", "sample.num_steps": 4,
        "eval.num_steps": 4, "sample.batch_size": 32, "sample.num_batches_per_epoch": 1,
        "sample.images_per_prompt": 16, "train.learning_rate": 3 * cfg.learning_rate, "run.epochs": 24,
        "eval.images_per_prompt": 256, "eval.train_images_per_prompt": 1, "eval.grid_every": 0,
        "run.output_dir": str(tmp_path / "run")})
    result = train(cfg, tmp_path / "run")
    return paired_change(result["before"]["per_image"]["heldout"]["reward"],
                         result["after"]["per_image"]["heldout"]["reward"])


@pytest.mark.parametrize("preset", [  # CPS and Pref-GRPO train with Flow-GRPO's update: slow
    "shapes-flow-grpo", pytest.param("shapes-flow-grpo-cps", marks=pytest.mark.slow),
    pytest.param("shapes-pref-grpo", marks=pytest.mark.slow), "shapes-nft"])
def test_flow_preset_raises_the_verifier_reward_in_a_short_run(tmp_path, preset):
    change, se = _short_run(tmp_path, preset)
    assert change > 3 * se, (change, se)
