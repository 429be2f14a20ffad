"""Rewards: a registry of factories keyed by name, and `get_reward`, which builds any reward
specification (see `ddrl.rewards.spec`): a name with options, a remote server, a weighted sum or a
per-prompt routing. Heavy imports belong inside factories."""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

from .base import RewardError, RewardFn, RewardOutput, as_image_tensor, check_images, check_output, score
from .spec import Atom, Node, Route, Sum, parse


@dataclass(frozen=True)
class RewardSpec:
    factory: Callable[..., RewardFn]
    inputs: str
    description: str
    extras: str = ""
    """the pip extra it needs beyond ddrl's own dependencies (`pip install ddrl[<extras>]`)"""
    differentiable: bool = False
    """its scores carry gradients to the images (reward backpropagation can use it)"""


def _lazy(module: str, function: str) -> Callable[..., RewardFn]:
    """A factory that imports `ddrl.rewards.<module>` only when called."""
    def make(**options):
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)(**options)
    make.target = (module, function)
    return make


REWARDS: dict[str, RewardSpec] = {
    "jpeg-compressibility": RewardSpec(_lazy("jpeg", "jpeg_compressibility"), "images",
                                       "minus the JPEG size (kB, quality 95); DDPO paper"),
    "jpeg-incompressibility": RewardSpec(_lazy("jpeg", "jpeg_incompressibility"), "images",
                                         "the JPEG size (kB, quality 95); DDPO paper"),
    "shapes-verifier": RewardSpec(_lazy("shapes", "shapes_verifier"), "images, shapes-world prompts",
                                  "verifier partial credit in [0, 1] (1 when correct)"),
    "shapes-accuracy": RewardSpec(_lazy("shapes", "shapes_accuracy"), "images, shapes-world prompts",
                                  "verifier verdict: 1 if the image satisfies its prompt, else 0"),
    "shapes-preference": RewardSpec(_lazy("shapes", "shapes_preference"), "images, shapes-world prompts",
                                    "the hidden preference of `ddrl reward-pairs`: correctness + "
                                    "saturation_weight (0.5) * mean HSV saturation"),
    "aesthetic": RewardSpec(_lazy("aesthetic", "aesthetic"), "images",
                            "LAION aesthetic predictor, 1-10 (CLIP ViT-L/14 + MLP); DDPO paper", differentiable=True),
    "clipscore": RewardSpec(_lazy("clip", "clipscore"), "images, prompts", "2.5 * max(CLIP cosine, 0)", differentiable=True),
    "pickscore": RewardSpec(_lazy("clip", "pickscore"), "images, prompts",
                            "PickScore_v1: exp(logit_scale) * CLIP-H cosine, about 18-24", differentiable=True),
    "hpsv2": RewardSpec(_lazy("clip", "hpsv2"), "images, prompts",
                        "HPS v2/v2.1 CLIP-H cosine, about 0.2-0.35 (model=PATH of converted weights)", differentiable=True),
    "imagereward": RewardSpec(_lazy("imagereward", "imagereward"), "images, prompts",
                              "ImageReward-style BLIP + MLP, standardised (model=BLIP folder, head=FILE)", differentiable=True),
    "vlm-bertscore": RewardSpec(_lazy("vlm", "vlm_bertscore"), "images, prompts",
                                "BERTScore recall of a VLM's answer to 'what is going on in this image?' "
                                "against the prompt; DDPO paper", extras="rewards"),
    "vlm-judge": RewardSpec(_lazy("vlm", "vlm_judge"), "images, prompts",
                            "a VLM's probability of 'yes' to 'does this image show <prompt>?'"),
    "learned": RewardSpec(_lazy("learned", "learned_reward"), "images, prompts",
                          "a Bradley-Terry reward model trained with `ddrl reward-train` (path=DIR)", differentiable=True),
}


def options_help(name: str) -> str:
    """The options a registered reward's factory accepts."""
    module, function = REWARDS[name].factory.target
    params = inspect.signature(getattr(importlib.import_module(f"{__name__}.{module}"), function)).parameters
    return ", ".join(params) or "none"


def _atom(atom: Atom) -> RewardFn:
    if atom.name.startswith("remote:"):
        from .remote import RemoteReward

        return _call(RemoteReward, atom.name[len("remote:"):], atom.options, "remote")
    if atom.name not in REWARDS:
        close = difflib.get_close_matches(atom.name, REWARDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RewardError(f"unknown reward {atom.name!r}{hint} Known: {', '.join(REWARDS)}, or remote:URL")
    return _call(REWARDS[atom.name].factory, None, atom.options, atom.name)


def _call(factory, url, options: dict, name: str) -> RewardFn:
    try:
        return factory(url, **options) if url is not None else factory(**options)
    except TypeError as e:
        if "argument" not in str(e):
            raise
        accepted = ", ".join(list(inspect.signature(factory).parameters)[1:]) if url is not None else options_help(name)
        raise RewardError(f"reward {name!r}: bad options {options} ({e}); it accepts: {accepted}") from None
    except ImportError as e:
        extra = REWARDS[name].extras if name in REWARDS else ""
        hint = f"; install it with `pip install ddrl[{extra}]`" if extra else ""
        raise RewardError(f"reward {name!r} needs a package that is not installed ({e.name}){hint}") from None


def non_differentiable(node: Node) -> list[str]:
    """The rewards in a specification whose scores carry no gradient to the images (remote ones
    included: images cross the network as PNG), read from the registry without building any."""
    if isinstance(node, Atom):
        ok = node.name in REWARDS and REWARDS[node.name].differentiable
        return [] if ok else [node.name]
    children = [n for _, n in node.terms] if isinstance(node, Sum) else [n for _, n in node.cases]
    return [name for n in children for name in non_differentiable(n)]


def build(node: Node) -> RewardFn:
    from .compose import Routed, WeightedSum

    if isinstance(node, Atom):
        return _atom(node)
    if isinstance(node, Sum):
        return WeightedSum([(w, build(n)) for w, n in node.terms])
    assert isinstance(node, Route)
    routes = {v: build(n) for v, n in node.cases if v != "*"}
    default = [build(n) for v, n in node.cases if v == "*"]
    return Routed(node.key, routes, default[0] if default else None)


def get_reward(spec: str) -> RewardFn:
    """The reward a specification names; see `ddrl.rewards.spec` for the syntax."""
    return build(parse(spec))


__all__ = ["REWARDS", "RewardError", "RewardFn", "RewardOutput", "RewardSpec", "as_image_tensor", "build",
           "check_images", "check_output", "get_reward", "non_differentiable", "options_help", "parse", "score"]
