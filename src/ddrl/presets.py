"""Named starting points for `ddrl train`. Each is a set of overrides of the `Config` defaults.

The shapes-* presets run on this package's built-in model on a CPU. The sd15-* presets are the
DDPO paper's settings for Stable Diffusion (Black et al. 2023; kvablack/ddpo-pytorch
config/dgx.py), written for one GPU process; their global batch sizes assume `accelerate
launch` on 8 GPUs. They are documented here and not run in ddrl's tests, which have no GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config, ConfigError, _hint, apply_overrides


@dataclass(frozen=True)
class Preset:
    description: str
    overrides: dict[str, Any]


_SHAPES_COMMON = {"model.name": "shapes-sd", "prompts.source": "shapes:train",
                  "prompts.eval_source": "shapes:heldout"}

_SD15 = {"model.name": "CompVis/stable-diffusion-v1-4", "prompts.source": "animals",
         "prompts.eval_source": "animals", "sample.num_steps": 50, "sample.eta": 1.0,
         "sample.guidance_scale": 5.0, "sample.batch_size": 8, "sample.num_batches_per_epoch": 4,
         "train.batch_size": 4, "train.gradient_accumulation_steps": 2, "train.learning_rate": 3e-4,
         "train.clip_range": 1e-4, "train.buffer_size": 16, "train.min_count": 16,
         "model.lora_rank": 4, "model.lora_alpha": 4.0, "run.epochs": 100,
         "run.mixed_precision": "fp16", "eval.images_per_prompt": 1, "eval.train_images_per_prompt": 1}

# DDPO on shapes-sd (the main job before shapes-quick, about 10 minutes): 10 DDPM-like steps sample
# as well as 20 on shapes-sd; 4 images per prompt give per-prompt advantages from the first
# epoch; 4 PPO minibatches per epoch; LoRA rank 16 on the attention projections. With 10 steps
# each step's log-prob moves more per update than with the paper's 50, and clip range 1e-4
# clipped about half of each epoch's later minibatches; 1e-3 doubled the held-out gain. Learning
# rates from the sweep in docs/results.md: 1e-3 for DDPO-IS and DDPO-SF, 3e-4 for RWR (at the
# LoRA default 3e-3, SF and RWR turned the images to noise within 12 epochs).
_ALIGNMENT = _SHAPES_COMMON | {
    "reward.name": "shapes-verifier", "sample.num_steps": 10, "sample.batch_size": 32,
    "sample.num_batches_per_epoch": 2, "sample.images_per_prompt": 4, "train.min_count": 4,
    "train.batch_size": 16, "train.clip_range": 1e-3, "train.learning_rate": 1e-3, "model.lora_rank": 16,
    "model.lora_alpha": 16.0, "run.epochs": 25, "eval.grid_every": 5}

# Flow-GRPO on the built-in flow model: 16 prompts per epoch in groups of 4, 10 rollout steps of
# which only the first 3 (the high-noise steps that place and shape the objects) are stochastic
# and trained, as Flow-GRPO-Fast does, with ODE steps after them; 20 ODE steps for evaluation;
# group advantages with the batch std, zero-spread groups skipped; 4 PPO minibatches per epoch,
# clip range 1e-3, LoRA r16 at lr 1e-3. At lr 3e-3 the training reward rose for about 30 epochs
# and then fell below its start; docs/flow.md has the runs.
_FLOW = {"model.name": "shapes-flow", "prompts.source": "shapes:train", "prompts.eval_source": "shapes:heldout",
         "reward.name": "shapes-verifier", "train.algorithm": "flow-grpo", "sample.sampler": "flow-sde",
         "sample.noise_level": 0.7, "sample.num_steps": 10, "sample.noise_window_start": 0,
         "sample.noise_window_size": 3, "eval.num_steps": 20, "sample.batch_size": 32,
         "sample.num_batches_per_epoch": 2, "sample.images_per_prompt": 4, "train.advantages": "group",
         "train.batch_size": 16, "train.clip_range": 1e-3, "train.learning_rate": 1e-3,
         "model.lora_rank": 16, "model.lora_alpha": 16.0, "run.epochs": 100, "eval.grid_every": 20,
         "eval.images_per_prompt": 4, "eval.train_images_per_prompt": 2}

# The main job (`ddrl train` with no arguments), sized for 5 minutes on a 2-core CPU. Pref-GRPO on
# shapes-flow learned the most per minute of what was measured (benchmarks/results/main_job.md):
# the flow model's rollouts and updates are cheaper than shapes-sd's, and only the 3 high-noise
# steps are trained; DDPO on shapes-sd moved held-out accuracy by 2 points or less in the same
# time, even when trained on the held-out prompts themselves. Full fine-tuning (LoRA r16 at 3e-3
# gained about half as much) at lr 1.25e-4 for 36 epochs: +10.1 ± 0.8 points over 3 seeds, against
# +8.3 ± 0.5 for 1.5e-4 and 24 epochs, a lead within noise (at 1.5e-4 the gain peaked near 24
# epochs and 36 lost half of it; 1e-4 for 40 epochs varied more between seeds). 6 rollout steps
# instead of 10 (the 3 trained ones are then half the trajectory), the 78 colour-attribution
# training prompts only (three quarters of the held-out prompts are colour attribution), and the
# evaluation on 8 images per held-out prompt (440 images, 10 ODE steps) so its paired standard
# error is about 0.02; no evaluation on training prompts. Pref-GRPO's win rates rather than
# Flow-GRPO's raw scores, which gained +7.6 ± 1.4 over 3 seeds at the former settings.
_QUICK = _FLOW | {"train.algorithm": "pref-grpo", "sample.num_steps": 6, "model.lora": False,
                  "train.learning_rate": 1.25e-4, "prompts.source": "shapes:train:color_attr", "run.epochs": 36,
                  "eval.num_steps": 10, "eval.images_per_prompt": 8, "eval.train_images_per_prompt": 0,
                  "eval.grid_every": 12}

# SD3.5-Medium paper settings (Flow-GRPO config/grpo.py geneval_sd3 / pickscore_sd3; DiffusionNFT
# config/nft.py), written per GPU process for `accelerate launch` on 8 GPUs: 48 groups of 24
# images per epoch, KL in the training script's form (train.kl_form code) at the papers' beta, and
# flow_grpo's EMA (decay 0.9 with warm-up, every 8 optimizer steps) for evaluation and export.
# GenEval and PickScore rewards need their scorers (GenEval as a reward server). Not run in
# ddrl's tests.
_SD35 = {"model.name": "stabilityai/stable-diffusion-3.5-medium", "model.resolution": 512,
         "model.max_sequence_length": 128, "sample.num_steps": 10, "eval.num_steps": 40,
         "sample.guidance_scale": 4.5, "sample.sampler": "flow-sde", "sample.noise_level": 0.7,
         "sample.batch_size": 9, "sample.images_per_prompt": 24, "sample.num_batches_per_epoch": 16,
         "train.algorithm": "flow-grpo", "train.advantages": "group", "train.global_std": True,
         "train.batch_size": 9, "train.gradient_accumulation_steps": 8, "train.learning_rate": 3e-4,
         "train.clip_range": 1e-4, "train.timestep_fraction": 0.99, "train.kl_form": "code",
         "train.ema_decay": 0.9, "train.ema_update_interval": 8, "train.ema_per": "minibatch",
         "model.lora_rank": 32,
         "model.lora_alpha": 64.0, "run.mixed_precision": "fp16", "run.epochs": 1000,
         "eval.images_per_prompt": 1, "eval.train_images_per_prompt": 1}

# Diffusion-DPO on shapes-sd (docs/dpo.md): offline pairs from `ddrl reward-pairs --out pairs`,
# 10 epochs of 512 pairs (about half a pass over its 9,828 training pairs), no mirroring (the
# prompts say left and right), the reference's beta and 20% empty prompts, LoRA r4 at lr 1e-3
# (at 1e-4 the implicit accuracy rose more slowly). The online form samples groups of 4 from the
# reference and scores them by the same hidden preference.
_SHAPES_DPO = _SHAPES_COMMON | {"train.algorithm": "dpo", "data.pairs": "pairs", "data.hflip": False,
                                "data.pairs_per_epoch": 512, "train.batch_size": 16, "train.learning_rate": 1e-3,
                                "sample.num_steps": 10, "run.epochs": 10, "reward.name": "shapes-preference",
                                "eval.images_per_prompt": 4, "eval.train_images_per_prompt": 0}

# Diffusion-DPO's paper runs (SalesforceAIResearch/DiffusionDPO launchers/sd15.sh and sdxl.sh) on
# Pick-a-Pic v2, written per GPU process for `accelerate launch` on 16 GPUs: 1 pair per process x
# 128 accumulation steps = 2048 pairs per optimizer step, full fine-tuning at 1e-8 scaled by that
# batch (2.048e-5), beta_dpo 5000 with the reference's 1/2 (effective 2500), 20% empty prompts,
# random flips, constant rate after warm-up (500 steps SD 1.5, 200 SDXL), 2000 steps in 200 epochs
# of 10 steps. SDXL trains with Adafactor, as the reference does for it. The evaluation samples
# held-out animal prompts scored by PickScore. Not run in ddrl's tests.
_DPO_PAPER = {"train.algorithm": "dpo", "data.pairs": "yuvalkirstain/pickapic_v2", "data.hflip": True,
              "data.empty_prompt_fraction": 0.2, "data.pairs_per_epoch": 20480, "model.lora": False,
              "train.batch_size": 1, "train.gradient_accumulation_steps": 128, "train.learning_rate": 2.048e-5,
              "dpo.beta": 2500.0, "train.weight_decay": 1e-2, "train.max_grad_norm": 1.0,
              "run.epochs": 200, "run.mixed_precision": "fp16", "reward.name": "pickscore",
              "prompts.source": "animals", "prompts.eval_source": "animals", "sample.num_steps": 50,
              "sample.eta": 0.0, "sample.guidance_scale": 7.5, "eval.images_per_prompt": 1,
              "eval.train_images_per_prompt": 0}

# Reward backpropagation on shapes-sd (docs/reward-backprop.md) against the Bradley-Terry reward
# that `ddrl reward-train pairs/train.jsonl --out reward-model` fits to `ddrl reward-pairs --out
# pairs` (set reward.name to learned(path=...) elsewhere): 10 DDIM steps, 32 samples per epoch in
# minibatches of 16, LoRA r4 at lr 1e-3, KL 0.1 to the base model and 12 epochs. In the
# reward-hacking runs (docs/reward-backprop.md) the proxy then rose from 0.56 to 2.1 while the true
# hidden preference and the verifier stayed within noise of the base; without the KL the proxy
# was hacked from about epoch 12 (blue backgrounds, magenta blobs), and KL 1 held the model so
# close to the base that its images barely changed.
_SHAPES_BACKPROP = _SHAPES_COMMON | {
    "train.algorithm": "draft", "reward.name": "learned(path=reward-model)", "sample.num_steps": 10,
    "sample.batch_size": 16, "sample.num_batches_per_epoch": 2, "train.batch_size": 16, "model.lora_rank": 4,
    "model.lora_alpha": 4.0, "train.learning_rate": 1e-3, "train.kl_coef": 0.1, "run.epochs": 12,
    "reward.asynchronous": False, "eval.images_per_prompt": 4, "eval.train_images_per_prompt": 0}

# ReFL (THUDM/ImageReward scripts/train_refl.sh, ReFL.py) on Stable Diffusion 1.4: full fine-tuning,
# 40 DDPM steps (DDIM eta 1) without guidance, one step with gradients at m in [30, 39], ImageReward
# through ReLU(2 - r) x 1e-3, lr 1e-5 constant, weight decay 1e-2, 2 images x 4 accumulation
# steps per process on 8 GPUs, 100 optimizer steps, EMA 0.9999, fp16. The paper trained on the
# prompts of its refl_data.json (prompts.source file:PATH). Not run in ddrl's tests.
# AlignProp (mihirp1998/AlignProp aesthetic.sh, config/alignprop_config.py) on SD 1.5: LoRA r4,
# 50 DDIM steps at eta 1 and guidance 5, gaussian truncation (about the last 8 steps), the
# aesthetic predictor through |r - 10| x 0.01, lr 1e-3, weight decay 1e-4, 8 images x 4
# accumulation steps per process on 4 GPUs (128 per optimizer step), 20 optimizer steps. Not run
# in ddrl's tests.
_SD_BACKPROP = {"prompts.source": "animals", "prompts.eval_source": "animals", "sample.sampler": "ddim",
                "sample.eta": 1.0, "run.mixed_precision": "fp16", "reward.asynchronous": False,
                "eval.images_per_prompt": 1, "eval.train_images_per_prompt": 0, "train.max_grad_norm": 1.0}

PRESETS: dict[str, Preset] = {
    "shapes-quick": Preset(
        "Pref-GRPO on shapes-flow (full fine-tuning) with the verifier reward, sized for 5 minutes on a 2-core CPU",
        _QUICK),
    "shapes-alignment": Preset(
        "DDPO-IS on shapes-sd, reward = verifier partial credit on the training prompts", _ALIGNMENT),
    "shapes-alignment-sf": Preset(
        "DDPO-SF (REINFORCE) on shapes-sd with the verifier reward",
        _ALIGNMENT | {"train.algorithm": "ddpo-sf", "train.gradient_accumulation_steps": 4}),
    "shapes-compressibility-rwr": Preset(
        "reward-weighted regression (sparse weights: the top 10% of each batch) on shapes-sd, reward = minus the JPEG size",
        _SHAPES_COMMON | {"reward.name": "jpeg-compressibility", "train.algorithm": "rwr",
                          "rwr.percentile": 90.0, "train.learning_rate": 1e-3, "sample.num_steps": 10}),
    "shapes-compressibility": Preset(
        "DDPO-IS on shapes-sd, reward = minus the JPEG size",
        _SHAPES_COMMON | {"reward.name": "jpeg-compressibility", "train.advantages": "batch"}),
    "shapes-incompressibility": Preset(
        "DDPO-IS on shapes-sd, reward = the JPEG size",
        _SHAPES_COMMON | {"reward.name": "jpeg-incompressibility", "train.advantages": "batch"}),
    "shapes-flow-grpo": Preset(
        "Flow-GRPO (Flow-SDE sampler) on shapes-flow with the verifier reward", _FLOW),
    "shapes-flow-grpo-cps": Preset(
        "Flow-GRPO with coefficients-preserving sampling (eta 0.8) on shapes-flow",
        _FLOW | {"sample.sampler": "flow-cps", "sample.noise_level": 0.8}),
    "shapes-pref-grpo": Preset(
        "Pref-GRPO on shapes-flow: Flow-GRPO (Flow-SDE) on within-group win rates of the verifier score",
        _FLOW | {"train.algorithm": "pref-grpo"}),
    "shapes-nft": Preset(
        "DiffusionNFT on shapes-flow: CFG-free ODE rollouts, no log-probs",
        _FLOW | {"train.algorithm": "nft", "sample.sampler": "flow-ode", "sample.noise_window_size": 0,
                 "sample.guidance_scale": 1.0, "train.timestep_fraction": 0.5}),
    "sd35-geneval-flow-grpo": Preset(
        "Flow-GRPO's GenEval run on SD3.5-Medium (KL 0.04; GPU, untested here); reward via a GenEval server",
        _SD35 | {"train.kl_coef": 0.04, "reward.name": "remote:http://127.0.0.1:18085"}),
    "sd35-pickscore-flow-grpo": Preset(
        "Flow-GRPO's PickScore run on SD3.5-Medium (KL 0.01; GPU, untested here)",
        _SD35 | {"train.kl_coef": 0.01, "reward.name": "pickscore"}),
    "sd35-geneval-nft": Preset(
        "DiffusionNFT's GenEval run on SD3.5-Medium (CFG-free DPM-Solver++(2M) rollouts, one optimizer "
        "step per epoch; GPU, untested here)",
        _SD35 | {"train.algorithm": "nft", "sample.sampler": "flow-dpm2", "sample.guidance_scale": 1.0,
                 "train.gradient_accumulation_steps": 16, "train.kl_coef": 1e-4, "nft.beta": 1.0,
                 "nft.loss": "x0-adaptive", "nft.old_decay": "ramp", "train.ema_update_interval": 1,
                 "train.ema_per": "step",
                 "reward.name": "remote:http://127.0.0.1:18085"}),
    # CodeGoat24/Pref-GRPO scripts/lora/lora_ur_think_prefgrpo_flux.sh with _common_finetune.sh:
    # FLUX.1-dev at 720 px, 25 flow steps at noise level (eta) 0.7, groups of 8, a random
    # 60% of each sample's steps trained, clip 1e-4, advantages clipped at 5, no KL, LoRA r64/a128 at
    # lr 1e-5, weight decay 1e-4, 4 accumulation steps; the reward mix {"unifiedreward_think": 0.4,
    # "clip": 0.6} with --apply_gdpo. The judge here is ddrl's vlm-judge (UnifiedReward-Think by name
    # is not in ddrl yet); the reference's --rationorm and its fixed shift 3 (ddrl keeps FLUX's
    # scheduler shift) are not reproduced (docs/fidelity.md).
    "flux-pref-grpo": Preset(
        "Pref-GRPO's FLUX.1-dev LoRA run: win rates of a VLM judge (0.4) mixed with CLIP score (0.6), "
        "normalised over the batch (GPU, untested here)",
        {"model.name": "black-forest-labs/FLUX.1-dev", "model.resolution": 720, "model.lora_rank": 64,
         "model.lora_alpha": 128.0, "train.algorithm": "pref-grpo", "sample.sampler": "flow-sde",
         "sample.noise_level": 0.7, "sample.num_steps": 25, "sample.guidance_scale": 1.0,
         "sample.images_per_prompt": 8, "sample.batch_size": 8, "sample.num_batches_per_epoch": 4,
         "train.batch_size": 8, "train.gradient_accumulation_steps": 4, "train.advantages": "group",
         "train.timestep_fraction": 0.6, "train.clip_range": 1e-4, "train.adv_clip_max": 5.0,
         "train.learning_rate": 1e-5, "train.weight_decay": 1e-4, "train.max_grad_norm": 1.0,
         "reward.name": "clipscore", "reward.pairwise": "vlm-judge", "pref_grpo.steps": "random",
         "pref_grpo.pointwise_weight": 0.6, "pref_grpo.batch_normalize": True, "run.mixed_precision": "bf16",
         "eval.images_per_prompt": 1, "eval.train_images_per_prompt": 1}),
    "sd15-compressibility": Preset(
        "the DDPO paper's JPEG compressibility run on Stable Diffusion 1.4 (GPU; untested here)",
        _SD15 | {"reward.name": "jpeg-compressibility"}),
    "sd15-incompressibility": Preset(
        "the DDPO paper's JPEG incompressibility run on Stable Diffusion 1.4 (GPU; untested here)",
        _SD15 | {"reward.name": "jpeg-incompressibility"}),
    # aesthetic(): 200 epochs, 2 optimizer steps per epoch, per-prompt buffers of 32
    "sd15-aesthetic": Preset(
        "the DDPO paper's aesthetic-quality run on Stable Diffusion 1.4: the LAION aesthetic predictor "
        "(GPU; untested here)",
        _SD15 | {"reward.name": "aesthetic", "run.epochs": 200, "train.gradient_accumulation_steps": 4,
                 "train.buffer_size": 32}),
    # prompt_image_alignment(): 6 sampling processes (2 GPUs served LLaVA), 8 x 6 samples and
    # 2 optimizer steps per epoch per process, animals doing activities
    "sd15-alignment": Preset(
        "the DDPO paper's prompt-alignment run on Stable Diffusion 1.4: LLaVA's description scored by "
        "BERTScore recall against the prompt, served by `ddrl reward-server vlm-bertscore --port 18086` "
        "as the paper served LLaVA (GPU; untested here)",
        _SD15 | {"reward.name": "remote:http://127.0.0.1:18086", "prompts.source": "animal-activities",
                 "prompts.eval_source": "animal-activities", "run.epochs": 200, "sample.num_batches_per_epoch": 6,
                 "train.gradient_accumulation_steps": 6, "train.buffer_size": 32}),
    "shapes-dpo": Preset(
        "Diffusion-DPO on shapes-sd from `ddrl reward-pairs --out pairs` (set data.pairs to elsewhere)", _SHAPES_DPO),
    "shapes-online-dpo": Preset(
        "online DPO on shapes-sd: each group's best and worst of 4 by the hidden preference",
        _SHAPES_DPO | {"train.algorithm": "online-dpo", "data.pairs": "", "sample.batch_size": 32,
                       "sample.num_batches_per_epoch": 2, "sample.images_per_prompt": 4,
                       "train.timestep_fraction": 0.3, "run.epochs": 31}),
    "sd15-dpo": Preset(
        "Diffusion-DPO's SD 1.5 run on Pick-a-Pic v2 (full fine-tuning, 2048 pairs per step on 16 GPUs; "
        "GPU, untested here)",
        _DPO_PAPER | {"model.name": "runwayml/stable-diffusion-v1-5", "train.lr_warmup_steps": 500,
                      "data.resolution": 512}),
    "sdxl-dpo": Preset(
        "Diffusion-DPO's SDXL run on Pick-a-Pic v2 (full fine-tuning with Adafactor, 2048 pairs per step "
        "on 16 GPUs; GPU, untested here)",
        _DPO_PAPER | {"model.name": "stabilityai/stable-diffusion-xl-base-1.0", "train.optimizer": "adafactor",
                      "train.lr_warmup_steps": 200, "data.resolution": 1024, "sample.guidance_scale": 5.0}),
    "shapes-draft": Preset(
        "DRaFT-1 on shapes-sd against a learned preference reward (`ddrl reward-train ... --out reward-model`)",
        _SHAPES_BACKPROP),
    "shapes-alignprop": Preset(
        "AlignProp (randomly truncated backprop, about the last 8 steps) on shapes-sd against a learned reward",
        _SHAPES_BACKPROP | {"train.algorithm": "alignprop"}),
    "shapes-refl": Preset(
        "ReFL (one step with gradients, its data prediction scored) on shapes-sd against a learned reward",
        _SHAPES_BACKPROP | {"train.algorithm": "refl", "backprop.loss": "neg", "backprop.scale": 1.0}),
    "sd14-refl": Preset(
        "ReFL's Stable Diffusion 1.4 run with ImageReward (full fine-tuning, 8 GPUs; GPU, untested here)",
        _SD_BACKPROP | {"model.name": "CompVis/stable-diffusion-v1-4", "train.algorithm": "refl", "model.lora": False,
                        "reward.name": "imagereward", "sample.num_steps": 40, "sample.guidance_scale": 1.0,
                        "sample.batch_size": 2, "sample.num_batches_per_epoch": 4, "train.batch_size": 2,
                        "train.gradient_accumulation_steps": 4, "train.learning_rate": 1e-5,
                        "train.weight_decay": 1e-2, "train.ema_decay": 0.9999, "run.epochs": 100}),
    "sd15-alignprop": Preset(
        "AlignProp's aesthetic run on Stable Diffusion 1.5 (LoRA, 128 samples per step on 4 GPUs; GPU, untested here)",
        _SD_BACKPROP | {"model.name": "runwayml/stable-diffusion-v1-5", "train.algorithm": "alignprop",
                        "reward.name": "aesthetic(quantize=false, resize=bilinear)", "backprop.loss": "abs",
                        "backprop.target": 10.0,
                        "backprop.scale": 0.01, "sample.num_steps": 50, "sample.guidance_scale": 5.0,
                        "sample.batch_size": 8, "sample.num_batches_per_epoch": 4, "train.batch_size": 8,
                        "train.gradient_accumulation_steps": 4, "train.learning_rate": 1e-3,
                        "train.weight_decay": 1e-4, "model.lora_rank": 4, "model.lora_alpha": 4.0, "run.epochs": 20}),
}

DEFAULT_PRESET = "shapes-quick"


def preset_config(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{_hint(name, PRESETS)}; presets: {', '.join(PRESETS)}")
    return apply_overrides(Config(), PRESETS[name].overrides)
