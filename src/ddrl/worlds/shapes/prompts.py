"""GenEval-style prompts for the shapes world, their parser, and the train / held-out split.

The six categories follow GenEval (Ghosh et al. 2023): single object, two objects, counting,
colours, relative position and colour attribution. Every prompt is generated from a small
grammar, and `parse_prompt` turns any string of that grammar back into a `PromptSpec`, so the
verifier can score prompts typed on the command line as well as generated ones.

The held-out split removes *attribute combinations*, not just strings: a held-out prompt contains
at least one combination (a colour on a shape, a count of a shape, a pair of shapes, a spatial
relation between two shapes, or a shape asked for alone) that no training prompt contains. That
is the setting of the DDPO paper's generalisation experiment: RL sees only training prompts and
is evaluated on prompts whose combinations it never saw.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "yellow", "green", "blue", "purple")
NUMBERS = ("one", "two", "three", "four")
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str | None = None  # None: any colour


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for. `count` is set only for counting; `relation` only for position
    (meaning objects[0] <relation> objects[1])."""

    category: str
    objects: tuple[ObjectSpec, ...]
    count: int | None = None
    relation: str | None = None


def _plural(shape: str) -> str:
    return shape + "s"


def vocabulary() -> tuple[str, ...]:
    """Every word a prompt of this world may contain, sorted."""
    words = {"a", "and"} | set(NUMBERS) | set(SHAPES) | {_plural(s) for s in SHAPES}
    words |= set(COLORS) | {w for r in RELATIONS for w in r.split()}
    return tuple(sorted(words))


def format_prompt(spec: PromptSpec) -> str:
    def noun(o: ObjectSpec) -> str:
        return f"a {o.color} {o.shape}" if o.color else f"a {o.shape}"

    c = spec.category
    if c == "counting":
        shape = spec.objects[0].shape
        return f"{NUMBERS[spec.count - 1]} {shape if spec.count == 1 else _plural(shape)}"
    if c in ("single_object", "colors"):
        return noun(spec.objects[0])
    if c in ("two_object", "color_attr"):
        return f"{noun(spec.objects[0])} and {noun(spec.objects[1])}"
    if c == "position":
        return f"{noun(spec.objects[0])} {spec.relation} {noun(spec.objects[1])}"
    raise ValueError(f"unknown category {c!r}; expected one of {CATEGORIES}")


_S = "|".join(SHAPES)
_C = "|".join(COLORS)
_N = "|".join(NUMBERS)
_R = "|".join(RELATIONS)
_GRAMMAR = [
    ("counting", re.compile(rf"^(?P<n>{_N}) (?P<s>{_S})s?$")),
    ("single_object", re.compile(rf"^an? (?P<s>{_S})$")),
    ("colors", re.compile(rf"^an? (?P<c>{_C}) (?P<s>{_S})$")),
    ("two_object", re.compile(rf"^an? (?P<s>{_S}) and an? (?P<s2>{_S})$")),
    ("color_attr", re.compile(rf"^an? (?P<c>{_C}) (?P<s>{_S}) and an? (?P<c2>{_C}) (?P<s2>{_S})$")),
    ("position", re.compile(rf"^an? (?P<s>{_S}) (?P<r>{_R}) an? (?P<s2>{_S})$")),
]


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a prompt of the shapes grammar; raise ValueError naming what is accepted."""
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    for category, pattern in _GRAMMAR:
        m = pattern.match(text)
        if not m:
            continue
        g = m.groupdict()
        first = ObjectSpec(g["s"], g.get("c"))
        if category == "counting":
            n = NUMBERS.index(g["n"]) + 1
            if (n == 1) == text.endswith("s"):
                break  # "one circles" / "two circle"
            return PromptSpec(category, (first,), count=n)
        if category in ("single_object", "colors"):
            return PromptSpec(category, (first,))
        second = ObjectSpec(g["s2"], g.get("c2"))
        return PromptSpec(category, (first, second), relation=g.get("r"))
    raise ValueError(
        f"prompt {prompt!r} is not in the shapes grammar; accepted forms are e.g. 'a circle', "
        "'a circle and a square', 'three triangles', 'a red circle', 'a circle left of a square', "
        f"'a red circle and a blue square' (shapes {SHAPES}, colours {COLORS}, numbers one-four, "
        f"relations {RELATIONS})"
    )


def all_specs() -> list[PromptSpec]:
    """Every prompt of the world, in a fixed order (180 prompts)."""
    specs = [PromptSpec("single_object", (ObjectSpec(s),)) for s in SHAPES]
    pairs = list(itertools.permutations(SHAPES, 2))
    specs += [PromptSpec("two_object", (ObjectSpec(a), ObjectSpec(b))) for a, b in pairs]
    specs += [PromptSpec("counting", (ObjectSpec(s),), count=n) for s in SHAPES for n in (1, 2, 3, 4)]
    specs += [PromptSpec("colors", (ObjectSpec(s, c),)) for s in SHAPES for c in COLORS]
    specs += [
        PromptSpec("position", (ObjectSpec(a), ObjectSpec(b)), relation=r)
        for a, b in pairs
        for r in RELATIONS
    ]
    specs += [
        PromptSpec("color_attr", (ObjectSpec(a, ca), ObjectSpec(b, cb)))
        for a, b in pairs
        for ca, cb in itertools.permutations(COLORS, 2)
    ]
    return specs


# The combinations that never occur in training prompts. Chosen by hand so that every shape,
# colour, count and relation still occurs in training, only not in these combinations.
HELD_OUT_COLOR_SHAPE = {("purple", "triangle"), ("yellow", "square"), ("green", "circle")}
HELD_OUT_COUNT_SHAPE = {(3, "circle"), (2, "triangle"), (4, "square")}
HELD_OUT_PAIRS = {frozenset(("square", "triangle"))}  # two objects named together
HELD_OUT_RELATIONS = {("square", "above", "triangle"), ("circle", "right of", "triangle"),
                      ("triangle", "left of", "square"), ("circle", "below", "square")}
HELD_OUT_SINGLE = {"triangle"}


def is_held_out(spec: PromptSpec) -> bool:
    o = spec.objects
    if spec.category == "single_object":
        return o[0].shape in HELD_OUT_SINGLE
    if spec.category == "two_object":
        return frozenset((o[0].shape, o[1].shape)) in HELD_OUT_PAIRS
    if spec.category == "counting":
        return (spec.count, o[0].shape) in HELD_OUT_COUNT_SHAPE
    if spec.category == "position":
        return (o[0].shape, spec.relation, o[1].shape) in HELD_OUT_RELATIONS
    return any((x.color, x.shape) in HELD_OUT_COLOR_SHAPE for x in o)


def split(name: str, categories: tuple[str, ...] = ()) -> list[str]:
    """The fixed prompt split: 'train', 'heldout' or 'all', optionally only some categories."""
    if name not in ("train", "heldout", "all"):
        raise ValueError(f"unknown split {name!r}; expected 'train', 'heldout' or 'all'")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; expected some of {', '.join(CATEGORIES)}")
    specs = all_specs()
    if name != "all":
        specs = [s for s in specs if is_held_out(s) == (name == "heldout")]
    return [format_prompt(s) for s in specs if not categories or s.category in categories]


def source_split(source: str) -> list[str]:
    """The prompts of a source `shapes:SPLIT` or `shapes:SPLIT:CATEGORY[,CATEGORY...]`, e.g.
    shapes:train:color_attr for the training prompts of colour attribution only."""
    parts = source.split(":")
    if parts[0] != "shapes" or len(parts) not in (2, 3):
        raise ValueError(f"{source!r} is not a shapes prompt source; expected shapes:SPLIT or "
                         "shapes:SPLIT:CATEGORY[,CATEGORY...]")
    return split(parts[1], tuple(parts[2].split(",")) if len(parts) == 3 else ())


def category_of(prompt: str) -> str:
    return parse_prompt(prompt).category
