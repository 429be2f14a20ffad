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


def positive_int(text: str) -> int:
    return _number(text, int, "[1, inf)")


def seed_int(text: str) -> int:
    return _number(text, int, "[0, 4294967295]")


def port_int(text: str) -> int:
    return _number(text, int, "[0, 65535]")


def positive_float(text: str) -> float:
    return _number(text, float, "(0, inf)")


def non_negative_float(text: str) -> float:
    return _number(text, float, "[0, inf)")


def unit_float(text: str) -> float:
    return _number(text, float, "[0, 1]")


def guidance_float(text: str) -> float:
    v = _number(text, float, "(-inf, inf)")
    if problem := guidance_problem(v):
        raise argparse.ArgumentTypeError(problem)
    return v
