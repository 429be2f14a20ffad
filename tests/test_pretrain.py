"""Pretraining pieces: the tokenizers built from the world's words, and resumable training."""

import dataclasses
import json

import torch
from safetensors.torch import load_file

from ddrl.pretrain.components import clip_bpe, make_clip_tokenizer, make_t5_tokenizer
from ddrl.pretrain.train import PretrainConfig, pretrain
from ddrl.worlds.shapes import vocabulary


def test_clip_bpe_merges_every_world_word_into_one_token():
    vocab, merges = clip_bpe(vocabulary())
    assert all(w + "</w>" in vocab for w in vocabulary())
    assert len(set(vocab.values())) == len(vocab)
    tok = make_clip_tokenizer()
    for w in vocabulary():
        ids = tok(w).input_ids
        assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", w + "</w>", "<|endoftext|>"]
    # Words outside the vocabulary still tokenize (into byte symbols), as CLIP's BPE does.
    assert tok.convert_ids_to_tokens(tok("dog").input_ids)[1:-1] == ["d", "o", "g</w>"]


def test_t5_unigram_has_one_piece_per_world_word():
    tok = make_t5_tokenizer()
    ids = tok("a red circle left of a square").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁a", "▁red", "▁circle", "▁left", "▁of", "▁a",
                                              "▁square", "</s>"]


def _weights(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(("model.", "ema."))}


def test_an_interrupted_stage_resumes_to_the_same_weights(tmp_path):
    """Training 3 steps, stopping, and resuming to 6 gives exactly the weights of 6 steps in
    one go: model, EMA, optimizer state and the data generator are all restored."""
    base = PretrainConfig(model="vae", work_dir=tmp_path / "a", steps=6, num_images=48,
                          batch_size=4, checkpoint_every=100)
    pretrain(base)
    split = dataclasses.replace(base, work_dir=tmp_path / "b", steps=3)
    pretrain(split)
    pretrain(dataclasses.replace(split, steps=6))
    a, b = _weights(tmp_path / "a/vae/state.safetensors"), _weights(tmp_path / "b/vae/state.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((tmp_path / "b/vae/progress.json").read_text())["step"] == 6

    # The denoiser stages resume the same way, from the VAE stage's latents.
    for name in ("shapes-sd", "shapes-flow"):
        one = dataclasses.replace(base, model=name, steps=4)
        pretrain(one)
        two = dataclasses.replace(one, work_dir=tmp_path / "b", steps=2)
        pretrain(two)
        pretrain(dataclasses.replace(two, steps=4))
        a = _weights(tmp_path / f"a/{name}/state.safetensors")
        b = _weights(tmp_path / f"b/{name}/state.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_a_corrupt_checkpoint_gives_a_one_line_error(tmp_path):
    import pytest

    cfg = PretrainConfig(model="vae", work_dir=tmp_path, steps=1, num_images=8, batch_size=2)
    pretrain(cfg)
    (tmp_path / "vae" / "state.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="is unreadable .*delete it to restart") as info:
        pretrain(dataclasses.replace(cfg, steps=2))
    assert "\n" not in str(info.value)
