"""Prompt sources for training and evaluation: the shapes world's splits, a list of animals
(the DDPO paper's kind of prompt set for Stable Diffusion), those animals doing the paper's three
activities (its prompt-alignment task), a text file, or a JSONL file whose
lines carry metadata beside the prompt (which a routed reward reads, e.g. {"prompt": ..., "task": "ocr"})."""

from __future__ import annotations

import json
from pathlib import Path

from .io import read_text

ANIMALS = (
    "cat", "dog", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "squirrel", "fox",
    "wolf", "bear", "panda", "lion", "tiger", "leopard", "cheetah", "elephant", "giraffe", "zebra",
    "hippopotamus", "rhinoceros", "camel", "kangaroo", "koala", "monkey", "gorilla", "deer",
    "moose", "raccoon", "otter", "beaver", "hedgehog", "owl", "eagle", "parrot", "penguin",
    "flamingo", "duck", "chicken", "swan", "turtle", "frog", "crocodile",
)

# prompt sets registered from Python (ddrl.register_prompts): prompts.source python:NAME
PYTHON_SOURCES: dict[str, list[tuple[str, dict]]] = {}

# the activities of the DDPO paper's prompt-alignment task (ddpo-pytorch assets/activities.txt)
ACTIVITIES = ("washing the dishes", "riding a bike", "playing chess")


def animal_activities() -> list[str]:
    """'a cat riding a bike', 'an owl playing chess', ...: every animal with every activity."""
    return [f"{'an' if a[0] in 'aeiou' else 'a'} {a} {act}" for a in ANIMALS for act in ACTIVITIES]


def load_prompt_records(source: str) -> list[tuple[str, dict]]:
    """(prompt, metadata) pairs from shapes:train|heldout|all[:CATEGORIES], animals, animal-activities,
    file:PATH.txt (one prompt per non-empty line) or file:PATH.jsonl (objects with "prompt"; the
    other keys are metadata)."""
    if source.startswith("shapes:"):
        from .worlds.shapes.prompts import source_split

        return [(p, {}) for p in source_split(source)]
    if source.startswith("python:"):
        if source[7:] not in PYTHON_SOURCES:
            raise ValueError(f"prompt source {source!r} is not registered in this process (ddrl.register_prompts)")
        return list(PYTHON_SOURCES[source[7:]])
    if source == "animals":
        return [(p, {}) for p in ANIMALS]
    if source == "animal-activities":
        return [(p, {}) for p in animal_activities()]
    if source.startswith("file:"):
        path = Path(source[5:])
        lines = [(n, line.strip()) for n, line in enumerate(read_text(path, "prompt file").splitlines(), 1)
                 if line.strip()]
        if not lines:
            raise ValueError(f"prompt file {path} has no prompts")
        if path.suffix != ".jsonl":
            return [(line, {}) for _, line in lines]
        records = []
        for n, line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                raise ValueError(f"{path}:{n}: not JSON; expected an object with a \"prompt\" key") from None
            prompt = row.pop("prompt", None) if isinstance(row, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{path}:{n}: \"prompt\" must be non-empty text, got {prompt!r}")
            records.append((prompt.strip(), row))
        return records
    raise ValueError(f"unknown prompt source {source!r}; expected shapes:train|heldout|all[:CATEGORIES], animals, "
                     "animal-activities, file:PATH, or python:NAME")


def load_prompts(source: str) -> list[str]:
    return [p for p, _ in load_prompt_records(source)]


def shown(prompt: str, limit: int = 60) -> str:
    """A prompt quoted for an error message, cut to `limit` characters (prompts may be huge)."""
    return repr(prompt if len(prompt) <= limit else prompt[:limit] + "...")
