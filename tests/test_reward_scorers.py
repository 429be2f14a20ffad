"""The model-based scorers on tiny random-weight models built from configs, each against its
formula computed by hand from the model's own layers, plus batching and input checks."""

import numpy as np
import pytest
import torch

from ddrl.rewards import RewardError, get_reward, score
from ddrl.rewards.hf import Preprocess

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a yellow circle"]


def _images(n=3, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    # 8-bit values, so PIL-based processors see exactly the same pixels
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def _hand_cosine(folder, images, prompts):
    """cos(image_i, prompt_i) straight from CLIPModel's layers and CLIPImageProcessor."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    proc = CLIPImageProcessor.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    pix = torch.from_numpy(np.stack(proc([(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                                          for im in images], return_tensors="np")["pixel_values"]))
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pix).pooler_output)
        t = tok(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
        txt = model.text_projection(model.text_model(input_ids=t.input_ids, attention_mask=t.attention_mask).pooler_output)
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1), model


def test_preprocess_equals_the_clip_image_processor_without_resizing(tiny_clip_folder):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor.from_pretrained(tiny_clip_folder)
    images = _images(2, size=32)
    ref = proc([(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in images],
               return_tensors="np")["pixel_values"]
    torch.testing.assert_close(Preprocess(proc)(images), torch.from_numpy(np.stack(ref)), atol=1e-5, rtol=0)


def _smooth_8bit(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Natural-image-like (blurred) 8-bit images as floats."""
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)), 5, 1, 2)
    return (x * 255).round() / 255


@pytest.mark.parametrize("h,w", [(48, 64), (20, 20), (96, 96)])
def test_the_tensor_path_scores_8bit_images_as_the_pil_processor_does(tiny_clip_folder, h, w):
    """The reward's preprocessing runs in torch so gradients reach the images; on 8-bit images it
    gives the CLIP processor's (PIL) pixels: the same 8-bit value for all but rare rounding ties
    (one level where a resampling pass lands on a half), so the scores agree within 1e-3. Sizes:
    a downscale with a centre crop (48 x 64 -> 32 x 42 -> 32 x 32), an upscale, a plain downscale."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor.from_pretrained(tiny_clip_folder)
    images = _smooth_8bit(3, h, w)
    ref = torch.from_numpy(np.stack(proc([(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                                          for im in images], return_tensors="np")["pixel_values"]))
    ours = Preprocess(proc)(images)
    levels = ((ours - ref) * torch.tensor(proc.image_std).view(1, 3, 1, 1) * 255).abs()  # in 8-bit levels
    assert ours.shape == ref.shape == (3, 3, 32, 32)
    assert float((levels > 0.5).float().mean()) < 0.01 and float(levels.max()) < 2.5
    reward = get_reward(f"hpsv2(model={tiny_clip_folder}, processor={tiny_clip_folder})")
    x = images.clone().requires_grad_(True)
    scores = reward(x, PROMPTS, [{}] * 3).scores
    torch.testing.assert_close(scores.detach(), _hand_cosine(tiny_clip_folder, images, PROMPTS)[0], atol=1e-3, rtol=0)
    scores.sum().backward()  # and the quantisation passes the gradient straight through
    assert x.grad.abs().sum() > 0


def test_clipscore_is_2_5_times_the_clamped_cosine(tiny_clip_folder):
    images = _images(size=32)
    cos, _ = _hand_cosine(tiny_clip_folder, images, PROMPTS)
    reward = get_reward(f"clipscore(model={tiny_clip_folder}, batch_size=2)")
    scores, details = score(reward, images, PROMPTS)
    torch.testing.assert_close(scores, 2.5 * cos.clamp(min=0), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(details["cosine"]), cos, atol=1e-5, rtol=0)


def test_pickscore_scales_the_cosine_by_the_learned_temperature(tiny_clip_folder):
    images = _images(size=32)
    cos, model = _hand_cosine(tiny_clip_folder, images, PROMPTS)
    reward = get_reward(f"pickscore(model={tiny_clip_folder}, processor={tiny_clip_folder})")
    scores, _ = score(reward, images, PROMPTS)
    torch.testing.assert_close(scores, model.logit_scale.exp() * cos, atol=1e-4, rtol=0)


def test_hpsv2_is_the_cosine_and_needs_a_model_path(tiny_clip_folder):
    with pytest.raises(RewardError, match="needs model=PATH"):
        get_reward("hpsv2")
    images = _images(size=32)
    cos, _ = _hand_cosine(tiny_clip_folder, images, PROMPTS)
    scores, _ = score(get_reward(f"hpsv2(model={tiny_clip_folder}, processor={tiny_clip_folder})"), images, PROMPTS)
    torch.testing.assert_close(scores, cos, atol=1e-5, rtol=0)


def test_batching_and_pairing_do_not_change_scores(tiny_clip_folder):
    """Each image is scored against its own prompt, whatever the internal batch size (the bug
    where 2x2 inputs gave 4 scores is the kind this catches)."""
    images = _images(5, size=36)
    prompts = PROMPTS + ["a circle", "three squares"]
    one = score(get_reward(f"clipscore(model={tiny_clip_folder}, batch_size=1)"), images, prompts)[0]
    big = score(get_reward(f"clipscore(model={tiny_clip_folder}, batch_size=4)"), images, prompts)[0]
    torch.testing.assert_close(one, big, atol=1e-5, rtol=0)
    perm = [3, 1, 4, 0, 2]
    swapped = score(get_reward(f"clipscore(model={tiny_clip_folder}, batch_size=4)"), images[perm],
                    [prompts[i] for i in perm])[0]
    torch.testing.assert_close(swapped, one[perm], atol=1e-5, rtol=0)


def test_pil_images_score_like_tensors(tiny_clip_folder):
    from ddrl.grid import to_pil

    images = _images(size=32)
    reward = get_reward(f"clipscore(model={tiny_clip_folder})")
    torch.testing.assert_close(score(reward, to_pil(images), PROMPTS)[0], score(reward, images, PROMPTS)[0],
                               atol=1e-6, rtol=0)


def test_aesthetic_is_the_hand_written_affine_map_of_the_normalised_embedding(tiny_clip_folder, tmp_path):
    """The LAION MLP has no nonlinearity: s = W5 (W4 (W3 (W2 (W1 e + b1) + b2) + b3) + b4) + b5
    with e the L2-normalised projected CLIP image embedding. Weights load from .safetensors and
    from a tensors-only .pth alike, under the released layer names."""
    from safetensors.torch import save_file

    from ddrl.rewards.aesthetic import AestheticMLP

    torch.manual_seed(1)
    sd = AestheticMLP(16).state_dict()
    assert sorted({k.split(".")[1] for k in sd}) == ["0", "2", "4", "6", "7"]
    save_file(sd, tmp_path / "head.safetensors")
    torch.save(sd, tmp_path / "head.pth")
    images = _images(size=32)
    _, model = _hand_cosine(tiny_clip_folder, images, PROMPTS)
    with torch.no_grad():
        e = model.visual_projection(model.vision_model(pixel_values=Preprocess(
            __import__("transformers").CLIPImageProcessor.from_pretrained(tiny_clip_folder))(images)).pooler_output)
    x = e / e.norm(dim=-1, keepdim=True)
    for i in ("0", "2", "4", "6", "7"):
        x = x @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    for head in ("head.safetensors", "head.pth"):
        reward = get_reward(f"aesthetic(model={tiny_clip_folder}, head={tmp_path / head})")
        torch.testing.assert_close(score(reward, images, PROMPTS)[0], x.squeeze(-1), atol=1e-5, rtol=0)


def test_a_wrong_head_file_is_a_clear_error(tiny_clip_folder, tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, tmp_path / "bad.safetensors")
    with pytest.raises(RewardError, match="not a AestheticMLP state dict"):
        get_reward(f"aesthetic(model={tiny_clip_folder}, head={tmp_path / 'bad.safetensors'})")


def test_clip_rewards_are_differentiable_in_the_images(tiny_clip_folder, tmp_path):
    images = _images(2, size=32).requires_grad_(True)
    # not clipscore: its clamp at 0 zeroes the gradient wherever a random model's cosine is negative
    reward = get_reward(f"hpsv2(model={tiny_clip_folder}, processor={tiny_clip_folder})")
    assert reward.differentiable
    out = reward(images, PROMPTS[:2], [{}, {}])
    out.scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_imagereward_is_the_standardised_mlp_of_the_cross_attended_first_token(tiny_blip_folder, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BlipForImageTextRetrieval

    from ddrl.rewards.aesthetic import AestheticMLP
    from ddrl.rewards.imagereward import REWARD_MEAN, REWARD_STD

    torch.manual_seed(2)
    head = AestheticMLP(32)
    save_file(head.state_dict(), tmp_path / "ir_head.safetensors")
    images = _images(size=32)
    blip = BlipForImageTextRetrieval.from_pretrained(tiny_blip_folder).eval()
    tok = AutoTokenizer.from_pretrained(tiny_blip_folder)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        patches = blip.vision_model(pixel_values=(images - mean) / std).last_hidden_state
        t = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        cls = blip.text_encoder(input_ids=t.input_ids, attention_mask=t.attention_mask,
                                encoder_hidden_states=patches).last_hidden_state[:, 0]
        expected = (head.eval()(cls) - REWARD_MEAN) / REWARD_STD
    with pytest.raises(RewardError, match="needs model=PATH"):
        get_reward("imagereward")
    reward = get_reward(f"imagereward(model={tiny_blip_folder}, head={tmp_path / 'ir_head.safetensors'}, batch_size=2)")
    torch.testing.assert_close(score(reward, images, PROMPTS)[0], expected, atol=1e-5, rtol=0)


def test_unknown_options_and_unloadable_models_are_clear_errors(tiny_clip_folder, tmp_path):
    with pytest.raises(RewardError, match="accepts: model, processor, device, batch_size, w"):
        get_reward(f"clipscore(model={tiny_clip_folder}, size=3)")
    with pytest.raises(RewardError, match="cannot load CLIP model"):
        get_reward(f"clipscore(model={tmp_path / 'missing'})")


def test_vlm_judge_is_the_normalised_yes_probability(tiny_vlm_folder):
    """p = e^l_yes / (e^l_yes + e^l_no) from the next-token logits after the generation prompt;
    scoring in batches (left-padded prompts of different lengths) gives each sample's lone score."""
    from ddrl.grid import to_pil
    from ddrl.rewards.vlm import JUDGE_QUESTION

    images = _images(size=48)
    judge = get_reward(f"vlm-judge(model={tiny_vlm_folder}, batch_size=3)")
    batched = score(judge, images, PROMPTS)[0]
    vlm = judge.vlm
    for i, p in enumerate(PROMPTS):
        inputs = vlm.inputs([[to_pil(images[i:i + 1])[0]]], [JUDGE_QUESTION.format(prompt=p)])
        with torch.no_grad():
            logits = vlm.model(**inputs).logits[0, -1]
        ly, ln = logits[vlm.token_id("yes")], logits[vlm.token_id("no")]
        assert batched[i] == pytest.approx(float(torch.exp(ly) / (torch.exp(ly) + torch.exp(ln))), abs=1e-5)


def test_pairwise_judge_is_order_symmetric(tiny_vlm_folder):
    """Averaging both presentation orders makes P(a > b) + P(b > a) = 1 and P(a > a) = 1/2."""
    judge = get_reward(f"vlm-judge(model={tiny_vlm_folder})")
    a, b = _images(size=48, seed=1), _images(size=48, seed=2)
    ab, ba = judge.compare(a, b, PROMPTS), judge.compare(b, a, PROMPTS)
    torch.testing.assert_close(ab + ba, torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(judge.compare(a, a, PROMPTS), torch.full((3,), 0.5), atol=1e-6, rtol=0)


def test_bertscore_recall_of_the_reference_itself_is_one(tiny_vlm_folder, tiny_bert_folder):
    """A VLM answer equal to the reference sentence matches every reference token to itself:
    recall 1. Unrelated words score below 1; an empty answer scores 0."""
    reward = get_reward(f"vlm-bertscore(model={tiny_vlm_folder}, bert_model={tiny_bert_folder}, num_layers=2, "
                        "max_new_tokens=4)")
    images = _images(size=48)
    scores, details = score(reward, images, PROMPTS)  # the tiny VLM's own (random) answers
    assert len(details["answer"]) == 3 and all(-1 <= s <= 1 for s in scores.tolist())
    scripted = iter([["the image contains a red circle", "yes no yes", ""]])
    reward.vlm.answer = lambda *a, **k: next(scripted)
    scores, _ = score(reward, images, ["a red circle", "two blue squares", "a circle"])
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] < 0.99
    assert scores[2] == 0.0


def test_default_hub_weights_fail_fast_and_clearly_offline():
    """With no network, a hub id that is not cached is one clear error, not a hang or a trace."""
    for spec, what in [("aesthetic", "CLIP model 'openai/clip-vit-large-patch14'"),
                       ("pickscore", "CLIP model 'yuvalkirstain/PickScore_v1'"),
                       ("vlm-judge", "processor 'Qwen/Qwen2.5-VL-3B-Instruct'")]:
        with pytest.raises(RewardError, match=f"reward '{spec}': cannot load {what}.*local folder"):
            get_reward(spec)


def test_the_float_path_gradient_matches_finite_differences(tiny_clip_folder):
    """With quantize=false (the float resize of ReFL's and AlignProp's code) the preprocessing is
    smooth, so autograd's directional derivative grad r . v equals the central difference
    (r(x + h v) - r(x - h v)) / 2h, through the resize, crop and normalisation (ALGORITHMS.md
    section 6's check). Images stay inside (0, 1), away from the clamp."""
    reward = get_reward(f"hpsv2(model={tiny_clip_folder}, processor={tiny_clip_folder}, quantize=false)")
    g = torch.Generator().manual_seed(0)
    x = (0.2 + 0.6 * _smooth_8bit(2, 48, 64)).requires_grad_(True)
    v = torch.randn(x.shape, generator=g)
    reward(x, PROMPTS[:2], [{}, {}]).scores.sum().backward()
    h = 1e-3
    with torch.no_grad():
        fd = (reward(x + h * v, PROMPTS[:2], [{}, {}]).scores.sum() - reward(x - h * v, PROMPTS[:2], [{}, {}]).scores.sum()) / (2 * h)
    analytic = (x.grad * v).sum()
    assert abs(float(fd - analytic)) < 1e-3 * abs(float(analytic)) + 1e-5, (float(fd), float(analytic))


def _ref_alignprop_preprocess(im_pix_un, target_size=224):
    """mihirp1998/AlignProp, alignprop_trainer.py, aesthetic_loss_fn's loss_fn: (x / 2 + 0.5)
    clamped, torchvision.transforms.Resize(224) on the float tensor, then Normalize with CLIP's
    statistics. torchvision resizes a tensor with F.interpolate(mode="bilinear",
    align_corners=False, antialias=True), the shorter side to 224 and the longer to
    int(224 * long / short)."""
    im_pix = ((im_pix_un / 2) + 0.5).clamp(0, 1)
    h, w = im_pix.shape[-2:]
    size = (target_size, int(target_size * w / h)) if h <= w else (int(target_size * h / w), target_size)
    im_pix = torch.nn.functional.interpolate(im_pix, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (im_pix - mean) / std


@pytest.mark.parametrize("side", [512, 256, 224])
def test_alignprops_bilinear_path_is_its_resize_exactly(side):
    """resize=bilinear with quantize=false is AlignProp's preprocessing (square images: its
    Resize(224) keeps no more than the 224 x 224 the CLIP processor's centre crop keeps); the
    processor's bicubic path differs from it by a few hundredths."""
    from types import SimpleNamespace

    processor = SimpleNamespace(size={"shortest_edge": 224}, do_center_crop=True,
                                crop_size={"height": 224, "width": 224},
                                image_mean=[0.48145466, 0.4578275, 0.40821073],
                                image_std=[0.26862954, 0.26130258, 0.27577711])
    g = torch.Generator().manual_seed(side)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, side + 8, side + 8, generator=g) * 2 - 1, 9, 1)
    ours = Preprocess(processor, quantize=False, resize="bilinear")(((x / 2) + 0.5).clamp(0, 1))
    assert torch.equal(ours, _ref_alignprop_preprocess(x))
    bicubic = Preprocess(processor, quantize=False)(((x / 2) + 0.5).clamp(0, 1))
    if side != 224:
        assert float((bicubic - ours).abs().mean()) > 1e-3
    with pytest.raises(ValueError, match="resize must be one of bicubic, bilinear, got 'nearest'"):
        Preprocess(processor, resize="nearest")
