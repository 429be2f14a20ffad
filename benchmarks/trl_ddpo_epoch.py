"""One DDPO epoch with TRL 0.23.1's DDPOTrainer, timed; run by ddpo_epoch.py in a separate
environment that has `trl[diffusers]==0.23.1` (never a dependency of ddrl). Prints JSON.

    python benchmarks/trl_ddpo_epoch.py MODEL_FOLDER PROMPTS_JSON --epochs 3 --samples 16 --steps 20 [--full]

`--full` trains the whole UNet (TRL's `use_lora=False`) instead of LoRA r4.
"""

import argparse
import io
import json
import random
import tempfile
import time

import numpy as np
import torch
from PIL import Image


def jpeg_compressibility(images, prompts, metadata):
    """Minus the JPEG size in kB at quality 95, the same definition ddrl uses."""
    out = []
    for img in images:
        arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        out.append(-buf.tell() / 1000)
    return torch.tensor(out), {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    args = ap.parse_args()

    import accelerate
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    accelerate.PartialState()  # TRL 0.23.1 logs through accelerate before creating its Accelerator
    prompts = json.load(open(args.prompts))
    rng = random.Random(args.seed)
    cfg = DDPOConfig(
        num_epochs=args.epochs, mixed_precision="no", sample_num_steps=args.steps, sample_eta=1.0,
        sample_guidance_scale=5.0, sample_batch_size=args.samples, sample_num_batches_per_epoch=1,
        train_batch_size=args.samples, train_gradient_accumulation_steps=1, train_num_inner_epochs=1,
        train_timestep_fraction=1.0, train_learning_rate=args.lr, train_adam_weight_decay=1e-4,
        train_clip_range=1e-4, train_adv_clip_max=5, train_max_grad_norm=1.0,
        per_prompt_stat_tracking=False, async_reward_computation=False, log_with=None, seed=args.seed,
        project_kwargs={"project_dir": tempfile.mkdtemp(), "automatic_checkpoint_naming": True},
        save_freq=10**9)
    pipe = DefaultDDPOStableDiffusionPipeline(args.model, use_lora=not args.full)
    pipe.set_progress_bar_config(disable=True)
    trainer = DDPOTrainer(cfg, jpeg_compressibility, lambda: (rng.choice(prompts), {}), pipe)

    times = {"sample": 0.0, "train": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            times[name] += time.perf_counter() - t0
            return out
        return wrapper

    trainer._generate_samples = timed("sample", trainer._generate_samples)
    trainer._train_batched_samples = timed("train", trainer._train_batched_samples)
    rewards, epochs = [], []

    def reward_fn(images, prompts, metadata):
        out = jpeg_compressibility(images, prompts, metadata)
        rewards.append(float(out[0].mean()))
        return out

    trainer.reward_fn = reward_fn
    global_step = 0
    for epoch in range(args.epochs):
        for k in times:
            times[k] = 0.0
        t0 = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        epochs.append({"epoch_s": time.perf_counter() - t0, **{f"{k}_s": v for k, v in times.items()}})
    print(json.dumps({"epochs": epochs, "rewards": rewards}))


if __name__ == "__main__":
    main()
