import os

# Tests never reach a model hub: a hub id must fail fast and clearly, not hang on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A random-weight Stable Diffusion pipeline built from configs and saved in diffusers layout."""
    from diffusers import StableDiffusionPipeline

    from ddrl.pretrain import components as C

    tok = C.make_clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=C.make_vae(seed=1), text_encoder=C.make_clip_text_model(tok, hidden=32, seed=2),
        tokenizer=tok, unet=C.make_unet(cross_attention_dim=32, seed=3),
        scheduler=C.make_ddim_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    path = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd3_folder(tmp_path_factory):
    """A random-weight SD3 pipeline (two CLIPs with projection and a T5) built from configs."""
    from diffusers import StableDiffusion3Pipeline

    from ddrl.pretrain import components as C

    tok, tok3 = C.make_clip_tokenizer(), C.make_t5_tokenizer()
    vae = C.make_vae(seed=1)
    vae.register_to_config(scaling_factor=1.5, shift_factor=0.1)
    pipe = StableDiffusion3Pipeline(
        transformer=C.make_sd3_transformer(joint_attention_dim=32, pooled_projection_dim=32, seed=4),
        scheduler=C.make_flow_scheduler(), vae=vae,
        text_encoder=C.make_clip_text_model(tok, hidden=16, projection=16, seed=5), tokenizer=tok,
        text_encoder_2=C.make_clip_text_model(tok, hidden=16, projection=16, seed=6), tokenizer_2=tok,
        text_encoder_3=C.make_t5_text_model(tok3, d_model=32, seed=7), tokenizer_3=tok3)
    path = tmp_path_factory.mktemp("tiny-sd3")
    pipe.save_pretrained(path)
    return path


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory):
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
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    C.write_clip_vocab_files(path)  # transformers 5 omits vocab.json/merges.txt for this tokenizer
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _bert_vocab(path):
    from ddrl.worlds.shapes import vocabulary

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(vocabulary()) | {
        "the", "image", "contains", "this", "shows", "is", "does", "show", "yes", "no", "what", "going", "on",
        "in", "answer", "concisely", "?", ".", ":", "1", "2"})
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    return path / "vocab.txt"


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory):
    """A random-weight BERT with a word-level vocabulary of the shapes world, for BERTScore."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = BertTokenizerFast(str(_bert_vocab(path)), model_max_length=64)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_blip_folder(tmp_path_factory):
    """A random-weight BlipForImageTextRetrieval with a BERT tokenizer and a 32 px image processor."""
    from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    path = tmp_path_factory.mktemp("tiny-blip")
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


@pytest.fixture(scope="session")
def tiny_vlm_folder(tmp_path_factory):
    """A random-weight LLaVA (CLIP vision tower + Llama) with a word-level tokenizer of the shapes
    world's words, a CLIP image processor and a chat template, saved as a hub repo would be."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    from ddrl.worlds.shapes import vocabulary

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
    path = tmp_path_factory.mktemp("tiny-vlm")
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    proc.save_pretrained(path)
    return path
