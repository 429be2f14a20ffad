"""Reward specifications: one string names any reward, so the same text works in YAML and on the
command line.

    aesthetic                                   a registered reward
    pickscore(model=/models/pick, batch_size=8) with factory options
    remote:http://10.0.0.2:8100(timeout=60)     a reward server
    pickscore + 0.5*hpsv2(model=/models/hps)    a weighted sum
    vlm-judge(question='Is "{prompt}" shown?')  quoted values may hold spaces and punctuation
    route[task](geneval=shapes-verifier, ocr=remote:http://ocr:8100, *=pickscore)
                                                per-prompt routing on metadata["task"]

Grammar: sum := term ('+' term)*;  term := [number '*'] atom;
atom := 'route' '[' key ']' '(' value '=' sum (',' value '=' sum)* ')' | word ['(' key '=' word, ... ')'].
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Union

from .base import RewardError

_TOKEN = re.compile(r"""\s*(?:([+*(),=\[\]])|'([^']*)'|"([^"]*)"|([^\s+*(),=\[\]'"]+))""")


@dataclass(frozen=True)
class Atom:
    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sum:
    terms: tuple  # of (weight, node)


@dataclass(frozen=True)
class Route:
    key: str
    cases: tuple  # of (value or "*", node)


Node = Union[Atom, Sum, Route]


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise RewardError(f"reward spec {text!r}: cannot read from {text[pos:]!r}")
        quoted = m.group(2) if m.group(2) is not None else m.group(3)
        out.append(_Quoted(quoted) if quoted is not None else m.group(1) or m.group(4))
        pos = m.end()
    return out


class _Quoted(str):
    """A quoted option value: kept as text, never read as a number or as punctuation."""


def _value(word: str):
    if isinstance(word, _Quoted):
        return str(word)
    if word.lower() in ("true", "false"):
        return word.lower() == "true"
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    return word


class _Parser:
    def __init__(self, text: str):
        self.text, self.toks, self.i = text, _tokens(text), 0

    def fail(self, what: str):
        at = " ".join(self.toks[self.i:]) or "the end"
        raise RewardError(f"reward spec {self.text!r}: expected {what} at {at!r}")

    def peek(self, k: int = 0) -> str | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            self.fail(repr(expected) if expected else "more")
        self.i += 1
        return tok

    def word(self, what: str) -> str:
        tok = self.peek()
        if tok is None or (not isinstance(tok, _Quoted) and tok in "+*(),=[]"):
            self.fail(what)
        self.i += 1
        return tok

    def sum(self) -> Node:
        terms = [self.term()]
        while self.peek() == "+":
            self.take("+")
            terms.append(self.term())
        return terms[0][1] if len(terms) == 1 and terms[0][0] == 1.0 else Sum(tuple(terms))

    def term(self) -> tuple[float, Node]:
        weight = 1.0
        if self.peek(1) == "*" and self.peek() not in (None, "*"):
            try:
                weight = float(self.peek())
            except ValueError:
                self.fail("a number before '*'")
            if not math.isfinite(weight):
                raise RewardError(f"reward spec {self.text!r}: the weight {self.peek()!r} is not a finite number")
            self.i += 2
        return weight, self.atom()

    def atom(self) -> Node:
        name = self.word("a reward name")
        if name == "route" and self.peek() == "[":
            self.take("[")
            key = self.word("a metadata key")
            self.take("]")
            self.take("(")
            cases = []
            while True:
                value = self.take() if self.peek() == "*" else self.word("a route value")
                self.take("=")
                cases.append((value, self.sum()))
                if self.peek() != ",":
                    break
                self.take(",")
            self.take(")")
            return Route(key, tuple(cases))
        options = {}
        if self.peek() == "(":
            self.take("(")
            while self.peek() != ")":
                key = self.word("an option name")
                self.take("=")
                options[key] = _value(self.word(f"a value for {key!r}"))
                if isinstance(options[key], float) and not math.isfinite(options[key]):
                    raise RewardError(f"reward spec {self.text!r}: option {key}={options[key]} is not a finite number")
                if self.peek() != ",":
                    break
                self.take(",")
            self.take(")")
        return Atom(name, options)


def parse(text: str) -> Node:
    if not text or not text.strip():
        raise RewardError("empty reward spec")
    p = _Parser(text)
    node = p.sum()
    if p.peek() is not None:
        p.fail("'+' or the end")
    return node
