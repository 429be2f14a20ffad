"""The run core (ddrl.run) and the algorithm contract: what it imports, the optimizer step and
the accumulate-and-step helper against closed forms, several parameter groups checkpointed and
resumed, an algorithm defined outside the package, configs and checkpoints of earlier releases."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

import ddrl
from ddrl.algorithms import RolloutAlgorithm
from ddrl.config import Config, ConfigError, apply_overrides
from ddrl.config_run import read_run_config
from ddrl.options import field_docs, option
from ddrl.run import Accumulation, OptimizerStep, load_checkpoint, save_checkpoint
from ddrl.run.checkpoint import load_optimizer, optimizer_tensors

RUN = Path(ddrl.__file__).parent / "run"
DATA = Path(__file__).parent / "data"


def test_the_run_core_imports_nothing_of_images_models_rewards_or_worlds():
    """Every import in ddrl/run/*.py, read from the source: torch, accelerate, safetensors, the
    standard library and ddrl's own io/config/run only."""
    banned = ("diffusers", "ddrl.models", "ddrl.rewards", "ddrl.worlds", "ddrl.images",
              "ddrl.algorithms", "ddrl.sampling")
    relative = {"..models", "..rewards", "..worlds", "..images", "..algorithms", "..sampling"}
    for path in RUN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            for name in names:
                assert not name.startswith(banned) and name not in relative, f"{path.name} imports {name}"


def _quadratic(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(3, generator=g))
    return w, torch.randn(4, 3, generator=g)


def test_accumulation_descends_the_mean_over_its_window():
    """Two minibatches of 2 rows, accumulated (every=2), give the gradient of the mean over the 4
    rows: for L = mean_i (x_i . w)^2 that is (2 / 4) sum_i (x_i . w) x_i, in one optimizer step."""
    w, x = _quadratic()
    grads = []

    def step() -> float:
        grads.append(w.grad.clone())
        w.grad = None
        return 0.0

    acc = Accumulation(step, every=2)
    for mb, rows in enumerate((x[:2], x[2:])):
        acc.backward(((rows @ w) ** 2).sum(), count=len(rows))
        acc.end_minibatch(mb)
    assert len(grads) == 1 and acc.stats["train/grad_norm"] == [0.0]
    expected = 2 / 4 * ((x @ w.detach())[:, None] * x).sum(0)
    torch.testing.assert_close(grads[0], expected, rtol=4 * 2 ** -24 * 4, atol=0)


def test_optimizer_step_warms_up_skips_a_nonfinite_step_and_keeps_an_ema():
    """SGD at lr 1 with 2 warm-up steps: step k (from 0) moves w by -min(1, k / 2) grad; a NaN
    gradient is skipped (counted) when allowed, and raises the given error otherwise. The EMA
    after step s has decay min((1 + s) / (10 + s), max)."""
    w = torch.nn.Parameter(torch.zeros(2))
    step = OptimizerStep([w], torch.optim.SGD([w], lr=1.0), lr=1.0, max_grad_norm=1e9, warmup_steps=2,
                         skip_nonfinite=True, named=lambda: {"w": w.detach()}, ema_decay=0.5)
    path = []
    for _ in range(3):
        w.grad = torch.ones(2)
        step()
        path.append(float(w.detach()[0]))
    assert path == [0.0, -0.5, -1.5] and step.steps == 3
    # EMA: decays min(2/11, .5), min(3/12, .5), min(4/13, .5) after steps 1, 2, 3
    ema = 0.0
    for s, value in zip((1, 2, 3), path):
        d = min((1 + s) / (10 + s), 0.5)
        ema = d * ema + (1 - d) * value
    assert step.ema["w"][0].item() == pytest.approx(ema, rel=1e-6)
    w.grad = torch.full((2,), float("nan"))
    step()
    assert step.skipped == 1 and step.steps == 3 and float(w[0]) == -1.5 and w.grad is None
    strict = OptimizerStep([w], torch.optim.SGD([w], lr=1.0), lr=1.0, max_grad_norm=1.0,
                           on_nonfinite=lambda norm: ValueError(f"non-finite gradient norm ({norm})"))
    w.grad = torch.full((2,), float("inf"))
    with pytest.raises(ValueError, match="non-finite gradient norm"):
        strict()


def test_an_actor_and_a_critic_step_checkpoint_and_resume_exactly(tmp_path):
    """Two parameter groups with their own optimizers and rates (an actor and a critic): 3 steps,
    a checkpoint, 3 more, equal bit for bit to 6 steps straight; the second optimizer is saved as
    an extra file beside the first."""
    def make():
        actor, critic = torch.nn.Linear(3, 2), torch.nn.Linear(3, 1)
        with torch.no_grad():
            for p in (*actor.parameters(), *critic.parameters()):
                p.copy_(torch.linspace(-1, 1, p.numel()).view_as(p))
        steps = {name: OptimizerStep(list(m.parameters()), torch.optim.AdamW(m.parameters(), lr=lr), lr=lr,
                                     max_grad_norm=1.0) for name, m, lr in (("actor", actor, 1e-2), ("critic", critic, 3e-2))}
        return actor, critic, steps

    def train(actor, critic, steps, ks):
        for k in ks:
            x = torch.linspace(-1, 1, 12).view(4, 3) * (k + 1)
            (actor(x) ** 2).mean().backward()
            steps["actor"]()
            ((critic(x) - 1) ** 2).mean().backward()
            steps["critic"]()

    straight = make()
    train(*straight, range(6))
    first = make()
    train(*first, range(3))
    actor, critic, steps = first
    weights = {f"actor.{k}": v for k, v in actor.state_dict().items()} | {f"critic.{k}": v for k, v in critic.state_dict().items()}
    critic_opt = optimizer_tensors(steps["critic"].optimizer)

    def write_critic(d):
        from safetensors.torch import save_file

        save_file(critic_opt[0], str(d / "optimizer_critic.safetensors"), metadata={"param_groups": critic_opt[1]})

    ckpt = save_checkpoint(tmp_path, 3, weights, steps["actor"].optimizer,
                           {"steps": {n: s.steps for n, s in steps.items()}}, {"critic": write_critic})
    resumed = make()
    w, opt, groups, state = load_checkpoint(ckpt)
    resumed[0].load_state_dict({k[6:]: v for k, v in w.items() if k.startswith("actor.")})
    resumed[1].load_state_dict({k[7:]: v for k, v in w.items() if k.startswith("critic.")})
    load_optimizer(resumed[2]["actor"].optimizer, opt, groups)
    from safetensors import safe_open

    with safe_open(str(ckpt / "optimizer_critic.safetensors"), "pt") as f:
        critic_groups = f.metadata()["param_groups"]
    load_optimizer(resumed[2]["critic"].optimizer, load_file(str(ckpt / "optimizer_critic.safetensors")), critic_groups)
    for name, s in resumed[2].items():
        s.steps = state["steps"][name]
    train(*resumed, range(3, 6))
    for a, b in zip((*straight[0].parameters(), *straight[1].parameters()),
                    (*resumed[0].parameters(), *resumed[1].parameters())):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- an algorithm from outside

@dataclass(frozen=True)
class MeanShiftOptions:
    section: ClassVar[str] = "mean_shift"
    step_scale: float = option(1.0, "(0, inf)", "factor of the reward-weighted denoising loss")


class MeanShift(RolloutAlgorithm):
    """Reward-weighted denoising on each epoch's final samples (RWR with weights r - mean r),
    written against the public contract only."""

    Options = MeanShiftOptions
    prediction = "epsilon"

    def signal(self, batch, metrics):
        metrics["train/seen_scale"] = self.options.step_scale
        return batch.rewards - batch.rewards.mean()

    def update(self, ro, weights, epoch):
        from collections import defaultdict

        from ddrl.algorithms.base import mean_stats, minibatches
        from ddrl.sampling import diffusion_noised

        ctx, stats = self.ctx, defaultdict(list)
        acc = ctx.accumulation(stats)
        ab_all = ctx.policy.alphas_cumprod
        for _, mb, rows, gens in minibatches(ctx, ro, epoch):
            ts = torch.stack([torch.randint(0, len(ab_all), (), generator=g) for g in gens])
            eps = torch.stack([torch.randn(ro.latents.shape[2:], generator=g) for g in gens])
            x_t = diffusion_noised(ro.latents[rows, -1], ab_all[ts], eps)
            pred = ctx.policy.predict(x_t, ts, ctx.cond_table[ro.prompt_ids[rows]])
            terms = weights[rows] * ((pred - eps) ** 2).flatten(1).mean(1) * self.options.step_scale
            acc.backward(terms.sum(), len(rows))
            stats["train/loss"].append(float(terms.detach().mean()))
            acc.end_minibatch(mb)
        return mean_stats(stats)


def test_an_algorithm_defined_outside_the_package_trains_through_ddrl_train(tmp_path, tiny_sd_folder):
    ddrl.register_algorithm("mean-shift", MeanShift)
    from ddrl.config_checks import validate

    with pytest.raises(ConfigError, match="mean_shift.step_scale must be in"):
        validate(ddrl.load_config("shapes-compressibility", {"train.algorithm": "mean-shift", "mean_shift.step_scale": -1}))
    result = ddrl.train("shapes-compressibility", run_dir=tmp_path / "run", **{
        "train.algorithm": "mean-shift", "mean_shift.step_scale": 2.0, "model.name": str(tiny_sd_folder),
        "run.epochs": 2, "sample.num_steps": 2, "sample.batch_size": 4, "sample.num_batches_per_epoch": 1,
        "train.batch_size": 2, "eval.max_prompts": 1, "eval.images_per_prompt": 1,
        "eval.train_images_per_prompt": 0, "eval.grid_every": 0, "run.report_to": "none"})
    assert set(result) == {"before", "after"}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/seen_scale"] for r in rows] == [2.0, 2.0] and all("train/grad_norm" in r for r in rows)
    saved = read_run_config(tmp_path / "run")
    assert saved.options == MeanShiftOptions(step_scale=2.0)
    assert (tmp_path / "run" / "checkpoints" / "epoch_000002").is_dir()


# ---------------------------------------------------------------- options and earlier configs

def test_old_prefixed_keys_read_as_the_algorithms_options_and_others_are_refused():
    cfg = apply_overrides(Config(), {"train.algorithm": "nft", "train.nft_beta": 2.0, "train.rwr_beta": 5.0,
                                     "backprop.steps": 1})  # the last two: another algorithm's defaults
    assert cfg.options.beta == 2.0 and cfg.to_dict()["nft"]["beta"] == 2.0 and "rwr" not in cfg.to_dict()
    with pytest.raises(ConfigError, match="rwr.beta is an option of train.algorithm rwr; this config trains nft"):
        apply_overrides(cfg, {"rwr.beta": 3.0})
    with pytest.raises(ConfigError, match="did you mean 'nft.beta'"):
        apply_overrides(cfg, {"nft.betta": 3.0})
    assert apply_overrides(cfg, {"train.algorithm": "rwr"}).options.beta == 5.0  # the new algorithm's defaults
    docs = field_docs(type(cfg.options))
    assert docs["beta"] == ("strength beta of the implicit positive/negative policies", "(0, inf)")


def test_a_config_of_another_algorithms_options_is_a_clear_error(tmp_path):
    from ddrl.config_checks import validate

    cfg = apply_overrides(Config(), {"train.algorithm": "nft", "sample.sampler": "flow-ode"})
    wrong = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, algorithm="rwr"))
    wrong = dataclasses.replace(wrong, sample=dataclasses.replace(wrong.sample, sampler="ddim"))
    with pytest.raises(ConfigError, match="config.options is a NFTOptions, but train.algorithm rwr takes RWROptions"):
        validate(wrong)


def test_print_config_is_yaml_that_loads_back_to_the_same_config(tmp_path, capsys):
    from ddrl.cli import main

    assert main(["train", "shapes-nft", "--nft.beta", "3", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "nft:" in text and "beta: 3.0  # strength beta" in text and "(range (0, inf))" in text
    (tmp_path / "c.yaml").write_text(text)
    again = ddrl.load_config(str(tmp_path / "c.yaml"))
    assert again == apply_overrides(ddrl.load_config("shapes-nft"), {"nft.beta": 3})


def test_a_run_of_the_earlier_release_resumes_and_matches_an_uninterrupted_run(tmp_path):
    """tests/data/main-824c612-nft: one epoch of an NFT run written by ddrl at commit 824c612
    (before the run core; its config.yaml has the flat train.nft_* keys). Resumed here for a
    second epoch, it gives the same weights, optimizer, old policy and metrics as a two-epoch run
    of this version, bit for bit."""
    old = tmp_path / "old"
    shutil.copytree(DATA / "main-824c612-nft", old)
    saved = read_run_config(old)
    assert saved.options.beta == 2.0
    ddrl.train(saved, run_dir=old, resume=True, run__epochs=2)
    fresh = tmp_path / "fresh"
    ddrl.train(saved, run_dir=fresh, run__epochs=2)
    a, b = (p / "checkpoints" / "epoch_000002" for p in (old, fresh))
    for name in ("trainable.safetensors", "optimizer.safetensors", "algorithm.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    rows = [[{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
             for line in (p / "metrics.jsonl").read_text().splitlines()] for p in (old, fresh)]
    assert rows[0] == rows[1]


def test_bad_algorithms_and_resumes_are_one_line_errors_before_any_work(tmp_path):
    from ddrl.images import check_run

    with pytest.raises(ConfigError, match="expected a subclass of ddrl.algorithms.Algorithm"):
        ddrl.register_algorithm("plain", object)
    with pytest.raises(ConfigError, match="is built in"):
        ddrl.register_algorithm("nft", MeanShift)

    class NotFrozen(MeanShift):
        @dataclass
        class Options:
            section: ClassVar[str] = "x"
            a: int = 1

    with pytest.raises(ConfigError, match="frozen dataclass"):
        ddrl.register_algorithm("not-frozen", NotFrozen)

    class TakesTrain(MeanShift):
        @dataclass(frozen=True)
        class Options:
            section: ClassVar[str] = "train"
            a: int = 1

    with pytest.raises(ConfigError, match="a section of its own"):
        ddrl.register_algorithm("takes-train", TakesTrain)
    with pytest.raises(ConfigError, match="train.algorithm 'nftt' is unknown.*did you mean 'nft'"):
        apply_overrides(Config(), {"train.algorithm": "nftt"})
    with pytest.raises(ValueError, match="holds no run to resume"):
        check_run(apply_overrides(Config(), {}), tmp_path / "nothing", resume=True)
    assert not (tmp_path / "nothing").exists()
