"""Two CPU processes (gloo, launched with `accelerate launch`) give the update of one process
with the same global batch: each process samples its slice of every global minibatch,
advantages are computed on the gathered rewards, and gradients are averaged before each step."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(folder, run, **sizes) -> list[str]:
    args = {"model.name": str(folder), "reward.name": "jpeg-incompressibility", "sample.num-steps": 4,
            "sample.num-batches-per-epoch": 1, "sample.images-per-prompt": 2, "train.advantages": "per-prompt",
            "train.min-count": 2, "train.buffer-size": 4, "run.epochs": 2, "eval.max-prompts": 1,
            "eval.grid-every": 0, "train.adam-eps": 1.0, "train.learning-rate": 1.0,
            "run.output-dir": str(run)} | sizes
    return ["train", "shapes-alignment"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]


def _result(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = load_file(str(run / "checkpoints/epoch_000001/trainable.safetensors"))
    return rows, first


def _launch(args: list[str], processes: int, **kwargs) -> subprocess.CompletedProcess:
    """`ddrl <args>` in 1 process, or in 2 under `accelerate launch` (gloo), one thread each so
    kernels reduce in the same order."""
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    return subprocess.run([sys.executable, *(launch if processes == 2 else []), "-m", "ddrl.cli", *args],
                          capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, **kwargs)


def _assert_same_update(rows1, w1, rows2, w2) -> None:
    """The same gradient norm (after averaging across processes; a sum instead of a mean would
    double it) and the same update. With adam_eps = 1, far above sqrt(v), AdamW's step is linear
    in the gradient (lr * m / (sqrt(v) + eps) ~ lr * m), so float noise in the gradients stays
    float noise in the weights. LoRA B starts at 0, so B is the update itself."""
    assert abs(rows1[0]["train/grad_norm"] - rows2[0]["train/grad_norm"]) < 1e-4 * rows1[0]["train/grad_norm"]
    b1 = {k: v for k, v in w1.items() if "lora_B" in k}
    scale = max(float(v.abs().max()) for v in b1.values())
    assert scale > 0
    for k in b1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4 * scale)


def test_two_processes_give_the_update_of_one(tiny_sd_folder, tmp_path):
    # Global batch 8 samples per epoch, global minibatch 4: two optimizer steps per epoch. Both
    # sample in batches of 4, so each image is computed by the same kernels, bit for bit.
    one, two = tmp_path / "one", tmp_path / "two"
    out = _launch(_train_args(tiny_sd_folder, one, **{"sample.batch-size": 4, "sample.num-batches-per-epoch": 2,
                                                      "train.batch-size": 4}), 1)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _launch(_train_args(tiny_sd_folder, two, **{"sample.batch-size": 4, "train.batch-size": 2}), 2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es)" in out.stdout
    rows1, w1 = _result(one)
    rows2, w2 = _result(two)
    # Epoch 1: the same samples, rewards and advantages, bit for bit, and the same update
    assert rows1[0]["reward/mean"] == rows2[0]["reward/mean"] and rows1[0]["reward/std"] == rows2[0]["reward/std"]
    _assert_same_update(rows1, w1, rows2, w2)
    # Epoch 2 starts from weights equal up to float noise, so its images (and JPEG sizes) agree
    # closely but not always exactly.
    assert abs(rows1[1]["reward/mean"] - rows2[1]["reward/mean"]) < 1e-3 * abs(rows1[1]["reward/mean"])


@pytest.mark.slow  # the default suite keeps the rollout algorithms' two-process check
def test_offline_dpo_on_two_processes_gives_the_update_of_one(tiny_sd_folder, tmp_path):
    """Each process trains its slice of every global minibatch of pairs (the stream positions
    p * batch .. (p + 1) * batch of it), with each pair's draws keyed by its position."""
    from test_dpo_data import _jsonl

    pairs = _jsonl(tmp_path / "data", n=8)
    common = {"train.algorithm": "dpo", "data.pairs": str(pairs), "data.pairs-per-epoch": 8, "data.hflip": "false",
              "data.cache-dir": str(tmp_path / "cache")}
    runs = {}
    for procs, batch in ((1, 4), (2, 2)):
        run = tmp_path / f"p{procs}"
        out = _launch(_train_args(tiny_sd_folder, run, **common | {"train.batch-size": batch}), procs)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[procs] = _result(run)
    (rows1, w1), (rows2, w2) = runs[1], runs[2]
    assert rows1[0]["data/pairs_seen"] == rows2[0]["data/pairs_seen"] == 8
    _assert_same_update(rows1, w1, rows2, w2)


@pytest.mark.slow  # about 30 s; the suite keeps to its time budget
def test_draft_on_two_processes_gives_the_update_of_one(tiny_sd_folder, tmp_path, saturation_reward):
    """Reward backpropagation samples inside its update: each process samples and backpropagates
    its slice of every global minibatch, and the truncation is drawn per global minibatch."""
    common = {"train.algorithm": "draft", "reward.name": saturation_reward, "backprop.steps": 2,
              "sample.batch-size": 4}
    runs = {}
    for procs, sizes in ((1, {"sample.num-batches-per-epoch": 2, "train.batch-size": 4}), (2, {"train.batch-size": 2})):
        run = tmp_path / f"p{procs}"
        out = _launch(_train_args(tiny_sd_folder, run, **common | sizes), procs)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[procs] = _result(run)
    (rows1, w1), (rows2, w2) = runs[1], runs[2]
    assert abs(rows1[0]["reward/mean"] - rows2[0]["reward/mean"]) < 1e-5 * abs(rows1[0]["reward/mean"])
    _assert_same_update(rows1, w1, rows2, w2)


@pytest.mark.slow
def test_an_undecodable_image_stops_every_process_with_its_line(tiny_sd_folder, tmp_path):
    """The main process caches the latents while the others wait: its error must reach them too,
    not leave them waiting at the barrier."""
    from test_dpo_data import _jsonl

    pairs = _jsonl(tmp_path / "data", n=4)
    (tmp_path / "data" / "img" / "2a.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    args = _train_args(tiny_sd_folder, tmp_path / "run", **{"train.algorithm": "dpo", "data.pairs": str(pairs),
                                                             "data.cache-dir": str(tmp_path / "cache"),
                                                             "train.batch-size": 2})
    out = _launch(args, 2, timeout=300)
    assert out.returncode != 0
    assert "pairs.jsonl:3: cannot decode the image" in out.stderr


def _launch_fsdp(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`ddrl <args>` in 2 processes with the denoiser sharded by FSDP2 (tests/fsdp_cpu.py)."""
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    script = str(Path(__file__).parent / "fsdp_cpu.py")
    return subprocess.run([sys.executable, *launch, script, *args], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, **kwargs)


@pytest.mark.slow  # about 35 s each: two processes sharding the UNet with FSDP2 on the CPU
@pytest.mark.parametrize("lora", [True, False])
def test_fsdp_on_two_processes_gives_the_update_of_one(tiny_sd_folder, tmp_path, lora):
    """FSDP2 shards the denoiser's parameters, gradients and optimizer state over 2 processes;
    its backward reduce-scatters the mean gradient. The first update equals one process's on the
    same global batch, LoRA or full fine-tuning, and the checkpoint holds whole tensors (gathered
    from the shards) under the same names."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = {"model.lora": lora} | ({} if lora else {"train.learning-rate": 1e-3})
    out = _launch(_train_args(tiny_sd_folder, one, **{"sample.batch-size": 4, "sample.num-batches-per-epoch": 2,
                                                      "train.batch-size": 4} | extra), 1)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _launch_fsdp(_train_args(tiny_sd_folder, two, **{"sample.batch-size": 4, "train.batch-size": 2} | extra))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es)" in out.stdout
    rows1, w1 = _result(one)
    rows2, w2 = _result(two)
    assert set(w1) == set(w2) and all(w1[k].shape == w2[k].shape for k in w1)
    assert rows1[0]["reward/mean"] == rows2[0]["reward/mean"]
    if lora:
        _assert_same_update(rows1, w1, rows2, w2)
        assert (two / "lora" / "pytorch_lora_weights.safetensors").exists()
    else:  # full fine-tuning: the update is the change of every weight
        assert abs(rows1[0]["train/grad_norm"] - rows2[0]["train/grad_norm"]) < 1e-4 * rows1[0]["train/grad_norm"]
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-6)


@pytest.mark.slow  # about 100 s
def test_fsdp_run_resumes_where_it_stopped(tiny_sd_folder, tmp_path):
    """A sharded run stopped after epoch 1 and resumed (sharded again) ends with the weights and
    EMA of the uninterrupted sharded run: the checkpoint's whole tensors are re-sharded, optimizer
    state and EMA too."""
    sizes = {"sample.batch-size": 4, "train.batch-size": 2, "train.ema-decay": 0.9}
    full, part = tmp_path / "full", tmp_path / "part"
    out = _launch_fsdp(_train_args(tiny_sd_folder, full, **sizes))
    assert out.returncode == 0, out.stderr[-3000:]
    out = _launch_fsdp(_train_args(tiny_sd_folder, part, **sizes | {"run.epochs": 1}))
    assert out.returncode == 0, out.stderr[-3000:]
    out = _launch_fsdp(["train", "--resume", str(part), "--run.epochs", "2"])
    assert out.returncode == 0, out.stderr[-3000:]
    a = load_file(str(full / "checkpoints/epoch_000002/trainable.safetensors"))
    b = load_file(str(part / "checkpoints/epoch_000002/trainable.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    a, b = (load_file(str(r / "checkpoints/epoch_000002/ema.safetensors")) for r in (full, part))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # about 90 s
def test_fsdp_nft_resumes_with_its_old_policy(tiny_sd3_folder, tmp_path):
    """DiffusionNFT on an SD3 transformer under FSDP2: its old (sampling) policy is a copy of the
    sharded weights, gathered into the checkpoint and re-sharded on resume; the resumed run ends
    where the uninterrupted one does, weights and old policy bit for bit."""
    args = {"model.name": str(tiny_sd3_folder), "reward.name": "jpeg-incompressibility", "sample.num-steps": 4,
            "sample.batch-size": 4, "sample.num-batches-per-epoch": 1, "sample.images-per-prompt": 2,
            "train.batch-size": 2, "eval.max-prompts": 1, "eval.grid-every": 0, "run.epochs": 2}

    def cli(run, **extra):
        return ["train", "shapes-nft"] + [x for k, v in (args | extra | {"run.output-dir": str(run)}).items()
                                          for x in (f"--{k}", str(v))]
    full, part = tmp_path / "full", tmp_path / "part"
    for cmd in (cli(full), cli(part, **{"run.epochs": 1}), ["train", "--resume", str(part), "--run.epochs", "2"]):
        out = _launch_fsdp(cmd)
        assert out.returncode == 0, out.stderr[-3000:]
    for name in ("trainable", "algorithm"):
        a, b = (load_file(str(r / f"checkpoints/epoch_000002/{name}.safetensors")) for r in (full, part))
        assert set(a) == set(b) and a and all(torch.equal(a[k], b[k]) for k in a), name
