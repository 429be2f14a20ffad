"""Convert an open_clip checkpoint (e.g. HPS v2/v2.1's `HPS_v2.1_compressed.pt`) into a
transformers `CLIPModel` folder, so the CLIP-family rewards can load it without open_clip.

open_clip stores OpenAI's CLIP layout: pre-norm residual blocks whose attention keeps q, k and v
stacked in `in_proj_weight`, projections as (width, embed) matrices applied on the right, and
`proj`/`text_projection` without bias. transformers keeps separate q/k/v Linears and projections
as (embed, width) Linear weights. Sizes are read from the tensors; the head counts and the MLP
activation are not stored in a checkpoint, so they come from the architecture's name.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ..io import check_writable_dir
from .base import RewardError

# vision heads, text heads, activation (open_clip's model configs; OpenAI-trained weights use quick_gelu)
ARCHITECTURES = {
    "ViT-H-14": (16, 16, "gelu"),
    "ViT-L-14": (16, 12, "gelu"),
    "ViT-B-16": (12, 8, "gelu"),
    "ViT-B-32": (12, 8, "gelu"),
}


def _blocks(sd: dict[str, Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"resblocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def clip_config(sd: dict[str, Tensor], vision_heads: int, text_heads: int, activation: str):
    from transformers import CLIPConfig

    vw, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    vocab, tw = sd["token_embedding.weight"].shape
    return CLIPConfig(
        vision_config=dict(hidden_size=vw, intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           num_hidden_layers=_blocks(sd, "visual.transformer."), num_attention_heads=vision_heads,
                           image_size=grid * patch, patch_size=patch, hidden_act=activation, layer_norm_eps=1e-5),
        text_config=dict(vocab_size=vocab, hidden_size=tw,
                         intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                         num_hidden_layers=_blocks(sd, "transformer."), num_attention_heads=text_heads,
                         max_position_embeddings=sd["positional_embedding"].shape[0], hidden_act=activation,
                         layer_norm_eps=1e-5, bos_token_id=vocab - 2, eos_token_id=vocab - 1),
        projection_dim=sd["visual.proj"].shape[1])


def _block_map(src: str, dst: str, sd: dict[str, Tensor], out: dict[str, Tensor]) -> None:
    for i in range(_blocks(sd, src)):
        s, d = f"{src}resblocks.{i}.", f"{dst}layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{s}attn.in_proj_{kind}"].chunk(3)
            out |= {f"{d}self_attn.q_proj.{kind}": q, f"{d}self_attn.k_proj.{kind}": k, f"{d}self_attn.v_proj.{kind}": v,
                    f"{d}self_attn.out_proj.{kind}": sd[f"{s}attn.out_proj.{kind}"],
                    f"{d}layer_norm1.{kind}": sd[f"{s}ln_1.{kind}"], f"{d}layer_norm2.{kind}": sd[f"{s}ln_2.{kind}"],
                    f"{d}mlp.fc1.{kind}": sd[f"{s}mlp.c_fc.{kind}"], f"{d}mlp.fc2.{kind}": sd[f"{s}mlp.c_proj.{kind}"]}


def convert_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "visual_projection.weight": sd["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_projection.weight": sd["text_projection"].T,
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    for kind in ("weight", "bias"):
        out |= {f"vision_model.pre_layrnorm.{kind}": sd[f"visual.ln_pre.{kind}"],
                f"vision_model.post_layernorm.{kind}": sd[f"visual.ln_post.{kind}"],
                f"text_model.final_layer_norm.{kind}": sd[f"ln_final.{kind}"]}
    _block_map("visual.transformer.", "vision_model.encoder.", sd, out)
    _block_map("transformer.", "text_model.encoder.", sd, out)
    return {k: v.contiguous() for k, v in out.items()}


def read_open_clip_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Tensors of an open_clip checkpoint (.safetensors, or .pt/.bin read tensors-only), with a
    training wrapper's `state_dict` level and `module.` prefixes removed."""
    from .aesthetic import load_state_dict

    try:
        sd = load_state_dict(path)
    except Exception as e:  # noqa: BLE001 - any failure means "not a checkpoint we can read"
        raise RewardError(f"cannot read {path} as a tensors-only checkpoint: {str(e).splitlines()[0]}") from None
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items() if torch.is_tensor(v)}


def convert_open_clip(checkpoint: str | Path, out_dir: str | Path, architecture: str = "ViT-H-14",
                      processor: str | None = None, heads: tuple[int, int] | None = None):
    """Write a transformers CLIPModel folder for an open_clip checkpoint; copy the tokenizer and
    image processor from `processor` (a folder or hub id of the base CLIP) when given, and take
    the end-of-text id, where the text is pooled, from that tokenizer. `heads` (vision, text)
    overrides the architecture's head counts."""
    from transformers import CLIPModel

    if architecture not in ARCHITECTURES:
        raise RewardError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    check_writable_dir(out_dir, "the output folder")
    vision_heads, text_heads, activation = ARCHITECTURES[architecture]
    if heads:
        vision_heads, text_heads = heads
    sd = read_open_clip_checkpoint(checkpoint)
    missing = [k for k in ("visual.conv1.weight", "visual.proj", "token_embedding.weight", "text_projection") if k not in sd]
    if missing:
        raise RewardError(f"{checkpoint} is not an open_clip CLIP checkpoint (no {', '.join(missing)})")
    try:
        config = clip_config(sd, vision_heads, text_heads, activation)
        converted = convert_state_dict(sd)
    except KeyError as e:
        raise RewardError(f"{checkpoint} lacks {e.args[0]!r}: not an open_clip CLIP checkpoint of this layout") from None
    tokenizer = None
    if processor:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(processor)
        config.text_config.bos_token_id, config.text_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model = CLIPModel(config)
    result = model.load_state_dict(converted, strict=False)
    unexpected = [k for k in result.missing_keys if "position_ids" not in k]
    if unexpected or result.unexpected_keys:
        raise RewardError(f"conversion left weights unset {unexpected[:4]} or unused {result.unexpected_keys[:4]}")
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        from transformers import CLIPImageProcessor

        tokenizer.save_pretrained(out_dir)
        CLIPImageProcessor.from_pretrained(processor).save_pretrained(out_dir)
    return model
