"""Options dataclasses: each field with its accepted range and a one-line doc beside it.

    @dataclass(frozen=True)
    class NFTOptions:
        section: ClassVar[str] = "nft"          # its config section: nft.beta, --nft.beta
        beta: float = option(1.0, "(0, inf)", "strength of the implicit positive/negative policies")

An algorithm's options live in its own module and config section; `field_docs` reads them (and
the attribute docstrings of the older config sections) for `ddrl train --print-config` and help.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any, ClassVar


def option(default: Any, range: str | None = None, doc: str = "") -> Any:
    """A dataclass field with its range (a ddrl.bounds interval, checked for numbers) and doc."""
    return dataclasses.field(default=default, metadata={"range": range, "doc": doc})


@dataclass(frozen=True)
class NoOptions:
    """What an algorithm without options of its own takes: no section in the config."""

    section: ClassVar[str] = ""


def _docstrings(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after a field) of a dataclass, by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body, out = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            out[node.target.id] = " ".join(nxt.value.value.split())
    return out


def field_docs(cls: type, ranges: dict[str, str] | None = None) -> dict[str, tuple[str, str | None]]:
    """{field: (one-line doc, range or None)} from the fields' metadata, else their attribute
    docstrings and `ranges` (keyed by field name)."""
    strings = _docstrings(cls)
    return {f.name: (f.metadata.get("doc") or strings.get(f.name, ""),
                     f.metadata.get("range") or (ranges or {}).get(f.name))
            for f in dataclasses.fields(cls)}
