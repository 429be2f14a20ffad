"""The reward interface every reward in ddrl implements, and the checks around it.

A reward is called with a batch of images (a float tensor (B, 3, H, W) in [0, 1]; `score` also
takes a list of PIL images), their prompts and per-sample metadata, and returns a `RewardOutput`:
a float tensor of shape (B,), higher is better, and optional per-sample details (lists of length B).
Rewards that run a network batch internally (`batch_size`) and live on one `device`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor


class RewardError(ValueError):
    """A reward was given bad input or returned something unusable; the message names it."""


@dataclass(frozen=True)
class RewardOutput:
    scores: Tensor  # (B,) float
    details: dict[str, list[Any]] = field(default_factory=dict)  # each a list of length B


class RewardFn(Protocol):
    name: str
    differentiable: bool
    """True if scores carry gradients back to the images (for reward backpropagation)."""
    device: str

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput: ...


def as_image_tensor(name: str, images: Any) -> Tensor:
    """A (B, 3, H, W) float tensor from a tensor or a list of same-sized PIL images."""
    if torch.is_tensor(images):
        return images
    if isinstance(images, (list, tuple)) and images and all(hasattr(im, "convert") for im in images):
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            raise RewardError(f"reward {name!r}: PIL images of different sizes {sorted(sizes)}; resize them to one size")
        from ..decode import ImageDecodeError, rgb_array

        try:
            arr = np.stack([rgb_array(im, f"reward {name!r}: image {i}") for i, im in enumerate(images)])
        except ImageDecodeError as e:
            raise RewardError(str(e)) from None
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
    if isinstance(images, (list, tuple)) and not images:
        raise RewardError(f"reward {name!r}: empty batch")
    raise RewardError(f"reward {name!r}: expected a (B, 3, H, W) tensor or a list of PIL images, "
                      f"got {type(images).__name__}")


def in_batches(fn: Callable[[slice], Tensor], n: int, batch_size: int) -> Tensor:
    """`fn` applied to consecutive slices of at most `batch_size` of `range(n)`, concatenated."""
    return torch.cat([fn(slice(i, min(i + batch_size, n))) for i in range(0, n, batch_size)])


def check_images(name: str, images: Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise RewardError(f"reward {name!r}: expected images of shape (B, 3, H, W), got {shape}")
    if not images.is_floating_point():
        raise RewardError(f"reward {name!r}: expected float images in [0, 1], got dtype {images.dtype}")
    if len(images) == 0:
        raise RewardError(f"reward {name!r}: empty batch")
    finite = torch.isfinite(images).flatten(1).all(1)
    if not finite.all():
        bad = (~finite).nonzero().flatten().tolist()
        raise RewardError(f"reward {name!r}: images at batch positions {bad[:8]} hold non-finite values (NaN or inf)")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise RewardError(f"reward {name!r}: images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")


def check_output(name: str, out: RewardOutput, batch: int) -> Tensor:
    """The (B,) scores as returned (gradients kept), or a RewardError naming the reward."""
    scores = out.scores if isinstance(out, RewardOutput) else None
    if scores is None or not torch.is_tensor(scores):
        raise RewardError(f"reward {name!r} returned {type(out).__name__}, expected RewardOutput")
    if scores.shape != (batch,):
        raise RewardError(f"reward {name!r} returned scores of shape {tuple(scores.shape)} for a batch of {batch}")
    if not torch.isfinite(scores).all():
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        raise RewardError(f"reward {name!r} returned non-finite scores at batch positions {bad[:8]}")
    if len(out.details) and any(len(v) != batch for v in out.details.values()):
        bad = {k: len(v) for k, v in out.details.items() if len(v) != batch}
        raise RewardError(f"reward {name!r} returned details of the wrong length for a batch of {batch}: {bad}")
    return scores


def score(reward: RewardFn, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None
          ) -> tuple[Tensor, dict[str, list[Any]]]:
    """Call a reward with its input and output checked; `images` may be a list of PIL images."""
    images = as_image_tensor(reward.name, images)
    check_images(reward.name, images)
    if len(prompts) != len(images):
        raise RewardError(f"reward {reward.name!r}: {len(images)} images but {len(prompts)} prompts")
    metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
    out = reward(images, list(prompts), metadata)
    return check_output(reward.name, out, len(images)).detach().float().cpu(), out.details
