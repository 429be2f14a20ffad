"""`ddrl train --print-config`: a resolved config as YAML with each key's doc and range."""

from __future__ import annotations

from .config import Config, _sections
from .config_checks import RANGES
from .options import field_docs


def commented_yaml(cfg) -> str:
    """The resolved config as YAML a user can save, edit and pass back (`ddrl train FILE.yaml`),
    each key with its one-line doc and range as a comment."""
    import yaml

    sections = dict(_sections())
    out = [f"# ddrl config: train.algorithm {cfg.train.algorithm}. Save it, edit it, and run it with "
           "`ddrl train FILE.yaml`.", ""]
    for section, value in cfg.to_dict().items():
        cls = sections.get(section) or type(cfg.options)
        ranges = {k.partition(".")[2]: r for k, r in RANGES.items() if k.startswith(section + ".")}
        docs = field_docs(cls, ranges)
        head = cls.__doc__ or ""
        head = "" if cls.__module__ == Config.__module__ or head.startswith(cls.__name__ + "(") else head
        out.append(f"{section}:{f'  # {head.splitlines()[0]}' if head else ''}")
        for key, v in value.items():
            doc, rng = docs.get(key, ("", None))
            text = yaml.safe_dump({key: v}, default_flow_style=True, width=10_000).strip()[1:-1]
            note = f"{doc} (range {rng})" if doc and rng else doc or (f"range {rng}" if rng else "")
            out.append(f"  {text}" + (f"  # {note}" if note else ""))
        out.append("")
    return "\n".join(out)
