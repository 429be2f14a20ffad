"""Training with the DPO family on the tiny models: SDXL for every kind of algorithm, online DPO
resuming exactly with its reference snapshot, the learning-rate warm-up and Adafactor."""


import pytest
import torch
from test_dpo_data import _jsonl
from test_train import _final_weights, _rows, tiny_config

from helpers import train
from ddrl.images.loop import ImageRun


@pytest.mark.parametrize("algorithm", ["ddpo-is", "dpo"])
def test_a_policy_gradient_and_an_offline_algorithm_train_sdxl_and_export_a_lora_its_pipeline_loads(tiny_sdxl_folder, tmp_path,
                                                                                 algorithm):
    from diffusers import StableDiffusionXLPipeline

    extra = {"train.algorithm": algorithm, "run.epochs": 1, "sample.images_per_prompt": 2, "train.batch_size": 2,
             "sample.num_steps": 2}
    if algorithm == "dpo":
        extra |= {"data.pairs": str(_jsonl(tmp_path / "data", n=4)), "data.cache_dir": str(tmp_path / "cache")}
    run = tmp_path / "run"
    cfg = tiny_config(tiny_sdxl_folder, **{"run.output_dir": str(run)} | extra)
    out = train(cfg, run)
    assert out["after"]["heldout"]["reward"] == out["after"]["heldout"]["reward"]  # evaluated, finite
    assert torch.isfinite(torch.tensor(_rows(run)[0]["train/loss"]))
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    pipe.load_lora_weights(str(run / "lora"))
    trained = _final_weights(run)
    lora_b = [v for k, v in trained.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # the update reached the adapter


def test_online_dpo_resumes_exactly_with_its_reference_snapshot(tiny_sd_folder, tmp_path):
    """The reference is refreshed every optimizer step, so the checkpoint must carry the snapshot:
    2 epochs straight equal 1 epoch and a resumed second, bit for bit (Adafactor state included)."""
    extra = {"train.algorithm": "online-dpo", "sample.images_per_prompt": 2, "train.batch_size": 2,
             "train.dpo_ref_update_steps": 1, "train.optimizer": "adafactor", "train.learning_rate": 1e-3,
             "run.epochs": 2}
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(tiny_sd_folder, **extra | {"run.output_dir": str(straight)}), straight)
    train(tiny_config(tiny_sd_folder, **extra | {"run.output_dir": str(split), "run.epochs": 1}), split)
    train(tiny_config(tiny_sd_folder, **extra | {"run.output_dir": str(split)}), split, resume=True)
    a, b = _final_weights(straight), _final_weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = _rows(straight)
    assert rows == _rows(split) and all(r["train/pair_fraction"] > 0 for r in rows)


def test_warm_up_scales_the_rate_linearly_from_zero(tiny_sd_folder, tmp_path):
    """diffusers' constant_with_warmup: optimizer step k (from 0) uses lr * min(1, k / warm-up)."""
    tr = ImageRun(tiny_config(tiny_sd_folder, **{"train.lr_warmup_steps": 4, "train.learning_rate": 1e-3}), tmp_path)
    seen = []
    for _ in range(6):
        for p in tr.params:
            p.grad = torch.ones_like(p)
        tr.optimizer_step()
        seen.append(tr.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], rel=1e-12)


def test_a_dpo_epoch_logs_the_implicit_accuracy_margin_and_mse_gaps(tiny_sd_folder, tmp_path):
    pairs = _jsonl(tmp_path / "data", n=4)
    cfg = tiny_config(tiny_sd_folder, **{"train.algorithm": "dpo", "data.pairs": str(pairs),
                                         "data.cache_dir": str(tmp_path / "cache"), "train.batch_size": 2})
    m = ImageRun(cfg, tmp_path / "run").run_epoch(0)
    for k in ("train/implicit_accuracy", "train/reward_margin", "train/mse_gap_policy", "train/mse_gap_reference",
              "data/pairs_seen"):
        assert k in m
    assert m["data/pairs_seen"] == 4 and "reward/mean" not in m


@pytest.mark.parametrize("folder", ["tiny_sd_folder", "tiny_sdxl_folder", "tiny_sd3_folder"])
def test_before_the_first_step_the_policy_is_its_reference_so_the_loss_is_log_2(folder, request, tmp_path):
    """LoRA B starts at 0, so policy and reference (adapter off) give the same errors: s = 0 exactly,
    L = log 2 and the implicit accuracy 0 (s > 0 is false), for diffusion and flow models alike."""
    import math

    pairs = _jsonl(tmp_path / "data", n=2)
    cfg = tiny_config(request.getfixturevalue(folder), **{
        "train.algorithm": "dpo", "data.pairs": str(pairs), "data.cache_dir": str(tmp_path / "cache"),
        "train.batch_size": 2, "data.pairs_per_epoch": 2, "sample.sampler": "flow-ode" if "sd3" in folder else "ddim"})
    m = ImageRun(cfg, tmp_path / "run").run_epoch(0)
    assert m["train/reward_margin"] == 0.0 and m["train/implicit_accuracy"] == 0.0
    assert m["train/loss"] == pytest.approx(math.log(2), rel=1e-7)
    assert m["train/mse_gap_policy"] == m["train/mse_gap_reference"]


@pytest.mark.parametrize("algorithm", ["online-dpo", "sft"])
def test_online_algorithms_train_a_flow_model_on_velocity_errors(tiny_sd3_folder, tmp_path, algorithm):
    cfg = tiny_config(tiny_sd3_folder, **{"train.algorithm": algorithm, "sample.sampler": "flow-sde",
                                          "sample.images_per_prompt": 2, "train.batch_size": 2})
    tr = ImageRun(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in tr.trainable_state().items()}
    m = tr.run_epoch(0)
    assert torch.isfinite(torch.tensor(m["train/loss"]))
    assert any(not torch.equal(v, tr.trainable_state()[k]) for k, v in before.items())


def test_a_resolution_the_model_cannot_take_or_a_sampler_of_the_other_kind_is_one_clear_error(tiny_sd_folder,
                                                                                             tiny_sd3_folder, tmp_path):
    from ddrl.config import ConfigError
    from ddrl.models.policy import ModelError

    pairs = _jsonl(tmp_path / "data", n=2)
    dpo = {"train.algorithm": "dpo", "data.pairs": str(pairs), "data.cache_dir": str(tmp_path / "cache"),
           "train.batch_size": 2}
    with pytest.raises(ConfigError, match=r"data.resolution 36 must be a multiple of 8 for .*downsampling factor 4"):
        ImageRun(tiny_config(tiny_sd_folder, **dpo | {"data.resolution": 36}), tmp_path / "a")
    with pytest.raises(ModelError, match="sample.sampler ddim does not sample it: use flow-sde"):
        ImageRun(tiny_config(tiny_sd3_folder, **dpo), tmp_path / "b")
