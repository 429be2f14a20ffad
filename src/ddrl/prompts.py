"""Prompt sources for training and evaluation: the shapes world's splits, a list of animals
(the DDPO paper's kind of prompt set for Stable Diffusion), or a text file."""

from __future__ import annotations

from pathlib import Path

ANIMALS = (
    "cat", "dog", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "squirrel", "fox",
    "wolf", "bear", "panda", "lion", "tiger", "leopard", "cheetah", "elephant", "giraffe", "zebra",
    "hippopotamus", "rhinoceros", "camel", "kangaroo", "koala", "monkey", "gorilla", "deer",
    "moose", "raccoon", "otter", "beaver", "hedgehog", "owl", "eagle", "parrot", "penguin",
    "flamingo", "duck", "chicken", "swan", "turtle", "frog", "crocodile",
)


def load_prompts(source: str) -> list[str]:
    """shapes:train|heldout|all, animals, or file:PATH (one prompt per non-empty line)."""
    if source.startswith("shapes:"):
        from .worlds.shapes import split

        return split(source.split(":", 1)[1])
    if source == "animals":
        return list(ANIMALS)
    if source.startswith("file:"):
        path = Path(source[5:])
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompt file {path} has no prompts")
        return prompts
    raise ValueError(f"unknown prompt source {source!r}")
