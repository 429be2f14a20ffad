"""Number checks shared by the config, the command line and the reward server.

A bound is written as an interval, "[0, 1]", "(0, inf)", "[1, inf)", and every check first
asks for a finite number: comparisons alone let NaN through (`nan <= 0` is false), and an
infinite learning rate or guidance scale runs to the end and returns NaN weights.

Guidance rule (diffusers' convention: guidance applies only when the scale is above 1): a
classifier-free guidance scale is 0 or 1 for no guidance (the conditional prediction alone), or
greater than 1. Scales in (0, 1) and negative scales are refused rather than silently read as
"no guidance" or as extrapolating away from the prompt.
"""

from __future__ import annotations

import math
import re

_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")

GUIDANCE_RULE = "0 or 1 (no guidance) or greater than 1"


def number_problem(value, interval: str = "(-inf, inf)") -> str | None:
    """None if `value` is a finite number in `interval`, else what is wrong with it, e.g.
    'must be in (0, inf), got nan'."""
    m = _INTERVAL.match(interval)
    if m is None:
        raise ValueError(f"not an interval: {interval!r}")
    left, low, high, right = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    above = value > low if left == "(" else value >= low
    below = value < high if right == ")" else value <= high
    if not (above and below):
        return f"must be in {interval}, got {value:g}"
    return None


def guidance_problem(value) -> str | None:
    """None if `value` is a valid classifier-free guidance scale (see GUIDANCE_RULE)."""
    problem = number_problem(value)
    if problem is None and not (value == 0 or value >= 1):
        problem = f"must be {GUIDANCE_RULE}, got {value:g}"
    return problem


def uses_guidance(scale: float) -> bool:
    """Whether a (valid) guidance scale runs the unconditional branch at all."""
    return scale > 1
