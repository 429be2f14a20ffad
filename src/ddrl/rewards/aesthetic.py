"""The LAION aesthetic predictor (improved-aesthetic-predictor, `sac+logos+ava1-l14-linearMSE`),
the DDPO paper's aesthetic reward: the L2-normalised CLIP ViT-L/14 image embedding into an MLP
768 -> 1024 -> 128 -> 64 -> 16 -> 1 trained on human 1-10 ratings.

The MLP has dropout between its first layers and no nonlinearity, so at inference it is one affine
map; the layer names follow the released weights (`layers.0`, `layers.2`, `layers.4`, `layers.6`,
`layers.7`) so those load as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .base import RewardError, RewardOutput, in_batches
from .clip import ClipBackbone
from .hf import load

HEAD_REPO, HEAD_FILE = "trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"


class AestheticMLP(nn.Module):
    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embeds: Tensor) -> Tensor:
        return self.layers(embeds).squeeze(-1)


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors from a .safetensors file, or from a .pt/.pth file read with `weights_only=True`
    (tensors only: no code in the file runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_head(reward: str, head: str | None, module: nn.Module) -> nn.Module:
    """Weights for `module` from a local file, or `repo_id/filename` on the hub."""
    if head is None or not Path(head).exists():
        from huggingface_hub import hf_hub_download

        repo, _, filename = (head or f"{HEAD_REPO}/{HEAD_FILE}").rpartition("/")
        head = load(reward, f"head weights {filename!r} from {repo!r}", lambda: hf_hub_download(repo, filename))
    try:
        module.load_state_dict(load_state_dict(head))
    except (RuntimeError, OSError, ValueError) as e:
        raise RewardError(f"reward {reward!r}: {head} is not a {type(module).__name__} state dict: "
                          f"{str(e).splitlines()[0]}") from None
    return module


class AestheticReward:
    name = "aesthetic"
    differentiable = True

    def __init__(self, backbone: ClipBackbone, head: AestheticMLP, batch_size: int):
        self.backbone, self.head, self.batch_size = backbone, head.to(backbone.device).eval(), batch_size
        self.head.requires_grad_(False)
        self.device = backbone.device

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        with torch.set_grad_enabled(images.requires_grad):
            scores = in_batches(lambda sl: self.head(self.backbone.image_embeds(images[sl])), len(images),
                                self.batch_size)
        return RewardOutput(scores.float())


def aesthetic(model: str = "openai/clip-vit-large-patch14", head: str | None = None, device: str | None = None,
              batch_size: int = 32, quantize: bool = True, resize: str = "bicubic") -> AestheticReward:
    """`head`: a .safetensors/.pth file or `repo_id/filename`; default the MLP TRL hosts. `quantize`
    and `resize`: ddrl.rewards.hf.Preprocess (AlignProp's path: quantize false, resize bilinear)."""
    backbone = ClipBackbone("aesthetic", model, None, device, quantize, resize)
    mlp = load_head("aesthetic", head, AestheticMLP(backbone.model.config.projection_dim))
    return AestheticReward(backbone, mlp, batch_size)
