"""The components of the built-in models, built from configs: tokenizers with vocabularies made
from the shapes world's words, tiny CLIP / T5 text encoders, the VAE, the UNet (Stable Diffusion
layout) and the MMDiT transformer (Stable Diffusion 3 layout).

Everything here is an ordinary diffusers / transformers class, so the saved folders load with
`StableDiffusionPipeline.from_pretrained` and `StableDiffusion3Pipeline.from_pretrained`.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from ..worlds.shapes import IMAGE_SIZE, vocabulary

VAE_SCALE = 4  # 48 px images <-> 12 x 12 latents
LATENT_SIZE = IMAGE_SIZE // VAE_SCALE
LATENT_CHANNELS = 4
TEXT_MAX_LENGTH = 16  # tokens, including start/end; the longest world prompt needs 9
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-symbol table: printable bytes map to themselves, the rest to
    code points above 255, so every byte sequence is a string of visible symbols."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def clip_bpe(words: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """Byte-level BPE vocabulary and merges in CLIP's format, trained on `words`.

    Merges are learned the usual way (repeatedly merge the most frequent adjacent pair, ties
    broken alphabetically) until every word is a single token, so applying the merges in rank
    order reproduces whole-word tokens for the world's words; any other text still tokenizes
    into byte symbols.
    """
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [s + "</w>" for s in base]
    seqs = Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words)
    merges = []
    while True:
        pairs = Counter()
        for seq, n in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(f"{best[0]} {best[1]}")
        vocab_list.append(best[0] + best[1])
        new = Counter()
        for seq, n in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            new[tuple(out)] += n
        seqs = new
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def write_clip_vocab_files(folder: Path) -> None:
    """vocab.json and merges.txt of the world's CLIP tokenizer. transformers 5 saves only
    tokenizer.json; older versions' CLIPTokenizer needs these two files."""
    vocab, merges = clip_bpe(vocabulary())
    (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
    (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def make_clip_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as d:
        write_clip_vocab_files(Path(d))
        return CLIPTokenizer(vocab=str(Path(d) / "vocab.json"), merges=str(Path(d) / "merges.txt"),
                             model_max_length=TEXT_MAX_LENGTH)


def make_t5_tokenizer():
    """A Unigram tokenizer whose pieces are the world's words (SentencePiece's '▁' marks a
    word start), with T5's special tokens; no SentencePiece model file is needed."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in vocabulary()]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=TEXT_MAX_LENGTH)


def make_clip_text_model(tokenizer, hidden: int, projection: int | None = None, seed: int = 0):
    """CLIPTextModel (projection None) or CLIPTextModelWithProjection."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TEXT_MAX_LENGTH,
        projection_dim=projection or hidden, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def make_t5_text_model(tokenizer, d_model: int, seed: int = 0):
    """T5 encoder without dropout (T5's default is 0.1): dropout would draw from torch's global
    RNG and make pretraining depend on more than its seed."""
    import torch
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=16, d_ff=2 * d_model,
                   num_layers=2, num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return T5EncoderModel(cfg)


def make_vae(seed: int = 0):
    """A 3-level AutoencoderKL (downsampling 4x) without quant convs, usable by both layouts."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64),
        layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=8,
        sample_size=IMAGE_SIZE, use_quant_conv=False, use_post_quant_conv=False)


def make_unet(cross_attention_dim: int, seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16)


def make_sdxl_unet(cross_attention_dim: int, pooled_dim: int, seed: int = 0):
    """A UNet with SDXL's added conditioning: the pooled text embedding and the six size/crop ids
    (addition_embed_type text_time)."""
    import torch
    from diffusers import UNet2DConditionModel

    time_dim = 8
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim)


def make_sd3_transformer(joint_attention_dim: int, pooled_projection_dim: int, seed: int = 0):
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, num_layers=4, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=joint_attention_dim, caption_projection_dim=128,
        pooled_projection_dim=pooled_projection_dim, pos_embed_max_size=LATENT_SIZE)


def make_ddim_scheduler():
    """Stable Diffusion's training schedule (scaled-linear betas 0.00085..0.012, 1000 steps)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type="epsilon")


def make_flow_scheduler():
    """Rectified-flow schedule; shift 1 (no shift) suits the 12 x 12 latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
