"""CLIP-based rewards on transformers' `CLIPModel`: CLIPScore, PickScore and HPSv2.

All three embed image and prompt, L2-normalise, and score image i against prompt i:
- CLIPScore (Hessel et al. 2021): 2.5 * max(cos, 0), ViT-B/32 by default.
- PickScore (Kirstain et al. 2023): exp(logit_scale) * cos with the PickScore_v1 weights; its
  tokenizer and image processor are those of the CLIP-H model it was fine-tuned from.
- HPSv2 (Wu et al. 2023): cos with the HPS fine-tuned CLIP-H weights. HPS publishes open_clip
  checkpoints; `ddrl convert-open-clip` turns one into the transformers folder this scorer loads.
Scores are differentiable in the images (preprocessing is done in torch).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import RewardError, RewardOutput, in_batches
from .hf import RESIZES, Preprocess, default_device, load


class ClipBackbone:
    """A CLIP model with its tokenizer and preprocessing, from a folder or hub id. `processor`
    names where the tokenizer and image processor live when the model repo has none."""

    def __init__(self, reward: str, model: str, processor: str | None = None, device: str | None = None,
                 quantize: bool = True, resize: str = "bicubic"):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        if resize not in RESIZES:
            raise RewardError(f"reward {reward!r}: resize must be one of {', '.join(RESIZES)}, got {resize!r}")

        self.device = default_device(device)
        self.model = load(reward, f"CLIP model {model!r}", lambda: CLIPModel.from_pretrained(model))
        self.model.to(self.device).eval().requires_grad_(False)
        proc = processor or model
        self.tokenizer = load(reward, f"tokenizer {proc!r}", lambda: AutoTokenizer.from_pretrained(proc))
        self.preprocess = Preprocess(load(reward, f"image processor {proc!r}",
                                          lambda: CLIPImageProcessor.from_pretrained(proc)), quantize, resize)
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    def image_embeds(self, images: Tensor) -> Tensor:
        """L2-normalised projected image embeddings of (B, 3, H, W) images in [0, 1]."""
        pixels = self.preprocess(images.to(self.device, torch.float32))
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        e = self.model.visual_projection(pooled)
        return e / e.norm(dim=-1, keepdim=True)

    def text_embeds(self, prompts: Sequence[str]) -> Tensor:
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        e = self.model.text_projection(pooled)
        return e / e.norm(dim=-1, keepdim=True)


class ClipSimilarityReward:
    differentiable = True

    def __init__(self, name: str, backbone: ClipBackbone, scale: float, clamp_at_zero: bool, batch_size: int):
        if batch_size < 1:
            raise RewardError(f"reward {name!r}: batch_size must be >= 1, got {batch_size}")
        self.name, self.backbone, self.scale = name, backbone, scale
        self.clamp_at_zero, self.batch_size, self.device = clamp_at_zero, batch_size, backbone.device

    def cosine(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        def one(sl: slice) -> Tensor:
            return (self.backbone.image_embeds(images[sl]) * self.backbone.text_embeds(prompts[sl])).sum(-1)
        return in_batches(one, len(images), self.batch_size)

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        with torch.set_grad_enabled(images.requires_grad):
            cos = self.cosine(images, list(prompts))
        s = cos.clamp(min=0) if self.clamp_at_zero else cos
        return RewardOutput((self.scale * s).float(), {"cosine": cos.detach().cpu().tolist()})


def clipscore(model: str = "openai/clip-vit-base-patch32", processor: str | None = None,
              device: str | None = None, batch_size: int = 32, w: float = 2.5, quantize: bool = True,
              resize: str = "bicubic") -> ClipSimilarityReward:
    """`quantize`, `resize`: see ddrl.rewards.hf.Preprocess (quantize false: the float resize of
    ReFL's code; with resize bilinear, AlignProp's)."""
    return ClipSimilarityReward("clipscore", ClipBackbone("clipscore", model, processor, device, quantize, resize),
                                scale=w, clamp_at_zero=True, batch_size=batch_size)


def pickscore(model: str = "yuvalkirstain/PickScore_v1", processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
              device: str | None = None, batch_size: int = 32, quantize: bool = True,
              resize: str = "bicubic") -> ClipSimilarityReward:
    backbone = ClipBackbone("pickscore", model, processor, device, quantize, resize)
    return ClipSimilarityReward("pickscore", backbone, scale=float(backbone.model.logit_scale.exp()),
                                clamp_at_zero=False, batch_size=batch_size)


def hpsv2(model: str | None = None, processor: str | None = None, device: str | None = None,
          batch_size: int = 32, quantize: bool = True, resize: str = "bicubic") -> ClipSimilarityReward:
    """`model`: the folder `ddrl convert-open-clip` writes from HPS's open_clip checkpoint (with
    the CLIP-H tokenizer and processor copied in; else name them with `processor`)."""
    if model is None:
        raise RewardError("reward 'hpsv2' needs model=PATH: a transformers CLIP folder holding the HPS v2/v2.1 "
                          "weights; make one with `ddrl convert-open-clip HPS_v2.1_compressed.pt --out DIR`")
    return ClipSimilarityReward("hpsv2", ClipBackbone("hpsv2", model, processor, device, quantize, resize),
                                scale=1.0, clamp_at_zero=False, batch_size=batch_size)
