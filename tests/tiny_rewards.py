"""Tiny random-weight scorer models (CLIP, BERT, BLIP, LLaVA) built from configs and saved as
folders laid out like their hub repos, with tokenizers made from the shapes world's words: what
the tests and the reward throughput benchmark load, since no weights can be downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from ddrl.worlds.shapes import vocabulary


def tiny_clip(path: Path) -> Path:
    """A random-weight transformers CLIPModel with the shapes world's tokenizer and a CLIP image
    processor (resize 32, centre-crop 32), saved as a folder as a hub repo would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from ddrl.pretrain import components as C

    tok = C.make_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=C.TEXT_MAX_LENGTH,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    C.write_clip_vocab_files(path)  # transformers 5 omits vocab.json/merges.txt for this tokenizer
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _bert_vocab(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(vocabulary()) | {
        "the", "image", "contains", "this", "shows", "is", "does", "show", "yes", "no", "what", "going", "on",
        "in", "answer", "concisely", "?", ".", ":", "1", "2"})
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    return path / "vocab.txt"


def tiny_bert(path: Path) -> Path:
    """A random-weight BERT with a word-level vocabulary of the shapes world, for BERTScore."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = BertTokenizerFast(str(_bert_vocab(path)), model_max_length=64)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_blip(path: Path) -> Path:
    """A random-weight BlipForImageTextRetrieval with a BERT tokenizer and a 32 px image processor."""
    from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    tok = BertTokenizerFast(str(_bert_vocab(path)), model_max_length=64)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    BlipForImageTextRetrieval(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def tiny_vlm(path: Path) -> Path:
    """A random-weight LLaVA (CLIP vision tower + Llama) with a word-level tokenizer of the shapes
    world's words, a CLIP image processor and a chat template, saved as a hub repo would be."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    words = ["<unk>", "<pad>", "<s>", "</s>", "<image>"] + sorted(set(vocabulary()) | set(
        "USER ASSISTANT : the image contains what is going on in this answer concisely ? . does show yes no "
        "which better or 1 2 \" , Answer Does Which shows".split()))
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.WordPiece()  # joins tokens with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", model_max_length=256, extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}USER : {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %} ASSISTANT :{% endif %}")
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          chat_template=template, num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=1, bos_token_id=2, eos_token_id=3),
        image_token_index=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    proc.save_pretrained(path)
    return path
