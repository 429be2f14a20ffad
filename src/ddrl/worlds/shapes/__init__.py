"""The built-in shapes world: a renderer, GenEval-style prompts with a fixed split, a verifier."""

from .prompts import (CATEGORIES, COLORS, NUMBERS, RELATIONS, SHAPES, PromptSpec, category_of,
                      format_prompt, parse_prompt, split, vocabulary)
from .render import IMAGE_SIZE, make_scene, render, render_scene
from .verifier import Verdict, detect, verify

__all__ = ["CATEGORIES", "COLORS", "IMAGE_SIZE", "NUMBERS", "RELATIONS", "SHAPES", "PromptSpec",
           "Verdict", "category_of", "detect", "format_prompt", "make_scene", "parse_prompt",
           "render", "render_scene", "split", "verify", "vocabulary"]
