"""Probe `ddrl` with bad inputs, as a demanding new user would, and tabulate what each one gets:
the exit status, whether the error is one line naming the problem, how long until it came, and
whether anything was left behind. Writes benchmarks/results/bad_inputs.md.

    python benchmarks/bad_inputs.py            # about 10 minutes on 2 cores

Every case runs the real command line in its own process on the built-in shapes-sd model; the
resume cases share one short run made first.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--sample.num-steps", "2", "--sample.batch-size", "4", "--sample.num-batches-per-epoch", "1",
        "--train.batch-size", "4", "--sample.images-per-prompt", "2", "--eval.max-prompts", "2",
        "--eval.images-per-prompt", "1", "--eval.train-images-per-prompt", "0", "--eval.grid-every", "0"]


def ddrl(*argv: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> tuple[int, str, float]:
    """`ddrl ARGV`, or with ARGV ("python", CODE) the Python API in a fresh interpreter."""
    import os

    t0 = time.perf_counter()
    command = [sys.executable, "-c", argv[1]] if argv[0] == "python" else [sys.executable, "-m", "ddrl.cli", *argv]
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                         env=os.environ | (env or {}))
    return out.returncode, out.stderr.strip(), time.perf_counter() - t0


def newer_cases(w: Path) -> list[tuple[str, str, list[str], str, dict]]:
    """The newer surfaces: (class, what, argv, expected outcome, environment)."""
    from PIL import Image

    Image.fromarray(np.full((48, 48), 30000, np.uint16)).save(w / "wide16.png")
    Image.fromarray(np.full((48, 48), 0.5, np.float32)).save(w / "float.tif")
    Image.new("RGB", (48, 48), (0, 200, 0)).save(w / "g.png")
    pairs = {"pairs_16bit.jsonl": [{"prompt": p, "chosen": "wide16.png", "rejected": "b.png"}
                                   for p in ("a red circle", "a blue square", "two triangles")],
             "pairs_float.jsonl": [{"prompt": "a red circle", "chosen": "float.tif", "rejected": "b.png"}],
             "pairs_same_file.jsonl": [{"prompt": "a red circle", "chosen": "r.png", "rejected": "r.png"}],
             "pairs_same_pixels.jsonl": [{"prompt": "a red circle", "chosen": "r.png", "rejected": "r2.png"}],
             "pairs_dog.jsonl": [{"prompt": "a purple dog", "chosen": "r.png", "rejected": "b.png"}],
             "pairs_long.jsonl": [{"prompt": "a red circle and " * 12, "chosen": "r.png", "rejected": "b.png"}]}
    for name, lines in pairs.items():
        (w / name).write_text("".join(json.dumps(row) + "\n" for row in lines * 4))
    model = w / "wrong_model"
    shutil.copytree(ROOT / "src" / "ddrl" / "assets" / "shapes-sd", model)
    unet = json.loads((model / "unet" / "config.json").read_text())
    (model / "unet" / "config.json").write_text(json.dumps(unet | {"_class_name": "SD3Transformer2DModel"}))
    dpo = ["train", "shapes-dpo", "--data.cache-dir", str(w / "cache"), "--run.output-dir", str(w / "never")]
    cfg = ["train", "shapes-alignment", *TINY, "--run.output-dir", str(w / "never")]
    api = "import ddrl; "
    no_wandb = {"WANDB_API_KEY": "", "WANDB_MODE": "online", "HOME": str(w), "NETRC": str(w / "no_netrc")}
    out = [("images", "DPO pairs with a 16-bit PNG", [*dpo, "--data.pairs", str(w / "pairs_16bit.jsonl")], "error", {}),
           ("images", "DPO pairs with a float TIFF", [*dpo, "--data.pairs", str(w / "pairs_float.jsonl")], "error", {}),
           ("images", "reward-train pairs with a 16-bit PNG", ["reward-train", str(w / "pairs_16bit.jsonl"), "--out",
                                                               str(w / "m6")], "error", {}),
           ("captions", "a DPO caption outside the vocabulary", [*dpo, "--data.pairs", str(w / "pairs_dog.jsonl")],
            "error", {}),
           ("captions", "a 49-token DPO caption", [*dpo, "--data.pairs", str(w / "pairs_long.jsonl")], "error", {}),
           ("degenerate data", "DPO pairs of one file", [*dpo, "--data.pairs", str(w / "pairs_same_file.jsonl")],
            "error", {}),
           ("degenerate data", "DPO pairs of identical pixels", [*dpo, "--data.pairs",
                                                                 str(w / "pairs_same_pixels.jsonl")], "error", {}),
           ("degenerate data", "reward-pairs --images-per-prompt 1", ["reward-pairs", "--out", str(w / "p1"),
                                                                      "--images-per-prompt", "1"], "error", {}),
           ("degenerate data", "DPO cache folder is a file", [*dpo, "--data.pairs", str(w / "pairs_dog.jsonl"),
                                                              "--data.cache-dir", str(w / "a_file")], "error", {}),
           ("api", "ddrl.train(config=5)", ["python", api + "ddrl.train(5)"], "error", {}),
           ("api", "ddrl.train(reward=5)", ["python", api + "ddrl.train('shapes-quick', reward=5)"], "error", {}),
           ("api", "ddrl.train(resume='yes')", ["python", api + "ddrl.train('shapes-quick', resume='yes')"], "error", {}),
           ("api", "ddrl.load_config with batch 5", ["python", api + "ddrl.load_config('shapes-quick', "
                                                     "{'train.batch_size': 5})"], "error", {}),
           ("api", "a reward returning None", ["python", api + "ddrl.train('shapes-quick', reward=lambda i, p, m: None, "
                                               f"run_dir={str(w / 'api_none')!r}, run__epochs=1)"], "error", {}),
           ("api", "a differentiable reward without gradients", [
               "python", api + "import torch; ddrl.register_reward('numpy', lambda i, p, m: torch.from_numpy("
               "i.detach().numpy().mean(axis=(1, 2, 3))), differentiable=True); ddrl.train('shapes-draft', "
               f"reward='numpy', run_dir={str(w / 'api_grad')!r}, run__epochs=1, sample__num_steps=2)"], "error", {}),
           ("trackers", "wandb without credentials", [*cfg, "--run.report-to", "wandb"], "error", no_wandb),
           ("trackers", "MLflow server unreachable", [*cfg, "--run.report-to", "mlflow"], "error",
            {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
           ("trackers", "--run.report-to none,wandb", [*cfg, "--run.report-to", "none,wandb"], "error", {}),
           ("launch", "accelerate's DeepSpeed environment", cfg, "error", {"ACCELERATE_USE_DEEPSPEED": "true"}),
           ("launch", "accelerate's FSDP1 environment", cfg, "error", {"ACCELERATE_USE_FSDP": "true",
                                                                      "FSDP_VERSION": "1"}),
           ("models", "a folder whose unet is another model", [*cfg, "--model.name", str(model)], "error", {}),
           ("models", "model.resolution on SD 1.x", [*cfg, "--model.resolution", "512"], "error", {}),
           ("algorithms", "AlignProp truncation never drawable", [
               *cfg, "--train.algorithm", "alignprop", "--sample.sampler", "ddim", "--reward.name", "aesthetic",
               "--backprop.truncation-mean-steps", "1.5", "--backprop.truncation-std", "0"], "error", {}),
           ("optimizer", "8-bit AdamW, two checkpoints (control)", [
               "train", "shapes-alignment", *TINY, "--run.epochs", "2", "--train.optimizer", "adamw8bit",
               "--reward.name", "jpeg-compressibility", "--run.output-dir", str(w / "adamw8bit")], "ok", {})]
    return out


def cases(w: Path) -> list[tuple[str, str, list[str], str]]:
    """(class, what, argv, expected outcome: 'error' or 'ok')."""
    from PIL import Image

    (w / "a_file").write_text("x")
    (w / "a_dir.png").mkdir()
    (w / "huge.txt").write_text("a red circle " * 800_000)
    (w / "long.txt").write_text("a red circle and " * 12 + "\n")
    (w / "latin1.txt").write_bytes("a red circle\ncaf\xe9 circle\n".encode("latin-1"))
    (w / "null.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": null}\n')
    (w / "empty.jsonl").write_text('{"prompt": ""}\n')
    (w / "number.jsonl").write_text('{"prompt": 7}\n')
    (w / "nan.yaml").write_text("train:\n  learning_rate: .nan\n")
    (w / "bad.yaml").write_bytes(b"train:\n  algorithm: ddpo-is\n  \xff\n")
    (w / "model").mkdir()
    (w / "model" / "reward_model.json").write_text("{}")
    for name, colour in (("r.png", (255, 0, 0)), ("r2.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        Image.new("RGB", (48, 48), colour).save(w / name)
    rows = {"unknown_field.jsonl": [{"prompt": "a red circle", "chosen": "r.png", "rejected": "b.png", "label": 1}],
            "null_prompt.jsonl": [{"prompt": None, "chosen": "r.png", "rejected": "b.png"}],
            "one_prompt.jsonl": [{"prompt": "a red circle", "chosen": "r.png", "rejected": "b.png"}],
            "identical.jsonl": [{"prompt": p, "chosen": "r.png", "rejected": "r2.png"}
                                for p in ("a red circle", "a blue square", "two triangles")]}
    for name, lines in rows.items():
        (w / name).write_text("".join(json.dumps(row) + "\n" for row in lines))
    run = w / "run"
    cfg = ["train", "shapes-alignment", *TINY]
    numbers = [("train.learning-rate", "inf"), ("train.learning-rate", "nan"), ("train.learning-rate", "-1"),
               ("sample.guidance-scale", "nan"), ("sample.guidance-scale", "0.5"), ("sample.guidance-scale", "inf"),
               ("sample.eta", "nan"), ("sample.eta", "2"), ("train.clip-range", "inf"), ("train.kl-coef", "-1"),
               ("train.ema-decay", "1"), ("sample.noise-level", "nan"), ("run.seed", "-1"), ("model.lora-alpha", "0"),
               ("train.adam-beta2", "1"), ("train.max-grad-norm", "nan")]
    out = [("numbers", f"--{k} {v}", [*cfg, f"--{k}", v, "--run.output-dir", str(w / "never")], "error")
           for k, v in numbers]
    out += [("numbers", "sample --guidance nan", ["sample", "--guidance", "nan"], "error"),
            ("numbers", "sample --eta nan", ["sample", "--eta", "nan"], "error"),
            ("numbers", "sample --steps 0", ["sample", "--steps", "0"], "error"),
            ("numbers", "reward-train --lr inf", ["reward-train", str(w / "identical.jsonl"), "--out", str(w / "m1"),
                                                  "--lr", "inf"], "error"),
            ("numbers", "reward spec nan*jpeg-compressibility", [*cfg, "--reward.name", "nan*jpeg-compressibility"],
             "error"),
            ("numbers", "config file with learning_rate .nan", ["train", str(w / "nan.yaml")], "error"),
            ("paths", "sample --out a folder", ["sample", "--out", str(w / "a_dir.png")], "error"),
            ("paths", "sample --out under a file", ["sample", "--out", str(w / "a_file" / "g.png")], "error"),
            ("paths", "evaluate --json a folder", ["evaluate", "--json", str(w)], "error"),
            ("paths", "train --run.output-dir a file", [*cfg, "--run.output-dir", str(w / "a_file")], "error"),
            ("paths", "reward-pairs --out a file", ["reward-pairs", "--out", str(w / "a_file")], "error"),
            ("paths", "reward-train --out holding a model", ["reward-train", str(w / "identical.jsonl"), "--out",
                                                            str(w / "model")], "error"),
            ("paths", "pretrain --work-dir under a file", ["pretrain", "vae", "--work-dir", str(w / "a_file" / "x")],
             "error"),
            ("prompts", "10 MB prompt file for training", [*cfg, "--prompts.source", f"file:{w / 'huge.txt'}",
                                                          "--reward.name", "jpeg-compressibility",
                                                          "--run.output-dir", str(w / "never")], "error"),
            ("prompts", "10 MB prompt file for sampling", ["sample", "--prompt-file", str(w / "huge.txt")], "error"),
            ("prompts", "a 49-token prompt", ["sample", "--prompt-file", str(w / "long.txt"), "--out",
                                             str(w / "g.png")], "error"),
            ("prompts", "a Latin-1 prompt file", ["sample", "--prompt-file", str(w / "latin1.txt")], "error"),
            ("prompts", "JSONL null prompt", [*cfg, "--prompts.source", f"file:{w / 'null.jsonl'}"], "error"),
            ("prompts", "JSONL empty prompt", [*cfg, "--prompts.source", f"file:{w / 'empty.jsonl'}"], "error"),
            ("prompts", "JSONL number as prompt", [*cfg, "--prompts.source", f"file:{w / 'number.jsonl'}"], "error"),
            ("prompts", "config file not UTF-8", ["train", str(w / "bad.yaml")], "error"),
            ("reward data", "pairs with an unknown field", ["reward-train", str(w / "unknown_field.jsonl"), "--out",
                                                            str(w / "m2")], "error"),
            ("reward data", "pairs with a null prompt", ["reward-train", str(w / "null_prompt.jsonl"), "--out",
                                                         str(w / "m3")], "error"),
            ("reward data", "pairs all identical images", ["reward-train", str(w / "identical.jsonl"), "--out",
                                                           str(w / "m4")], "error"),
            ("reward data", "pairs of a single prompt", ["reward-train", str(w / "one_prompt.jsonl"), "--out",
                                                         str(w / "m5")], "error")]
    resume = [("truncated config.yaml", "truncate", [], "error"),
              ("hand-edited reward.name", "edit_reward", [], "error"),
              ("hand-edited run.epochs", "edit_epochs", [], "error"),
              ("fewer --run.epochs", None, ["--run.epochs", "1"], "error"),
              ("another --train.learning-rate", None, ["--train.learning-rate", "1e-4"], "error"),
              ("damaged eval_before.json", "eval", ["--run.epochs", "3"], "error"),
              ("damaged latest checkpoint", "checkpoint", ["--run.epochs", "3"], "ok"),
              ("more --run.epochs", None, ["--run.epochs", "3"], "ok")]
    out += [("resume", what, ["resume", str(run), damage or "", *extra], expect)
            for what, damage, extra, expect in resume]
    return out


def damaged_copy(run: Path, damage: str, dest: Path) -> Path:
    shutil.copytree(run, dest)
    cfg = dest / "config.yaml"
    if damage == "truncate":
        cfg.write_text("".join(cfg.read_text().splitlines(keepends=True)[:30]))
    elif damage == "edit_reward":
        cfg.write_text(cfg.read_text().replace("name: jpeg-compressibility", "name: shapes-verifier"))
    elif damage == "edit_epochs":
        cfg.write_text(cfg.read_text().replace("epochs: 2", "epochs: 20"))
    elif damage == "eval":
        (dest / "eval_before.json").write_text('{"heldout": {"rew')
    elif damage == "checkpoint":
        f = dest / "checkpoints" / "epoch_000002" / "trainable.safetensors"
        data = bytearray(f.read_bytes())
        data[-3] ^= 0x10
        f.write_bytes(bytes(data))
    return dest


def server_cases() -> list[tuple[str, int]]:
    """(what, HTTP status) for bad requests to an in-process reward server."""
    import threading

    from PIL import Image

    from ddrl.rewards import get_reward
    from ddrl.rewards.serve import RewardServer

    srv = RewardServer(get_reward("jpeg-compressibility"), "127.0.0.1", 0, quiet=True, max_pixels=4_000_000)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def post(body: bytes, kind: str) -> int:
        req = urllib.request.Request(srv.url + "/score", data=body, method="POST", headers={"Content-Type": kind})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def npz(images, compressed=False) -> bytes:
        buf = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buf, images=images, prompts=np.array(["a"] * len(images)))
        return buf.getvalue()

    def png(im) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()], "prompts": ["a"]}).encode()

    good = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    trunc = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(trunc, format="PNG")
    cut = json.dumps({"images": [base64.b64encode(trunc.getvalue()[:-40]).decode()], "prompts": ["a"]}).encode()
    try:
        return [("npz with a NaN pixel", post(npz(nan), "application/x-npz")),
                ("npz with an inf pixel", post(npz(np.where(np.isnan(nan), np.inf, nan)), "application/x-npz")),
                ("npz of uint16", post(npz((good * 65535).astype(np.uint16)), "application/x-npz")),
                ("npz decompressing to 100 MB", post(npz(np.zeros((1, 3, 2048, 2048)), True), "application/x-npz")),
                ("16-bit PNG", post(png(Image.new("I;16", (8, 8))), "application/json")),
                ("PNG of 9 megapixels", post(png(Image.new("RGB", (3000, 3000))), "application/json")),
                ("truncated PNG", post(cut, "application/json")),
                ("valid npz (control)", post(npz(good), "application/x-npz"))]
    finally:
        srv.shutdown()
        srv.server_close()


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        run = w / "run"
        rc, err, s = ddrl("train", "shapes-alignment", *TINY, "--run.epochs", "2",
                          "--reward.name", "jpeg-compressibility",
                          "--run.output-dir", str(run), cwd=w)
        assert rc == 0, err[-2000:]
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        network = [("port in use", ["--port", str(busy.getsockname()[1])]),
                   ("unknown host", ["--host", "no-such-host.invalid"]),
                   ("address not on this machine", ["--host", "192.0.2.77"]), ("port 70000", ["--port", "70000"])]
        all_cases = cases(w) + [("network", what, ["reward-server", "--reward", "jpeg-compressibility", *a], "error")
                                for what, a in network]
        all_cases = [(*c, {}) for c in all_cases] + newer_cases(w)
        for i, (kind, what, argv, expect, env) in enumerate(all_cases):
            resume = argv[0] == "resume"
            if resume:
                folder = damaged_copy(run, argv[2], w / f"resume{i}") if argv[2] else shutil.copytree(run, w / f"r{i}")
                argv = ["train", "--resume", str(folder), *argv[3:]]
            before = set(w.rglob("*"))
            rc, err, s = ddrl(*argv, cwd=w, env=env)
            left = [] if resume or expect == "ok" else sorted(set(w.rglob("*")) - before)
            last = err.splitlines()[-1] if err else ""
            if argv[0] == "python":  # the API raises: its last line names a ddrl error type, not a TypeError
                one_line = rc != 0 and last.startswith(("ddrl.", "ValueError: ")) and "Error: " in last
            else:
                one_line = rc != 0 and "Traceback" not in err and last.startswith("ddrl ")
            good = (one_line and not left) if expect == "error" else rc == 0
            rows.append((kind, what, rc, f"{s:.1f}", "yes" if good else "NO", last[:150].replace("|", "/")))
            print(rows[-1], flush=True)
        busy.close()
    server = server_cases()
    lines = ["# Bad inputs: what each one gets", "", f"`python benchmarks/bad_inputs.py`; {len(rows)} command lines "
             f"and {len(server)} reward-server requests.", "",
             "| class | input | exit | seconds | one line, nothing left | message (last line of stderr, cut at 150) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {w_} | {rc} | {s} | {g} | {m} |" for k, w_, rc, s, g, m in rows]
    lines += ["", "| reward-server request | HTTP status |", "|---|---|"] + [f"| {w_} | {c} |" for w_, c in server]
    ok = sum(r[4] == "yes" for r in rows)
    lines += ["", f"{ok} of {len(rows)} command lines behaved as expected: a one-line error and nothing left behind,"
              " or, for the controls expected to succeed (two resumes, one 8-bit AdamW run), a finished run. "
              "Whether each message names the problem and the fix is for a reader of the last column to judge."]
    out = ROOT / "benchmarks" / "results" / "bad_inputs.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"{ok}/{len(rows)} as expected; wrote {out}")


if __name__ == "__main__":
    main()
