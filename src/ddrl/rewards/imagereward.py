"""An ImageReward-style scorer (Xu et al. 2023) on transformers' BLIP.

ImageReward runs the prompt through BLIP's text encoder with cross-attention to the image
patches, takes the first token's state, and maps it through an MLP of the aesthetic predictor's
shape (768 -> 1024 -> 128 -> 64 -> 16 -> 1); the score is standardised with the mean and std of
its training rewards. Here BLIP is `BlipForImageTextRetrieval` (its vision model and text
encoder) from a folder or hub id, and the head is a safetensors/.pth file of `AestheticMLP` keys.
The original ImageReward checkpoint stores BLIP under LAVIS names; it must be converted to a
transformers BLIP folder plus a head file before it loads here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .aesthetic import AestheticMLP, load_head
from .base import RewardError, RewardOutput, in_batches
from .hf import Preprocess, default_device, load

# ImageReward.py standardises the MLP output with these statistics of its training rewards.
REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072


class ImageRewardStyle:
    name = "imagereward"
    differentiable = True

    def __init__(self, model: str, head: str, device: str | None = None, batch_size: int = 16,
                 mean: float = REWARD_MEAN, std: float = REWARD_STD, max_length: int = 35, quantize: bool = True):
        from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor

        self.device, self.batch_size, self.mean, self.std = default_device(device), batch_size, mean, std
        self.blip = load(self.name, f"BLIP model {model!r}", lambda: BlipForImageTextRetrieval.from_pretrained(model))
        self.blip.to(self.device).eval().requires_grad_(False)
        self.tokenizer = load(self.name, f"tokenizer {model!r}", lambda: AutoTokenizer.from_pretrained(model))
        self.preprocess = Preprocess(load(self.name, f"image processor {model!r}",
                                          lambda: BlipImageProcessor.from_pretrained(model)), quantize)
        self.head = load_head(self.name, head, AestheticMLP(self.blip.config.text_config.hidden_size))
        self.head.to(self.device).eval().requires_grad_(False)
        self.max_length = max_length  # ImageReward pads prompts to 35 tokens

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        pixels = self.preprocess(images.to(self.device, torch.float32))
        patches = self.blip.vision_model(pixel_values=pixels).last_hidden_state
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        text = self.blip.text_encoder(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                                      encoder_hidden_states=patches,
                                      encoder_attention_mask=torch.ones(patches.shape[:-1], dtype=torch.long,
                                                                        device=self.device)).last_hidden_state
        return (self.head(text[:, 0]) - self.mean) / self.std

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        prompts = list(prompts)
        with torch.set_grad_enabled(images.requires_grad):
            s = in_batches(lambda sl: self._score(images[sl], prompts[sl]), len(images), self.batch_size)
        return RewardOutput(s.float())


def imagereward(model: str | None = None, head: str | None = None, device: str | None = None,
                batch_size: int = 16, quantize: bool = True) -> ImageRewardStyle:
    if model is None or head is None:
        raise RewardError("reward 'imagereward' needs model=PATH (a transformers BLIP folder) and head=FILE "
                          "(the MLP weights as safetensors or .pth)")
    return ImageRewardStyle(model, head, device, batch_size, quantize=quantize)
