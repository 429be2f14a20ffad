"""Rewards that ask a vision-language model (any transformers `AutoModelForImageTextToText` with a
chat template: LLaVA, Qwen2-VL, ...).

- `vlm-bertscore` (the DDPO paper's prompt alignment): the VLM answers "what is going on in this
  image?" and the reward is the BERTScore recall of its answer against "The image contains
  <prompt>". Precision, F1 and the answers are kept as details.
- `vlm-judge` (UnifiedReward / RewardDance style): the probability of "yes" to a question built
  from the prompt, normalised over the two answer tokens: p = e^l_yes / (e^l_yes + e^l_no) with l
  the next-token logits after the chat's generation prompt.
- `VlmJudge.compare` is the pairwise form: the probability that the first of two images is the
  better one ("1" over "2"), averaged over both presentation orders to cancel position bias.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..grid import to_pil
from .base import RewardError, RewardOutput
from .hf import default_device, load

ALIGNMENT_QUESTION = "Answer concisely: what is going on in this image?"
ALIGNMENT_REFERENCE = "The image contains {prompt}"
JUDGE_QUESTION = 'Does this image show "{prompt}"? Answer yes or no.'
PAIRWISE_QUESTION = 'Which image shows "{prompt}" better, image 1 or image 2? Answer 1 or 2.'


class VisionLanguageModel:
    def __init__(self, reward: str, model: str, device: str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.reward, self.device = reward, default_device(device)
        self.processor = load(reward, f"processor {model!r}", lambda: AutoProcessor.from_pretrained(model))
        self.model = load(reward, f"vision-language model {model!r}",
                          lambda: AutoModelForImageTextToText.from_pretrained(model))
        self.model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # generation continues from the last position of every row

    def inputs(self, images: list[list], questions: list[str]):
        chats = [[{"role": "user", "content": [{"type": "image"}] * len(ims) + [{"type": "text", "text": q}]}]
                 for ims, q in zip(images, questions)]
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True) for c in chats]
        flat = [im for ims in images for im in ims]
        return self.processor(images=flat, text=texts, return_tensors="pt", padding=True).to(self.device)

    @torch.no_grad()
    def answer(self, images: Tensor, questions: list[str], max_new_tokens: int) -> list[str]:
        inputs = self.inputs([[im] for im in to_pil(images)], questions)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def token_id(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RewardError(f"reward {self.reward!r}: {word!r} is not a single token for this tokenizer ({ids})")
        return ids[0]

    @torch.no_grad()
    def choice_probability(self, images: list[list], questions: list[str], first: str, second: str) -> Tensor:
        """P(first) / (P(first) + P(second)) for the next token of each chat."""
        inputs = self.inputs(images, questions)
        # with left padding, positions must count from each row's first real token, as generate() does
        positions = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        logits = self.model(**inputs, position_ids=positions).logits[:, -1].float()
        pair = logits[:, [self.token_id(first), self.token_id(second)]]
        return pair.softmax(-1)[:, 0].cpu()


def _check_batch(reward: str, batch_size: int) -> None:
    if batch_size < 1:
        raise RewardError(f"reward {reward!r}: batch_size must be >= 1, got {batch_size}")


class VlmBertScore:
    name = "vlm-bertscore"
    differentiable = False

    def __init__(self, vlm: VisionLanguageModel, scorer, question: str, reference: str, batch_size: int,
                 max_new_tokens: int):
        _check_batch(self.name, batch_size)
        self.vlm, self.scorer, self.question, self.reference = vlm, scorer, question, reference
        self.batch_size, self.max_new_tokens, self.device = batch_size, max_new_tokens, vlm.device

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        answers = []
        for i in range(0, len(images), self.batch_size):
            answers += self.vlm.answer(images[i:i + self.batch_size], [self.question] * len(images[i:i + self.batch_size]),
                                       self.max_new_tokens)
        refs = [self.reference.format(prompt=p) for p in prompts]
        # an empty answer has no tokens to match: recall 0, not BERTScore's warning and NaN
        safe = [a if a.strip() else "." for a in answers]
        p, r, f = self.scorer.score(safe, refs, batch_size=self.batch_size)
        empty = torch.tensor([not a.strip() for a in answers])
        r = torch.where(empty, torch.zeros_like(r), r)
        return RewardOutput(r.float(), {"answer": answers, "precision": p.tolist(), "f1": f.tolist()})


def vlm_bertscore(model: str = "llava-hf/llava-1.5-7b-hf", bert_model: str = "roberta-large", num_layers: int = 17,
                  question: str = ALIGNMENT_QUESTION, reference: str = ALIGNMENT_REFERENCE, device: str | None = None,
                  batch_size: int = 16, max_new_tokens: int = 32) -> VlmBertScore:
    """BERTScore defaults are bert-score's for English: roberta-large, layer 17, no idf, no rescaling."""
    from bert_score import BERTScorer

    vlm = VisionLanguageModel("vlm-bertscore", model, device)
    scorer = load("vlm-bertscore", f"BERTScore model {bert_model!r}",
                  lambda: BERTScorer(model_type=bert_model, num_layers=num_layers, device=vlm.device))
    return VlmBertScore(vlm, scorer, question, reference, batch_size, max_new_tokens)


class VlmJudge:
    name = "vlm-judge"
    differentiable = False

    def __init__(self, vlm: VisionLanguageModel, question: str, pairwise_question: str, batch_size: int,
                 yes: str = "yes", no: str = "no"):
        _check_batch(self.name, batch_size)
        self.vlm, self.question, self.pairwise_question = vlm, question, pairwise_question
        self.batch_size, self.yes, self.no, self.device = batch_size, yes, no, vlm.device

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        pils, out = to_pil(images), []
        for i in range(0, len(pils), self.batch_size):
            sl = slice(i, i + self.batch_size)
            out.append(self.vlm.choice_probability([[im] for im in pils[sl]],
                                                   [self.question.format(prompt=p) for p in prompts[sl]],
                                                   self.yes, self.no))
        return RewardOutput(torch.cat(out))

    def compare(self, images_a: Tensor, images_b: Tensor, prompts: Sequence[str]) -> Tensor:
        """P(image a is better than image b), (B,), averaged over both orders."""
        if images_a.shape != images_b.shape or len(images_a) != len(prompts):
            raise RewardError(f"reward {self.name!r}: compare needs two image batches of one shape and a prompt each")
        a, b, out = to_pil(images_a), to_pil(images_b), []
        for i in range(0, len(a), self.batch_size):
            sl = slice(i, i + self.batch_size)
            qs = [self.pairwise_question.format(prompt=p) for p in prompts[sl]]
            ab = self.vlm.choice_probability([[x, y] for x, y in zip(a[sl], b[sl])], qs, "1", "2")
            ba = self.vlm.choice_probability([[y, x] for x, y in zip(a[sl], b[sl])], qs, "1", "2")
            out.append((ab + (1 - ba)) / 2)
        return torch.cat(out)


def vlm_judge(model: str = "Qwen/Qwen2.5-VL-3B-Instruct", question: str = JUDGE_QUESTION,
              pairwise_question: str = PAIRWISE_QUESTION, device: str | None = None, batch_size: int = 8,
              yes: str = "yes", no: str = "no") -> VlmJudge:
    return VlmJudge(VisionLanguageModel("vlm-judge", model, device), question, pairwise_question, batch_size, yes, no)
