"""argparse value types shared by the `ddrl` subcommands: bad values get a one-line error. Numbers
are checked by ddrl.bounds, as the config's are, so `ddrl sample` and `ddrl train` agree."""

from __future__ import annotations

import argparse

from .bounds import guidance_problem, number_problem


def _number(text: str, kind: type, interval: str):
    try:
        v = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if problem := number_problem(v, interval):
        raise argparse.ArgumentTypeError(problem)
    return v


def _number_type(kind: type, interval: str):
    """An argparse type: text -> a number of `kind` inside `interval`, or a one-line error."""
    return lambda text: _number(text, kind, interval)


positive_int = _number_type(int, "[1, inf)")
pair_count = _number_type(int, "[2, inf)")  # images per prompt, two at least to make a pair


def optional_pair_count(text: str) -> int:
    """0 (none) or a `pair_count`."""
    v = _number(text, int, "[0, inf)")
    if v == 1:
        raise argparse.ArgumentTypeError("expected 0 (none) or at least 2 (a pair needs two images), got 1")
    return v
seed_int = _number_type(int, "[0, 4294967295]")
port_int = _number_type(int, "[0, 65535]")
positive_float = _number_type(float, "(0, inf)")
non_negative_float = _number_type(float, "[0, inf)")
unit_float = _number_type(float, "[0, 1]")


def guidance_float(text: str) -> float:
    v = _number(text, float, "(-inf, inf)")
    if problem := guidance_problem(v):
        raise argparse.ArgumentTypeError(problem)
    return v
