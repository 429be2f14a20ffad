"""Peak GPU memory and seconds per epoch at real model sizes, for a GPU machine.

Weights cannot be downloaded here, so each model is built from its published architecture with
random weights (speed and memory do not depend on the values), saved once as a diffusers folder
and loaded through ddrl's ordinary loading code:

    sd15   SD 1.5: UNet2DConditionModel (860M) at 512x512, CLIP ViT-L/14 text encoder, the SD VAE;
           DDPO-IS as ddpo-pytorch's per-GPU compressibility run: 8 samples per batch, train batch 4
    sdxl   SDXL base: UNet (2.6B) at 1024x1024, CLIP ViT-L + OpenCLIP bigG text encoders, its VAE;
           DDPO-IS, 4 samples per batch, train batch 2
    sd35m  SD3.5 Medium: MMDiT-X transformer (2.5B, 24 layers, dual attention in the first 13) at
           512x512 as flow_grpo trains it, two CLIPs and T5-XXL's encoder (4.7B, frozen), the
           16-channel VAE; Flow-GRPO (SDE), groups of 8, train batch 8

Each model runs one epoch per fine-tuning mode (LoRA r16, full; gradient checkpointing off, on),
each in its own process, at fewer steps than the papers (20; the epoch time scales with steps).
Printed and written to benchmarks/results/gpu_scale.md: peak allocated GPU memory, the memory
estimate ddrl prints, and seconds for the epoch (sampling, reward, update).

    python benchmarks/gpu_scale.py                 # all models, all modes; under 10 minutes on an H100/H200
    python benchmarks/gpu_scale.py --models sd15 --tiny   # the same code with tiny configs, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"lora": {"model.lora": True, "model.lora_rank": 16, "model.lora_alpha": 16.0},
         "lora+ckpt": {"model.lora": True, "model.lora_rank": 16, "model.lora_alpha": 16.0,
                       "model.gradient_checkpointing": True},
         "full": {"model.lora": False}, "full+ckpt": {"model.lora": False, "model.gradient_checkpointing": True}}
RUNS = {  # per-GPU sizes of the papers' runs (fewer steps)
    "sd15": {"train.algorithm": "ddpo-is", "sample.sampler": "ddim", "sample.batch_size": 8,
             "sample.num_batches_per_epoch": 1, "train.batch_size": 4, "sample.num_steps": 20,
             "sample.guidance_scale": 5.0, "train.advantages": "batch"},
    "sdxl": {"train.algorithm": "ddpo-is", "sample.sampler": "ddim", "sample.batch_size": 4,
             "sample.num_batches_per_epoch": 1, "train.batch_size": 2, "sample.num_steps": 20,
             "sample.guidance_scale": 5.0, "train.advantages": "batch"},
    "sd35m": {"train.algorithm": "flow-grpo", "sample.sampler": "flow-sde", "sample.batch_size": 8,
              "sample.images_per_prompt": 8, "sample.num_batches_per_epoch": 1, "train.batch_size": 8,
              "sample.num_steps": 10, "sample.guidance_scale": 4.5, "train.advantages": "group"},
}


def _clip_text(tok, hidden, layers, heads, projection=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         hidden_act="gelu" if hidden > 768 else "quick_gelu", projection_dim=projection or hidden,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _t5_xxl(tok, s):
    """T5-XXL's encoder (d_model 4096, 24 layers, 64 heads of 64, d_ff 10240, gated GELU), with the
    shapes world's small vocabulary (its 32k-token embedding would add 0.13B frozen weights)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=4096 // s, d_kv=64, d_ff=10240 // s,
                                   num_layers=24 // s, num_heads=64 // s, feed_forward_proj="gated-gelu",
                                   dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))


def build(name: str, folder: Path, tiny: bool) -> None:
    """The model's diffusers folder, random weights in fp16 (loaded as fp32 by ddrl)."""
    import diffusers
    import torch

    from ddrl.pretrain import components as C

    if (folder / "model_index.json").exists():
        return
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = C.make_clip_tokenizer()
    tok.model_max_length = 77
    s = 4 if tiny else 1  # tiny: every width divided by 4 (heads kept), 64px images
    g = 8 if tiny else 32  # group-norm groups
    px = 64 if tiny else (1024 if name == "sdxl" else 512)
    with torch.device(device):
        if name in ("sd15", "sdxl"):
            vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                          block_out_channels=[128 // s, 256 // s, 512 // s, 512 // s],
                                          down_block_types=["DownEncoderBlock2D"] * 4,
                                          up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
                                          norm_num_groups=g, sample_size=px,
                                          scaling_factor=0.18215 if name == "sd15" else 0.13025)
            sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        if name == "sd15":
            unet = diffusers.UNet2DConditionModel(sample_size=px // 8, cross_attention_dim=768 // s,
                                                  block_out_channels=[320 // s, 640 // s, 1280 // s, 1280 // s],
                                                  attention_head_dim=8, norm_num_groups=g)
            pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=_clip_text(tok, 768 // s, 12, 12),
                                                     tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                                     feature_extractor=None, requires_safety_checker=False)
        elif name == "sdxl":
            unet = diffusers.UNet2DConditionModel(
                sample_size=px // 8, block_out_channels=[320 // s, 640 // s, 1280 // s],
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
                cross_attention_dim=2048 // s, use_linear_projection=True, addition_embed_type="text_time",
                norm_num_groups=g,
                addition_time_embed_dim=256 // s, projection_class_embeddings_input_dim=(6 * 256 + 1280) // s)
            pipe = diffusers.StableDiffusionXLPipeline(
                vae=vae, text_encoder=_clip_text(tok, 768 // s, 12, 12), tokenizer=tok,
                text_encoder_2=_clip_text(tok, 1280 // s, 32, 20, projection=1280 // s), tokenizer_2=tok,
                unet=unet, scheduler=sched)
        else:
            t5_tok = C.make_t5_tokenizer()
            t5_tok.model_max_length = 256
            vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                          block_out_channels=[128 // s, 256 // s, 512 // s, 512 // s],
                                          down_block_types=["DownEncoderBlock2D"] * 4,
                                          up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
                                          norm_num_groups=g, sample_size=px, scaling_factor=1.5305, shift_factor=0.0609,
                                          use_quant_conv=False, use_post_quant_conv=False)
            transformer = diffusers.SD3Transformer2DModel(
                sample_size=px // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=24 // s,
                attention_head_dim=64, num_attention_heads=24 // s, joint_attention_dim=4096 // s,
                caption_projection_dim=1536 // s, pooled_projection_dim=2048 // s, pos_embed_max_size=384 // s,
                dual_attention_layers=tuple(range(13 // s)), qk_norm="rms_norm")
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                text_encoder=_clip_text(tok, 768 // s, 12, 12, projection=768 // s), tokenizer=tok,
                text_encoder_2=_clip_text(tok, 1280 // s, 32, 20, projection=1280 // s), tokenizer_2=tok,
                text_encoder_3=_t5_xxl(t5_tok, s), tokenizer_3=t5_tok)
    pipe.to(torch.float16 if device == "cuda" else torch.float32).save_pretrained(folder)


def one(name: str, mode: str, folder: Path, tiny: bool) -> dict:
    """One epoch in this process: peak memory, the printed estimate, seconds."""
    import tempfile

    import torch

    from ddrl.config import Config, apply_overrides
    from ddrl.images.loop import ImageRun

    over = RUNS[name] | MODES[mode] | {"model.name": str(folder), "reward.name": "jpeg-compressibility",
                                      "run.mixed_precision": "bf16" if torch.cuda.is_available() else "no"}
    if tiny:
        over |= {"sample.num_steps": 2}
    cfg = apply_overrides(Config(), over)
    cuda = torch.cuda.is_available()
    tr = ImageRun(cfg, Path(tempfile.mkdtemp()))
    est = tr.memory_estimate()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    m = tr.run_epoch(0)
    if cuda:
        torch.cuda.synchronize()
    return {"model": name, "mode": mode, "epoch_s": time.perf_counter() - t0,
            "sample_s": m.get("perf/sample_s"), "train_s": m.get("perf/train_s"),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "estimate_gib": est.total / 2**30, "samples": cfg.samples_per_epoch, "steps": cfg.sample.num_steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--tiny", action="store_true", help="tiny configs (checks the script on a CPU)")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "gpu-scale"), help="where the built models are kept")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cache = Path(args.cache) / ("tiny" if args.tiny else "full")
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], cache / args.one[0], args.tiny)))
        return
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        build(name, cache / name, args.tiny)
        print(f"{name}: built in {time.perf_counter() - t0:.0f} s", flush=True)
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--one", name, mode, "--cache", args.cache] + (["--tiny"] if args.tiny else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no output"
                rows.append({"model": name, "mode": mode, "error": last})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| model | mode | samples x steps | peak GPU memory (GiB) | ddrl's estimate (GiB) | epoch (s) | "
             "sampling (s) | update (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['mode']} | | failed: {r['error'][:120]} | | | | |")
        else:
            lines.append(f"| {r['model']} | {r['mode']} | {r['samples']} x {r['steps']} | {r['peak_gib']:.1f} | "
                         f"{r['estimate_gib']:.1f} | {r['epoch_s']:.1f} | {r['sample_s']:.1f} | {r['train_s']:.1f} |")
    text = "\n".join(lines)
    print(text)
    if not args.tiny:
        (ROOT / "benchmarks" / "results" / "gpu_scale.md").write_text(
            "# Real-size models on one GPU (random weights)\n\n`python benchmarks/gpu_scale.py`; see its "
            "docstring for the models and sizes.\n\n" + text + "\n")


if __name__ == "__main__":
    main()
