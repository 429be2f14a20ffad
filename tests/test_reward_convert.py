"""open_clip -> transformers CLIP conversion, checked against a forward pass written directly
on the open_clip tensors (pre-norm blocks, stacked q/k/v, right-multiplied projections)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddrl.rewards import RewardError, get_reward, score
from ddrl.rewards.convert import convert_open_clip

W, HEADS, LAYERS, PATCH, GRID = 32, 2, 2, 8, 4


def _open_clip_state_dict(vocab: int, ctx: int, embed: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)

    def r(*shape, s=0.1):
        return torch.randn(*shape, generator=g) * s

    sd = {"visual.conv1.weight": r(W, 3, PATCH, PATCH), "visual.class_embedding": r(W),
          "visual.positional_embedding": r(GRID * GRID + 1, W), "visual.proj": r(W, embed, s=0.3),
          "token_embedding.weight": r(vocab, W), "positional_embedding": r(ctx, W), "text_projection": r(W, embed, s=0.3),
          "logit_scale": torch.tensor(4.6)}
    for pre in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        sd |= {f"{pre}.weight": 1 + r(W), f"{pre}.bias": r(W)}
    for tower in ("visual.transformer.", "transformer."):
        for i in range(LAYERS):
            b = f"{tower}resblocks.{i}."
            sd |= {b + "attn.in_proj_weight": r(3 * W, W), b + "attn.in_proj_bias": r(3 * W),
                   b + "attn.out_proj.weight": r(W, W), b + "attn.out_proj.bias": r(W),
                   b + "ln_1.weight": 1 + r(W), b + "ln_1.bias": r(W), b + "ln_2.weight": 1 + r(W), b + "ln_2.bias": r(W),
                   b + "mlp.c_fc.weight": r(4 * W, W), b + "mlp.c_fc.bias": r(4 * W),
                   b + "mlp.c_proj.weight": r(W, 4 * W), b + "mlp.c_proj.bias": r(W)}
    return sd


def _ln(x, sd, name):
    return F.layer_norm(x, (W,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _tower(x, sd, prefix, causal):
    """open_clip's residual attention blocks: x += attn(ln_1(x)); x += mlp(ln_2(x)), GELU."""
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1) if causal else torch.zeros(n, n)
    for i in range(LAYERS):
        b = f"{prefix}resblocks.{i}."
        h = _ln(x, sd, b + "ln_1")
        q, k, v = (h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]).chunk(3, -1)
        split = lambda t: t.view(t.shape[0], n, HEADS, W // HEADS).transpose(1, 2)  # noqa: E731
        att = (split(q) @ split(k).transpose(-1, -2) / (W // HEADS) ** 0.5 + mask).softmax(-1) @ split(v)
        x = x + att.transpose(1, 2).reshape(x.shape) @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
        h = F.gelu(_ln(x, sd, b + "ln_2") @ sd[b + "mlp.c_fc.weight"].T + sd[b + "mlp.c_fc.bias"])
        x = x + h @ sd[b + "mlp.c_proj.weight"].T + sd[b + "mlp.c_proj.bias"]
    return x


def _reference_cosine(sd, pixels, ids, eot):
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(len(x), 1, W), x], 1) + sd["visual.positional_embedding"]
    x = _tower(_ln(x, sd, "visual.ln_pre"), sd, "visual.transformer.", causal=False)
    img = _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]
    t = _tower(sd["token_embedding.weight"][ids] + sd["positional_embedding"], sd, "transformer.", causal=True)
    txt = _ln(t, sd, "ln_final")[torch.arange(len(ids)), eot] @ sd["text_projection"]
    return F.cosine_similarity(img, txt, dim=-1)


def test_converted_open_clip_weights_give_the_open_clip_embeddings(tiny_clip_folder, tmp_path):
    from transformers import AutoTokenizer, CLIPImageProcessor

    tok = AutoTokenizer.from_pretrained(tiny_clip_folder)
    sd = _open_clip_state_dict(len(tok), 16)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "hps.pt")
    convert_open_clip(tmp_path / "hps.pt", tmp_path / "hf", "ViT-H-14", processor=str(tiny_clip_folder),
                      heads=(HEADS, HEADS))  # this tiny model's, not ViT-H-14's 16
    prompts = ["a red circle", "two squares", "a blue triangle above a circle"]
    images = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(1)).float() / 255
    proc = CLIPImageProcessor.from_pretrained(tiny_clip_folder)
    pixels = torch.from_numpy(np.stack(proc([(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                                             for im in images], return_tensors="np")["pixel_values"]))
    t = tok(prompts, padding="max_length", max_length=16, return_tensors="pt")
    eot = (t.input_ids == tok.eos_token_id).int().argmax(-1)  # open_clip pools at the end-of-text token
    want = _reference_cosine(sd, pixels, t.input_ids, eot)
    got, _ = score(get_reward(f"hpsv2(model={tmp_path / 'hf'})"), images, prompts)  # tokenizer copied in
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_conversion_refuses_what_is_not_an_open_clip_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(RewardError, match="not an open_clip CLIP checkpoint"):
        convert_open_clip(tmp_path / "x.safetensors", tmp_path / "out")
    with pytest.raises(RewardError, match="unknown architecture"):
        convert_open_clip(tmp_path / "x.safetensors", tmp_path / "out", "ViT-Z-99")


def test_a_checkpoint_missing_blocks_is_a_clear_error(tmp_path):
    sd = _open_clip_state_dict(600, 16)
    del sd["ln_final.weight"]
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(RewardError, match="lacks 'ln_final.weight'"):
        convert_open_clip(tmp_path / "partial.pt", tmp_path / "out", heads=(HEADS, HEADS))
