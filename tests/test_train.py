"""The training loop end to end on tiny models: exact on-policy re-scoring, the single-pass
update, resume after Ctrl-C or kill -9, LoRA export, and errors before any work."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddrl.algorithms.ddpo import DDPO
from ddrl.config import Config, ConfigError, apply_overrides
from ddrl.config_checks import validate
from ddrl.rewards import REWARDS, RewardError, RewardOutput, RewardSpec
from helpers import kill_9_once_it_exists, train
from ddrl.images.loop import ImageRun



def tiny_config(folder, **overrides) -> Config:
    base = {"model.name": str(folder), "reward.name": "jpeg-compressibility", "train.advantages": "batch",
            "sample.num_steps": 4, "sample.batch_size": 4, "sample.num_batches_per_epoch": 1,
            "train.batch_size": 4, "run.epochs": 3, "eval.max_prompts": 2, "eval.images_per_prompt": 1,
            "eval.grid_every": 0, "eval.grid_size": 2}
    return apply_overrides(Config(), base | overrides)


def test_first_minibatch_rescoring_is_exactly_on_policy(tiny_sd_folder, tmp_path):
    """Before any update, re-scoring the stored steps gives the sampled log-probs bit for bit,
    so the PPO ratio is exactly 1 and nothing is clipped (training minibatch = sampling batch)."""
    cfg = tiny_config(tiny_sd_folder, **{"sample.num_batches_per_epoch": 2})
    assert not DDPO.keeps_sampling_graph(cfg)  # two optimizer steps per epoch: the recompute path
    m = ImageRun(cfg, tmp_path).run_epoch(0)
    assert m["train/logprob_gap"] == 0.0
    assert m["train/clipfrac"] > 0  # the second minibatch is off-policy after the first step


def test_single_pass_update_equals_the_recompute_update(tiny_sd_folder, tmp_path, epoch_gradient):
    """With one optimizer step per epoch the update is on-policy, and keeping the sampling graph
    must give the gradient of re-scoring every step (equal up to float reassociation)."""
    grads = {}
    for single in (True, False):
        cfg = tiny_config(tiny_sd_folder, **{"train.single_pass": single, "reward.name": "jpeg-incompressibility"})
        assert DDPO.keeps_sampling_graph(cfg) == single
        grads[single], _ = epoch_gradient(ImageRun(cfg, tmp_path / str(single)))
    scale = max(float(g.abs().max()) for g in grads[False])
    assert scale > 0
    for a, b in zip(grads[True], grads[False]):  # fp32 sums in another order: ~1e-7 relative noise
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    last = sorted((run_dir / "checkpoints").glob("epoch_*"))[-1]
    return load_file(str(last / "trainable.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_sd_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    cfg = tiny_config(tiny_sd_folder, **{"sample.images_per_prompt": 2, "train.advantages": "per-prompt",
                                         "train.min_count": 2, "train.buffer_size": 4,
                                         "run.output_dir": str(run)})
    result = train(cfg, run)
    return cfg, run, result


def test_a_run_leaves_metrics_checkpoints_lora_grids_and_a_report(uninterrupted):
    cfg, run, result = uninterrupted
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for key in ("reward/mean", "reward/std", "reward/jpeg-compressibility/mean", "train/approx_kl",
                "train/clipfrac", "train/loss", "train/logprob_gap", "prompts/unique"):
        assert key in rows[0], key
    assert (run / "config.yaml").is_file() and (run / "tensorboard").is_dir()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["epoch_000002", "epoch_000003"]
    assert (run / "checkpoints/epoch_000003/pytorch_lora_weights.safetensors").is_file()
    for f in ("report.md", "report.html", "reward_curve.png", "grids/before.png", "grids/after.png",
              "lora/pytorch_lora_weights.safetensors"):
        assert (run / f).is_file(), f
    assert set(result["before"]) == {"heldout", "train", "per_image", "epoch"}
    n = result["before"]["heldout"]["n"]
    assert len(result["before"]["per_image"]["heldout"]["reward"]) == n
    per_image_mean = sum(result["after"]["per_image"]["heldout"]["reward"]) / n
    assert per_image_mean == pytest.approx(result["after"]["heldout"]["reward"], abs=1e-5)
    assert "| heldout | reward |" in (run / "report.md").read_text()
    assert "±" in (run / "report.md").read_text()  # the paired standard error of the change


def test_lora_loads_into_the_diffusers_pipeline_and_reproduces_the_trained_unet(uninterrupted, tiny_sd_folder):
    from diffusers import StableDiffusionPipeline

    cfg, run, _ = uninterrupted
    tr = ImageRun(cfg, run)
    tr.load_latest()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder, safety_checker=None)
    pipe.load_lora_weights(str(run / "lora"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 12, 12, generator=g)
    t = torch.tensor([500, 20])
    emb = tr.cond_table[:2].embeds
    with torch.no_grad():
        ours = tr.policy.denoiser(x, t, emb).sample
        theirs = pipe.unet(x, t, emb).sample
        base = StableDiffusionPipeline.from_pretrained(tiny_sd_folder, safety_checker=None).unet(x, t, emb).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, ours, atol=1e-6)  # the LoRA changed the model


def test_several_steps_per_forward_give_the_same_update(tiny_sd_folder, tmp_path, epoch_gradient):
    """train.timesteps_per_forward batches trained steps into one network call: the loss terms
    and their 1/(rows x steps) scale are the same, so the gradient is (up to float reassociation)."""
    grads = {}
    for k in (1, 2):
        cfg = tiny_config(tiny_sd_folder, **{"train.single_pass": False, "train.timesteps_per_forward": k,
                                             "reward.name": "jpeg-incompressibility"})
        grads[k], _ = epoch_gradient(ImageRun(cfg, tmp_path / str(k)))
    scale = max(float(g.abs().max()) for g in grads[1])
    assert scale > 0
    for a, b in zip(grads[1], grads[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_ctrl_c_checkpoints_and_resume_reproduces_the_uninterrupted_run(uninterrupted, tiny_sd_folder, tmp_path,
                                                                       monkeypatch):
    """Ctrl-C during epoch 2 finishes it and saves; a half-written later checkpoint and a torn
    metrics line (as kill -9 leaves them) are ignored; resuming gives the same weights and
    metrics as the run that was never stopped."""
    cfg, ref_run, _ = uninterrupted
    calls = {"n": 0}
    jpeg = REWARDS["jpeg-compressibility"].factory()

    class Interrupting:
        name, differentiable = "jpeg-compressibility", False

        def __call__(self, images, prompts, metadata):
            calls["n"] += "prompt_id" in metadata[0]  # training batches, not the evaluation
            if calls["n"] == 2 and "prompt_id" in metadata[0]:  # during epoch 2's reward
                os.kill(os.getpid(), signal.SIGINT)
            return jpeg(images, prompts, metadata)

    run = tmp_path / "run"
    cfg_b = apply_overrides(cfg, {"run.output_dir": str(run), "reward.asynchronous": False})
    monkeypatch.setitem(REWARDS, "jpeg-compressibility", RewardSpec(Interrupting, "images", "test"))
    assert train(cfg_b, run) == {}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_000001", "epoch_000002"]
    (run / "checkpoints/.tmp_epoch_000003").mkdir()  # a write cut short
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "reward/me')
    monkeypatch.setitem(REWARDS, "jpeg-compressibility", RewardSpec(lambda: jpeg, "images", "test"))
    train(cfg_b, run, resume=True)
    assert _rows(run) == _rows(ref_run)
    ref, got = _final_weights(ref_run), _final_weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_resuming_with_another_config_is_refused(uninterrupted, capsys):
    from ddrl.cli import main

    _, run, _ = uninterrupted
    assert main(["train", "--resume", str(run), "--train.learning-rate", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "resuming with another config: train.learning_rate: None in the run, 0.5 given" in err
    assert main(["train", "--resume", str(run / "nothing")]) == 2
    assert "not a ddrl run folder" in capsys.readouterr().err


def cli_train_command(folder, run, epochs: int, *overrides: str) -> list[str]:
    """`python -m ddrl.cli train` on a tiny model (about a second an epoch); later overrides win."""
    return [sys.executable, "-m", "ddrl.cli", "train", "shapes-alignment", "--model.name", str(folder),
            "--reward.name", "jpeg-compressibility", "--sample.num-steps", "4", "--sample.batch-size", "4",
            "--sample.num-batches-per-epoch", "1", "--train.batch-size", "4", "--run.epochs", str(epochs),
            "--eval.max-prompts", "1", "--eval.grid-every", "0", "--run.output-dir", str(run), *overrides]


def test_kill_9_at_any_moment_leaves_a_resumable_run(tiny_sd_folder, tmp_path):
    """A real `kill -9` of `ddrl train` after its first checkpoint; `--resume` completes the run."""
    run = tmp_path / "killed"
    args = cli_train_command(tiny_sd_folder, run, 40)
    kill_9_once_it_exists(args, run / "checkpoints/epoch_000002")
    assert not (run / "report.md").exists()
    out = subprocess.run(args[:4] + ["--resume", str(run), "--run.epochs", "4", "--resume-override"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [r["epoch"] for r in _rows(run)] == [0, 1, 2, 3]
    assert (run / "report.md").is_file()


def test_bad_config_fails_before_any_work(tiny_sd_folder, tiny_sd3_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'train.clip_range'"):
        apply_overrides(Config(), {"train.clip-rnge": 1})
    with pytest.raises(ConfigError, match=r"train.batch_size \(5\) must divide .* = 64"):
        validate(apply_overrides(Config(), {"train.batch_size": 5}))
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps \(3\) must divide .* = 4"):
        validate(apply_overrides(Config(), {"train.gradient_accumulation_steps": 3}))
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(Config(), {"sample.num_steps": "ten"})
    with pytest.raises(ConfigError, match="eta must be > 0 for ddpo-is"):
        validate(apply_overrides(Config(), {"sample.eta": 0}))
    with pytest.raises(ValueError, match="scores shapes-world prompts only; 'cat' is not one"):
        ImageRun(tiny_config(tiny_sd_folder, **{"reward.name": "shapes-verifier", "prompts.source": "animals"}),
                tmp_path)
    with pytest.raises(ValueError, match="flow-matching"):
        ImageRun(tiny_config(tiny_sd3_folder), tmp_path)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        ImageRun(apply_overrides(tiny_config("shapes-sd"), {"prompts.source": "animals"}), tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text("run: {}\n")
    with pytest.raises(ValueError, match="already holds a run; continue it with resume=True"):
        train(tiny_config(tiny_sd_folder), tmp_path / "old")


def test_a_reward_returning_nan_stops_the_run_naming_it(tiny_sd_folder, tmp_path, monkeypatch):
    class Broken:
        name, differentiable = "broken", False

        def __call__(self, images, prompts, metadata):
            return RewardOutput(torch.full((len(images),), float("nan")))

    monkeypatch.setitem(REWARDS, "broken", RewardSpec(Broken, "images", "test"))
    with pytest.raises(RewardError, match="reward 'broken' returned non-finite scores"):
        train(tiny_config(tiny_sd_folder, **{"reward.name": "broken", "run.output_dir": str(tmp_path)}), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("extra", [{"train.algorithm": "rwr"},
                                   {"train.algorithm": "rwr", "train.rwr_percentile": 50.0, "sample.eta": 0.0},
                                   {"train.kl_coef": 0.1, "sample.num_batches_per_epoch": 2},
                                   {"model.lora": False, "train.kl_coef": 0.1, "sample.num_batches_per_epoch": 2}])
def test_rwr_and_kl_to_the_reference_update_the_model(tiny_sd_folder, tmp_path, extra):
    cfg = tiny_config(tiny_sd_folder, **extra)
    validate(cfg)
    tr = ImageRun(cfg, tmp_path)
    before = {k: v.clone() for k, v in tr.trainable_state().items()}
    m = tr.run_epoch(0)
    assert torch.isfinite(torch.tensor(m["train/loss"]))
    assert any(not torch.equal(before[k], v) for k, v in tr.trainable_state().items())
    if "train.kl_coef" in extra:  # 0 on the first minibatch (policy = reference), > 0 after a step
        assert m["train/kl_ref"] > 0


def test_every_preset_and_the_example_config_validate():
    from ddrl.config import load_yaml
    from ddrl.presets import PRESETS, preset_config

    for name in PRESETS:
        cfg = preset_config(name)
        if cfg.data.pairs == "pairs":  # a preset that reads `ddrl reward-pairs --out pairs`
            with pytest.raises(ConfigError, match="data.pairs 'pairs' does not exist"):
                validate(cfg)
            continue
        validate(cfg)
    example = Path(__file__).parents[1] / "examples/shapes-alignment.yaml"
    assert apply_overrides(Config(), load_yaml(example)) == preset_config("shapes-alignment")


def test_a_weighted_sum_logs_each_component(tiny_sd_folder, tmp_path):
    """reward = -kB + 0.5 kB = -0.5 kB: the logged total is the weighted sum of the logged parts."""
    cfg = tiny_config(tiny_sd_folder, **{"reward.name": "jpeg-compressibility + 0.5*jpeg-incompressibility"})
    tr = ImageRun(cfg, tmp_path)
    m = tr.run_epoch(0)
    comp, incomp = m["reward/jpeg-compressibility/mean"], m["reward/jpeg-incompressibility/mean"]
    assert comp == pytest.approx(-incomp) and incomp > 0
    assert m["reward/mean"] == pytest.approx(comp + 0.5 * incomp, rel=1e-6)


def test_prompt_metadata_from_jsonl_routes_each_prompt_to_its_reward(tiny_sd_folder, tmp_path):
    lines = [{"prompt": "a red circle", "task": "small"}, {"prompt": "two squares", "task": "big"}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = tiny_config(tiny_sd_folder, **{"prompts.source": f"file:{tmp_path / 'prompts.jsonl'}",
                                         "reward.name": "route[task](small=jpeg-compressibility, big=jpeg-incompressibility)"})
    tr = ImageRun(cfg, tmp_path)
    drawn = {tr.train_prompts[i] for i in tr.prompt_ids(0, tr.local_indices())}
    assert drawn == {"a red circle", "two squares"}  # this seed's epoch 0 draws both prompts
    m = tr.run_epoch(0)
    # compressibility is -kB < 0 and incompressibility +kB > 0: each prompt went to its own reward
    assert m["reward/jpeg-compressibility/mean"] < 0 < m["reward/jpeg-incompressibility/mean"]


def test_ddpo_sf_takes_one_optimizer_step_per_epoch():
    """DDPO-SF's REINFORCE gradient holds at the sampling policy only (the paper takes one step
    per batch of fresh samples); several steps per epoch are refused with the setting that fixes it."""
    from ddrl.presets import preset_config

    cfg = apply_overrides(preset_config("shapes-alignment-sf"), {"train.gradient_accumulation_steps": 1})
    with pytest.raises(ConfigError, match="one optimizer step per epoch.*gradient_accumulation_steps 4"):
        validate(cfg)
    validate(apply_overrides(cfg, {"train.gradient_accumulation_steps": 4}))


# The main job's speed on a quiet 2-core CPU, measured by benchmarks/main_job.py
# (benchmarks/results/main_job_run.md): seconds per epoch of 64 samples x 6 steps with full
# fine-tuning (median 5.0 on the slower of the two machines measured, 2.5 on the other), per
# evaluated image (10 ODE steps), and the model loading, grids and report together; the last two
# rounded up from the 56 s the slower run spent outside its epochs.
MAIN_JOB_EPOCH_S, MAIN_JOB_EVAL_IMAGE_S, MAIN_JOB_FIXED_S = 5.0, 0.05, 15.0


def test_the_main_job_is_the_default_and_fits_five_minutes_at_its_measured_speed():
    from ddrl.presets import DEFAULT_PRESET, preset_config
    from ddrl.worlds.shapes import split

    cfg = preset_config(DEFAULT_PRESET)
    validate(cfg)
    assert cfg.samples_per_epoch == 64 and cfg.sample.num_steps == 6 and cfg.eval_steps == 10
    images = len(split("heldout")) * cfg.eval.images_per_prompt + len(split("train")) * cfg.eval.train_images_per_prompt
    grids = (cfg.run.epochs // cfg.eval.grid_every if cfg.eval.grid_every else 0) * cfg.eval.grid_size
    seconds = MAIN_JOB_FIXED_S + cfg.run.epochs * MAIN_JOB_EPOCH_S + (2 * images + grids) * MAIN_JOB_EVAL_IMAGE_S
    assert seconds <= 300, seconds
    # the paired standard error of a per-image accuracy change stays honest: at least 400 images
    assert len(split("heldout")) * cfg.eval.images_per_prompt >= 400


def test_the_report_headline_gives_the_paired_change_in_standard_errors():
    """4 images: correct 0,0,1,1 before and 1,1,1,0 after; differences 1,1,0,-1 have mean 1/4 and
    sample variance (3 (3/4)^2 + (5/4)^2) / 3 = 11/12, so s.e. = sqrt(11/12 / 4) = 0.4787 and the
    change is 0.52 s.e.; accuracy 50% -> 75%."""
    from ddrl.images.report import headline

    before = {"heldout": {"accuracy_per_image": 0.5, "reward": 0.6}, "per_image": {"heldout": {"correct": [0, 0, 1, 1]}}}
    after = {"heldout": {"accuracy_per_image": 0.75, "reward": 0.7}, "per_image": {"heldout": {"correct": [1, 1, 1, 0]}}}
    assert headline(before, after, "shapes-verifier") == (
        "held-out accuracy 50% → 75% (+25 points, 0.5 s.e.; 4 images, the same seeds before and after)")
    # no verdict (not a shapes prompt): the reward instead; differences 0.1, 0.1, 0.2, 0: mean 0.1,
    # variance 0.02 / 3, s.e. sqrt(0.02 / 12) = 0.0408, 2.4 s.e.
    before["per_image"]["heldout"] = {"reward": [0.5, 0.7, 0.6, 0.6]}
    after["per_image"]["heldout"] = {"reward": [0.6, 0.8, 0.8, 0.6]}
    assert headline(before, after, "aesthetic").startswith("held-out aesthetic 0.600 → 0.700 (+0.100, 2.4 s.e.;")
    # one image: its change and no s.e. (not "+nan points")
    before = {"heldout": {"accuracy_per_image": 0.0}, "per_image": {"heldout": {"correct": [0]}}}
    after = {"heldout": {"accuracy_per_image": 1.0}, "per_image": {"heldout": {"correct": [1]}}}
    assert headline(before, after, "shapes-verifier") == (
        "held-out accuracy 0% → 100% (+100 points, no s.e. from one image; 1 image, the same seeds before and after)")


def test_the_report_gives_each_category_its_own_paired_standard_error(tmp_path):
    """Colours, 4 images: correct 1,1,1,1 before and 1,0,1,0 after; differences 0,-1,0,-1 have
    mean -1/2 and sample variance 4 (1/2)^2 / 3 = 1/3, so s.e. = sqrt(1/3 / 4) = 0.289. The
    counting image alone has no s.e. (one difference), and the row says only its change."""
    from ddrl.images.report import _per_image
    from ddrl.run.report import write_report

    cats = ["colors"] * 4 + ["counting"]
    before = {"heldout": {"accuracy/colors": 1.0, "accuracy/counting": 0.0},
              "per_image": {"heldout": {"correct": [1, 1, 1, 1, 0], "category": cats}}}
    after = {"heldout": {"accuracy/colors": 0.5, "accuracy/counting": 1.0},
             "per_image": {"heldout": {"correct": [1, 0, 1, 0, 1], "category": cats}}}
    text = write_report(tmp_path, "t", before, after, [], per_item=_per_image).read_text()
    assert "| heldout | accuracy/colors | 1.000 | 0.500 | -0.500 ± 0.289 |" in text
    assert "| heldout | accuracy/counting | 0.000 | 1.000 | +1.000 |" in text


def test_animal_activities_are_every_animal_doing_each_of_the_papers_three_activities():
    from ddrl.prompts import ANIMALS, load_prompts

    prompts = load_prompts("animal-activities")
    assert len(prompts) == 3 * len(ANIMALS) and len(set(prompts)) == len(prompts)
    assert "a cat riding a bike" in prompts and "an owl playing chess" in prompts
