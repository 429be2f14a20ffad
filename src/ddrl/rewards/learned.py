"""Reward models trained on preference pairs with the Bradley-Terry model (ALGORITHMS.md section 8):
P(i preferred to j) = sigmoid(s_i - s_j), loss = -log sigmoid(s_chosen - s_rejected).

The model s(image, prompt) is a small CNN on the image, conditioned on frozen prompt features from
a CLIP text encoder (a built-in model's, a diffusers folder's, or a hub id's). It is saved as a
folder (`reward_model.json` + `model.safetensors`) that `learned(path=DIR)` loads as a reward.
Pairs are JSONL lines {"prompt", "chosen", "rejected"} with image paths relative to the file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bounds import number_problem
from ..io import atomic_write_text, check_writable_dir
from .base import RewardError, RewardOutput, in_batches

CONFIG, WEIGHTS = "reward_model.json", "model.safetensors"


class TextFeatures:
    """Frozen prompt features: [pooled, mean of token states] of a CLIP text encoder, cached per prompt."""

    def __init__(self, source: str, device: str = "cpu"):
        from transformers import CLIPTextModel, CLIPTokenizer

        from ..models.loading import BUILTIN, builtin_path

        where = str(builtin_path(source)) if source in BUILTIN else source
        sub = "text_encoder" if (Path(where) / "text_encoder").is_dir() or source in BUILTIN else ""
        tsub = "tokenizer" if sub else ""
        try:
            self.model = CLIPTextModel.from_pretrained(where, subfolder=sub).to(device).eval().requires_grad_(False)
            self.tokenizer = CLIPTokenizer.from_pretrained(where, subfolder=tsub)
        except OSError as e:
            raise RewardError(f"cannot load a CLIP text encoder from {source!r}: {str(e).splitlines()[0]}") from None
        self.device, self.cache = device, {}
        self.dim = 2 * self.model.config.hidden_size
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Tensor:
        new = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if new:
            tok = self.tokenizer(new, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            out = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
            mask = tok.attention_mask[..., None].float()
            mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
            for p, f in zip(new, torch.cat([out.pooler_output, mean], -1)):
                self.cache[p] = f
        return torch.stack([self.cache[p] for p in prompts])


class PreferenceCNN(nn.Module):
    """s(image, prompt). Four stride-2 convolutions; the head sees the coarse spatial map
    flattened (so left/right/above relations stay visible) and its spatial mean (global colour)."""

    def __init__(self, text_dim: int, image_size: int = 48, width: int = 32, dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.image_size = image_size
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.cnn = nn.Sequential(*layers)
        side = image_size
        for _ in range(4):
            side = (side + 1) // 2
        self.image_proj = nn.Linear(chans[-1] * (side * side + 1), dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(3 * dim, dim), nn.SiLU(), nn.Dropout(dropout),
                                  nn.Linear(dim, 1))

    def forward(self, images: Tensor, text: Tensor) -> Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        maps = self.cnn(images * 2 - 1)
        f = self.image_proj(torch.cat([maps.flatten(1), maps.mean(dim=(2, 3))], -1))
        t = self.text_proj(text)
        return self.head(torch.cat([f, t, f * t], -1)).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# data


def read_pairs(path: str | Path) -> list[dict]:
    """Pairs from a JSONL file (or a folder holding `pairs.jsonl`), image paths made absolute, read
    by ddrl.data.pairs (which Diffusion-DPO shares). A row with a missing, empty or non-text value,
    an unknown field or a missing image is refused with its line number."""
    from ..data.pairs import DataError, read_jsonl_pairs

    try:
        rows = read_jsonl_pairs(path, skip=False).rows
    except DataError as e:
        raise RewardError(str(e)) from None
    if not rows:
        raise RewardError(f"{path} has no pairs")
    return [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "line": r.where} for r in rows]


def load_images(paths: Sequence[str]) -> Tensor:
    from ..decode import ImageDecodeError, rgb_array

    arrays = []
    for p in paths:
        try:
            arrays.append(rgb_array(p, f"the image {p}"))
        except ImageDecodeError as e:  # unreadable, or 16-bit/float: the one decoder's message
            raise RewardError(str(e)) from None
    if len({a.shape for a in arrays}) > 1:
        raise RewardError(f"pair images differ in size: {sorted({a.shape for a in arrays})}; resize them to one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # uint8


def split_by_prompt(pairs: list[dict], heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out pairs are those of a random subset of prompts, so accuracy is measured on unseen prompts."""
    prompts = sorted({p["prompt"] for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:max(1, round(heldout_fraction * len(prompts)))])
    return [p for p in pairs if p["prompt"] not in held], [p for p in pairs if p["prompt"] in held]


# ---------------------------------------------------------------------------------------------
# training


def bradley_terry_loss(s_chosen: Tensor, s_rejected: Tensor) -> Tensor:
    """-log sigmoid(s_w - s_l), averaged; logsigmoid is the stable form."""
    return -F.logsigmoid(s_chosen - s_rejected).mean()


class _Indexed:
    """Pairs as indices into one uint8 image tensor and one text-feature tensor."""

    def __init__(self, pairs: list[dict], text: TextFeatures):
        paths = sorted({p[k] for p in pairs for k in ("chosen", "rejected")})
        where = {p: i for i, p in enumerate(paths)}
        self.images = load_images(paths)
        # a pair of identical images carries no preference: dropped, and its line reported
        same = [torch.equal(self.images[where[p["chosen"]]], self.images[where[p["rejected"]]]) for p in pairs]
        self.dropped = [p["line"] for p, s in zip(pairs, same) if s]
        pairs = [p for p, s in zip(pairs, same) if not s]
        if not pairs:
            raise RewardError(f"every pair has identical chosen and rejected images (e.g. {self.dropped[0]})")
        prompts = sorted({p["prompt"] for p in pairs})
        pid = {p: i for i, p in enumerate(prompts)}
        self.text = text(prompts)
        self.chosen = torch.tensor([where[p["chosen"]] for p in pairs])
        self.rejected = torch.tensor([where[p["rejected"]] for p in pairs])
        self.prompt = torch.tensor([pid[p["prompt"]] for p in pairs])

    def __len__(self) -> int:
        return len(self.prompt)

    def scores(self, model: PreferenceCNN, idx: Tensor, shift: int = 0, gen=None) -> tuple[Tensor, Tensor]:
        t = self.text[self.prompt[idx]]
        imgs = torch.cat([self.images[self.chosen[idx]], self.images[self.rejected[idx]]]).float() / 255
        if shift:
            imgs = random_shift(imgs, shift, gen)
        s = model(imgs, torch.cat([t, t]))
        return s[:len(idx)], s[len(idx):]


def random_shift(images: Tensor, shift: int, gen: torch.Generator | None) -> Tensor:
    """Translate each image by up to `shift` pixels (edges replicated). A translation keeps
    colours, counts and left/right/above relations, so it keeps the preference too."""
    n, _, h, w = images.shape
    padded = F.pad(images, (shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 3, h, w + 2 * shift)
    picked = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 3, h, w)
    return picked.gather(3, cols)


@torch.no_grad()
def pairwise_accuracy(model: PreferenceCNN, data: _Indexed, batch_size: int = 256) -> float:
    model.eval()
    correct = in_batches(lambda sl: torch.gt(*data.scores(model, torch.arange(len(data))[sl])).float(),
                         len(data), batch_size)
    return float(correct.mean())


def train_reward_model(pairs: str | Path, out_dir: str | Path, *, heldout: Sequence[str | Path] = (),
                       heldout_fraction: float = 0.2, text_encoder: str = "shapes-sd", epochs: int = 4,
                       batch_size: int = 64, learning_rate: float = 1e-3, weight_decay: float = 0.2,
                       image_size: int = 48, width: int = 32, dropout: float = 0.2, shift: int = 6, seed: int = 0,
                       progress: bool = True) -> dict:
    """Fit a Bradley-Terry PreferenceCNN, save it to `out_dir`, and return its metrics: pairwise
    accuracy on each held-out file per epoch (named by file stem; without files, a split of
    `heldout_fraction` of the prompts). The saved model is the last epoch's: no held-out set
    chooses it."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 1 or not 0 < heldout_fraction < 1:
        raise RewardError("need epochs >= 1, batch_size >= 1 and 0 < heldout_fraction < 1")
    if problem := number_problem(learning_rate, "(0, inf)"):
        raise RewardError(f"learning_rate {problem}")
    if (Path(out_dir) / CONFIG).exists():
        raise RewardError(f"{out_dir} already holds a reward model; choose another output folder or delete it")
    check_writable_dir(out_dir, "the output folder")  # before the work, not after it
    train_pairs = read_pairs(pairs)
    if heldout:
        held_sets = {Path(h).stem: read_pairs(h) for h in heldout}
    else:
        prompts = {p["prompt"] for p in train_pairs}
        if len(prompts) < 2:
            raise RewardError(f"{pairs}: all {len(train_pairs)} pairs share one prompt; held-out accuracy is measured "
                              "on other prompts, so give pairs of at least 2 prompts or a --heldout file")
        train_pairs, held = split_by_prompt(train_pairs, heldout_fraction, seed)
        held_sets = {"heldout": held}
    torch.manual_seed(seed)
    text = TextFeatures(text_encoder)
    train = _Indexed(train_pairs, text)
    helds = {name: _Indexed(p, text) for name, p in held_sets.items()}
    dropped = train.dropped + [line for d in helds.values() for line in d.dropped]
    if dropped:
        print(f"reward-train: dropped {len(dropped)} pair(s) whose chosen and rejected images are identical "
              f"(e.g. {', '.join(dropped[:3])})")
    model = PreferenceCNN(text.dim, image_size, width, dropout=dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = []
    steps = epochs * -(-len(train) // batch_size)
    bar = tqdm(total=steps, desc="reward-train", disable=not progress)
    for epoch in range(epochs):
        model.train()
        losses = []
        for idx in torch.randperm(len(train), generator=gen).split(batch_size):
            loss = bradley_terry_loss(*train.scores(model, idx, shift, gen))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update()
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        row |= {f"{name}_accuracy": pairwise_accuracy(model, d) for name, d in helds.items()}
        history.append(row)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch"})
    bar.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS)
    metrics = {"train_pairs": len(train), **{f"{n}_pairs": len(d) for n, d in helds.items()},
               "dropped_identical_pairs": len(dropped),
               "train_accuracy": pairwise_accuracy(model, train), "history": history,
               **{k: v for k, v in history[-1].items() if k.endswith("_accuracy")}}
    config = {"kind": "bradley-terry-cnn", "text_encoder": text_encoder, "image_size": image_size, "width": width,
              "text_dim": text.dim, "metrics": metrics}
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2))  # written last: its presence marks a complete model
    return metrics


class LearnedReward:
    differentiable = True

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 256):
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
            raise RewardError(f"reward 'learned': {path} is not a `ddrl reward-train` output ({CONFIG}, {WEIGHTS})")
        self.device = device or "cpu"
        self.name, self.batch_size = "learned", batch_size
        try:
            cfg = json.loads((path / CONFIG).read_text())
            self.model = PreferenceCNN(cfg["text_dim"], cfg["image_size"], cfg["width"])
            self.model.load_state_dict(load_file(path / WEIGHTS))
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise RewardError(f"reward 'learned': {path} holds a damaged or foreign reward model "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        self.text = TextFeatures(cfg["text_encoder"], self.device)
        self.model.to(self.device).eval().requires_grad_(False)

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        text = self.text(list(prompts))
        with torch.set_grad_enabled(images.requires_grad):
            s = in_batches(lambda sl: self.model(images[sl].to(self.device), text[sl]), len(images), self.batch_size)
        return RewardOutput(s.float())


def learned_reward(path: str, device: str | None = None, batch_size: int = 256) -> LearnedReward:
    return LearnedReward(path, device, batch_size)
