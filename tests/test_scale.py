"""Memory and precision at scale, on the tiny models: gradient checkpointing (same gradient, less
held for backward), 8-bit AdamW, and the log-prob gap under bf16 autocast."""

import contextlib
import importlib.util
import subprocess

import pytest
import torch

from ddrl.config import ConfigError
from ddrl.config_checks import validate
from ddrl.images.loop import ImageRun
from ddrl.images.memory import SavedTensors

from helpers import kill_9_once_it_exists
from test_train import _final_weights, _rows, cli_train_command, tiny_config


@pytest.mark.parametrize("model,lora", [("sd", True), ("sd", False), ("sd3", True)])
def test_gradient_checkpointing_same_gradient_less_memory(model, lora, tiny_sd_folder, tiny_sd3_folder, tmp_path,
                                                          epoch_gradient):
    """Recomputing each block in the backward pass runs the same float ops in the same order on the
    CPU, so the epoch's gradient is equal bit for bit; what autograd holds for the backward pass
    (ddrl.images.memory.SavedTensors: under non-reentrant checkpointing a block's own activations
    are saved only while it is recomputed, inside the backward pass) shrinks to the blocks' inputs."""
    folder = tiny_sd_folder if model == "sd" else tiny_sd3_folder
    extra = {} if model == "sd" else {"sample.sampler": "flow-sde", "train.algorithm": "flow-grpo",
                                      "sample.images_per_prompt": 2, "train.advantages": "group"}
    grads, saved = {}, {}
    for ckpt in (False, True):
        cfg = tiny_config(folder, **extra, **{"model.lora": lora, "model.gradient_checkpointing": ckpt,
                                              "train.single_pass": False})
        tr = ImageRun(cfg, tmp_path / str(ckpt))
        assert tr.policy.denoiser.is_gradient_checkpointing == ckpt
        with SavedTensors() as counter:
            grads[ckpt], _ = epoch_gradient(tr)
        saved[ckpt] = counter.total
    for a, b in zip(grads[False], grads[True]):
        assert torch.equal(a, b)
    assert saved[True] < 0.6 * saved[False], saved


def test_gradient_checkpointing_refused_for_a_model_without_it(tiny_sd_folder, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from ddrl.models.policy import ModelError

    monkeypatch.setattr(UNet2DConditionModel, "_supports_gradient_checkpointing", False)
    with pytest.raises(ModelError, match="gradient_checkpointing: UNet2DConditionModel does not support it"):
        ImageRun(tiny_config(tiny_sd_folder, **{"model.gradient_checkpointing": True}), tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is an extra")
def test_adamw8bit_steps_as_adamw(tiny_sd_folder, tmp_path):
    """bitsandbytes' AdamW8bit stores m and v of tensors of 4096 elements or more in blockwise 8-bit
    codes (uint8) and smaller ones in fp32. Each step dequantises, updates in fp32 and quantises
    again, so the first step (from zero state) is torch AdamW's, lr * g/|g|; later steps differ by
    the rounding of the stored moments: over 3 steps, 0.62-0.64% of the mean movement (3 seeds)."""
    import bitsandbytes as bnb

    tr = ImageRun(tiny_config(tiny_sd_folder, **{"train.optimizer": "adamw8bit"}), tmp_path)
    assert isinstance(tr.optimizer, bnb.optim.AdamW8bit)
    torch.manual_seed(0)
    p0 = [torch.randn(n) for n in (64, 8192)]
    grads = [[torch.randn(n) for n in (64, 8192)] for _ in range(3)]
    after = {}
    for name, opt_class in (("8bit", bnb.optim.AdamW8bit), ("torch", torch.optim.AdamW)):
        params = [torch.nn.Parameter(p.clone()) for p in p0]
        opt = opt_class(params, lr=1e-3, weight_decay=0.0)
        after[name] = []
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
            after[name].append([p.detach().clone() for p in params])
        if name == "8bit":
            assert opt.state[params[1]]["state1"].dtype == torch.uint8
            assert opt.state[params[0]]["state1"].dtype == torch.float32
    for a, b, p, g in zip(after["8bit"][0], after["torch"][0], p0, grads[0]):
        torch.testing.assert_close(b, p - 1e-3 * torch.sign(g))
        torch.testing.assert_close(a, b)
    small8, small = after["8bit"][-1][0], after["torch"][-1][0]
    torch.testing.assert_close(small8, small)
    big8, big = after["8bit"][-1][1], after["torch"][-1][1]
    rel = float((big8 - big).abs().mean() / (big - p0[1]).abs().mean())
    assert 0 < rel < 0.01


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is an extra")
@pytest.mark.parametrize("lora", [pytest.param(True, marks=pytest.mark.slow), False])
def test_adamw8bit_killed_after_its_second_checkpoint_resumes_bit_for_bit(lora, tiny_sd_folder, tmp_path):
    """8-bit AdamW's state nests a dict of uint8 codes, their fp32 scales and an int step; a
    checkpoint stores each and the resumed optimizer gets them back with their types. `ddrl train`
    is killed (SIGKILL) once its second checkpoint exists, resumed, and ends with the uninterrupted
    run's weights, optimizer state and metrics exactly. Full fine-tuning has tensors of 4096
    elements or more, so its moments are the 8-bit blocks, not the fp32 fallback."""
    from safetensors.torch import load_file

    def command(run):
        return cli_train_command(tiny_sd_folder, run, 3, "--train.optimizer", "adamw8bit",
                                 "--model.lora", str(lora).lower())

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    out = subprocess.run(command(ref), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    kill_9_once_it_exists(command(killed), killed / "checkpoints/epoch_000002")
    assert not (killed / "checkpoints/epoch_000003").exists()
    out = subprocess.run(command(killed)[:4] + ["--resume", str(killed)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _rows(killed) == _rows(ref)
    want, got = _final_weights(ref), _final_weights(killed)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    opt = {run: load_file(str(run / "checkpoints/epoch_000003/optimizer.safetensors")) for run in (ref, killed)}
    assert opt[ref].keys() == opt[killed].keys() and all(torch.equal(opt[ref][k], opt[killed][k]) for k in opt[ref])
    if not lora:
        assert any(v.dtype == torch.uint8 for v in opt[ref].values())


def test_adamw8bit_needs_bitsandbytes(tiny_sd_folder, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(ConfigError, match=r"adamw8bit needs bitsandbytes: pip install 'ddrl\[scale\]'"):
        validate(tiny_config(tiny_sd_folder, **{"train.optimizer": "adamw8bit"}))


@pytest.fixture
def bf16_accelerator():
    """An Accelerator with bf16 autocast on the CPU (accelerate keeps one state per process: reset
    it around the test)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield Accelerator(mixed_precision="bf16", cpu=True)
    AcceleratorState._reset_state(True)


def _flow_grpo(**overrides):
    from ddrl.config import Config, apply_overrides

    return apply_overrides(Config(), {
        "model.name": "shapes-flow", "train.algorithm": "flow-grpo", "sample.sampler": "flow-sde",
        "sample.num_steps": 4, "sample.images_per_prompt": 4, "train.advantages": "group", "sample.batch_size": 4,
        "sample.num_batches_per_epoch": 2, "train.batch_size": 4, "train.timesteps_per_forward": 3,
        "train.single_pass": False, "run.mixed_precision": "bf16"} | overrides)


def test_bf16_rescoring_gap_and_first_ratio(bf16_accelerator, tmp_path):
    """Sampling and re-scoring both run the network under bf16 autocast, with step math and the
    stored log-probs in fp32. Re-scoring stacks 3 timesteps per forward where sampling ran one,
    so any batch-dependent rounding of the bf16 kernels would show as a gap. The asserted bound:
    |log p_rescored - log p_sampled| <= 1e-4 per transition (DDPO's clip range), so the first
    minibatch's PPO ratio exp(gap) is within 1e-4 of 1 and nothing is clipped for precision's
    sake. Measured on this CPU: 0 exactly (the kernels are batch-invariant here)."""
    tr = ImageRun(_flow_grpo(), tmp_path, accelerator=bf16_accelerator)
    m = tr.run_epoch(0)
    assert m["train/logprob_gap"] <= 1e-4


def test_bf16_logprob_error_is_the_networks_only(bf16_accelerator, tmp_path):
    """A transition sampled in fp32, re-scored with the network under bf16. With the mean moved by
    d = mu_bf16 - mu_fp32 and everything after the network in fp32, the per-dim log-prob changes
    by exactly

        log p_bf16 - log p_fp32 = mean(2 (x - mu_fp32) d - d^2) / (2 sigma^2),

    and by Cauchy-Schwarz |.| <= (rms(x - mu) rms(d) + ms(d)/2) / sigma^2. The first equality
    holds to fp32 rounding only if the step math did not run in bf16."""
    from ddrl.models.policy import guided_prediction
    from ddrl.sampling import rollout

    tr = ImageRun(_flow_grpo(), tmp_path, accelerator=bf16_accelerator)
    policy, sampler = tr.policy, tr.sampler
    cond, uncond = tr.cond_table[:4], tr.uncond.repeat(4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        traj = rollout(lambda x, t: guided_prediction(policy, x, t, cond, uncond, 1.0),
                       torch.randn(4, *policy.latent_shape, generator=g), sampler,
                       noise=lambda: torch.randn(4, *policy.latent_shape, generator=g))
        s = sampler.stochastic.nonzero().flatten()[:3]
        for j in s.tolist():
            x_t, x_prev = traj.latents[:, j], traj.latents[:, j + 1]
            time = sampler.model_time(torch.full((4,), j)).to(x_t.device)
            outs = {}
            for precision in ("fp32", "bf16"):
                ctx = tr.accelerator.autocast() if precision == "bf16" else contextlib.nullcontext()
                with ctx:
                    out = guided_prediction(policy, x_t, time, cond, uncond, 1.0)
                outs[precision] = sampler.step(torch.full((4,), j), x_t, out, x_prev=x_prev)
            f, b = outs["fp32"], outs["bf16"]
            assert f.log_prob.dtype == b.log_prob.dtype == torch.float32
            torch.testing.assert_close(f.log_prob, traj.log_probs[:, j], rtol=0, atol=1e-6)
            d, r = (b.mean - f.mean).flatten(1), (x_prev - f.mean).flatten(1)
            var = (f.std.flatten()[0] if f.std.numel() > 1 else f.std) ** 2
            exact = (2 * r * d - d**2).mean(1) / (2 * var)
            bound = (r.pow(2).mean(1).sqrt() * d.pow(2).mean(1).sqrt() + d.pow(2).mean(1) / 2) / var
            gap = b.log_prob - f.log_prob
            assert float(d.abs().max()) > 0  # bf16 did change the network's output
            torch.testing.assert_close(gap, exact, rtol=1e-3, atol=1e-6)
            assert bool((gap.abs() <= bound * (1 + 1e-4)).all())


@pytest.mark.parametrize("config", ["fsdp2.yaml", "fsdp2-multinode.yaml"])
def test_example_fsdp_configs_load_and_name_blocks_the_models_have(config):
    """The accelerate configs in examples/ parse as FSDP2, and the block classes they wrap
    resolve in the UNet (accelerate raises for a class the model lacks); the comment's classes
    for SD3 resolve in the SD3 transformer."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from ddrl.models.loading import load_policy

    c = load_config_from_file(str(Path(__file__).parents[1] / "examples" / "accelerate" / config))
    assert c.distributed_type == DistributedType.FSDP and c.fsdp_config["fsdp_version"] == 2
    for model, names in (("shapes-sd", c.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")),
                         ("shapes-flow", ["JointTransformerBlock"])):
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                transformer_cls_names_to_wrap=names)
        plugin.set_auto_wrap_policy(load_policy(model).denoiser)
        assert {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]} == set(names)


def test_deepspeed_and_fsdp1_are_refused_with_the_reason():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from ddrl.run.sharding import ShardingError, is_sharded

    with pytest.raises(ShardingError, match="DeepSpeed is not supported.*examples/accelerate/fsdp2.yaml"):
        is_sharded(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))
    with pytest.raises(ShardingError, match="FSDP1 is not supported; set fsdp_version: 2"):
        is_sharded(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False))
    assert is_sharded(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True))
    assert not is_sharded(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU))


@pytest.mark.parametrize("env,refused", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed is not supported"),
    ({"ACCELERATE_USE_DEEPSPEED": "True", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "DeepSpeed"),
    ({"ACCELERATE_USE_FSDP": "true"}, "FSDP1 is not supported"),  # accelerate's default version is 1
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP1 is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, None),
    ({"ACCELERATE_USE_DEEPSPEED": "false", "ACCELERATE_USE_FSDP": "false", "FSDP_VERSION": "1"}, None),
])
def test_the_refusals_are_read_from_accelerate_launchs_environment(env, refused):
    """`accelerate launch --config_file X` passes its config to each process as these variables;
    they are read before an Accelerator is built (which fails inside accelerate under them)."""
    from ddrl.run.sharding import ShardingError, check_launch

    if refused is None:
        check_launch(env)
    else:
        with pytest.raises(ShardingError, match=refused):
            check_launch(env)


@pytest.mark.parametrize("env", [{"ACCELERATE_USE_DEEPSPEED": "true"}, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}])
def test_ddrl_train_under_a_refused_launch_is_one_line_before_any_model_loads(env, tmp_path):
    import os
    import sys

    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "ddrl.cli", "train", "shapes-quick", "--run.output-dir", str(run)],
                         capture_output=True, text=True, env=os.environ | env)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr[-2000:]
    assert "is not supported" in out.stderr and not run.exists()
    assert "memory estimate" not in out.stdout  # the line a run prints once its model has loaded


def test_memory_estimate_terms(tiny_sd_folder, tmp_path):
    """The estimate's terms are what docs/scale.md says: gradients 4 bytes and AdamW state 8 bytes
    per trainable parameter, weights the pipeline's parameters and buffers; the activation probe
    counts less under gradient checkpointing, which adds the recomputed unit instead."""
    pass

    est = {}
    for ckpt in (False, True):
        tr = ImageRun(tiny_config(tiny_sd_folder, **{"model.gradient_checkpointing": ckpt}), tmp_path / str(ckpt))
        est[ckpt] = tr.memory_estimate()
    n = sum(p.numel() for p in tr.params)
    e = est[True]
    assert (e.gradients, e.optimizer, e.ema) == (4 * n, 8 * n, 0)
    modules = [m for m in tr.policy.pipe.components.values() if isinstance(m, torch.nn.Module)]
    assert e.weights == sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
    assert est[False].recomputed_per_sample == 0 < e.recomputed_per_sample
    assert e.activations_per_sample < 0.6 * est[False].activations_per_sample
    assert e.samples_per_forward == tr.cfg.train.batch_size * (2 if tr.cfg.sample.guidance_scale > 1 else 1)
