"""Preference pairs for Diffusion-DPO (`data.pairs`), from three kinds of source:

- a JSONL file of {"prompt", "chosen", "rejected"} lines with image paths relative to the file, or a
  folder holding `pairs.jsonl` or `train.jsonl` (what `ddrl reward-pairs` writes on the shapes world);
- a Hugging Face `datasets` dataset in Pick-a-Pic v2's layout (caption, jpg_0, jpg_1, label_0,
  column names configurable): a local parquet or arrow file, a folder of them, a folder written by
  `Dataset.save_to_disk`, or a hub id. label_0 = 1 prefers image 0, 0 prefers image 1, and ties
  (0.5) are dropped as SalesforceAIResearch/DiffusionDPO's train.py drops them.

Every row is checked here and every image when it is decoded (latent_cache.py). A bad row is an
error naming its line (or dataset row) and what is wrong, or with `data.skip_bad_rows` a counted
skip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..decode import decode_rgb
from ..io import read_text


class DataError(ValueError):
    """Unusable preference data; the message names the file and line or the dataset row."""


@dataclass(frozen=True)
class PairRow:
    prompt: str
    chosen: Any  # a path, encoded image bytes, or a PIL image
    rejected: Any
    where: str  # "FILE:LINE" or "DATASET row N", for messages


@dataclass
class PairRows:
    rows: list[PairRow]
    identity: str  # what the latent cache is keyed by: the file's path, size and mtime, or the dataset's fingerprint
    ties: int = 0  # rows labelled 0.5, dropped
    skipped: list[str] | None = None  # "where: why" of each bad row skipped


SAME_IMAGE = "chosen and rejected are the same image: the pair carries no preference"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_JSONL_FIELDS = ("prompt", "chosen", "rejected")
_JSONL_INFO = ("margin",)  # written by `ddrl reward-pairs`


def pairs_kind(source: str) -> str:
    """'jsonl' or 'datasets' for a `data.pairs` value, or a DataError saying what is accepted."""
    path = Path(source).expanduser()
    if (path.suffix == ".jsonl" and path.is_file()) or (path.is_dir() and _jsonl_in(path)):
        return "jsonl"
    if path.exists():
        if path.is_file() and path.suffix in (".parquet", ".arrow"):
            return "datasets"
        if path.is_dir() and ((path / "dataset_info.json").is_file() or any(path.glob("**/*.parquet"))
                              or any(path.glob("**/*.arrow"))):
            return "datasets"
        raise DataError(f"data.pairs {source}: not a pairs JSONL, a folder with pairs.jsonl, a parquet/arrow "
                        "file or a folder of them")
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")) and path.suffix not in (".jsonl", ".parquet", ".arrow"):
        return "datasets"
    raise DataError(f"data.pairs {source!r} does not exist; give a pairs JSONL, a folder that "
                    "`ddrl reward-pairs --out DIR` wrote, a parquet/arrow file or folder, or a datasets hub id "
                    "like 'yuvalkirstain/pickapic_v2'")


def _jsonl_in(folder: Path) -> Path | None:
    """A folder's pairs file: pairs.jsonl, or train.jsonl as `ddrl reward-pairs` writes."""
    return next((folder / n for n in ("pairs.jsonl", "train.jsonl") if (folder / n).is_file()), None)


def read_pair_rows(data, skip_bad_rows: bool | None = None) -> PairRows:
    """The rows of `data.pairs` (a DataConfig), bad ones refused or (skip_bad_rows) counted."""
    skip = data.skip_bad_rows if skip_bad_rows is None else skip_bad_rows
    kind = pairs_kind(data.pairs)
    try:
        out = read_jsonl_pairs(data.pairs, skip) if kind == "jsonl" else _read_dataset(data, skip)
        out.rows = _drop_same_files(out, skip)
    except BadRow as e:
        raise DataError(f"{e} (set data.skip_bad_rows true to skip bad rows and count them)") from None
    if data.max_pairs:
        out.rows = out.rows[:data.max_pairs]
    if not out.rows:
        why = f" ({len(out.skipped)} bad rows skipped, {out.ties} ties dropped)" if out.skipped or out.ties else ""
        raise DataError(f"data.pairs {data.pairs}: no usable pairs{why}")
    return out


def _drop_same_files(out: PairRows, skip: bool) -> list[PairRow]:
    """Rows naming one file on both sides, refused (or counted) before any image is decoded; two
    files with the same pixels are found when decoded (latent_cache.py)."""
    kept = []
    for r in out.rows:
        if isinstance(r.chosen, str) and Path(r.chosen).resolve() == Path(r.rejected).resolve():
            _bad(skip, out.skipped, r.where, SAME_IMAGE)
        else:
            kept.append(r)
    return kept


class BadRow(DataError):
    """One row of the data is unusable; the message starts with where it is."""


def _bad(skip: bool, skipped: list[str], where: str, why: str) -> None:
    if not skip:
        raise BadRow(f"{where}: {why}")
    skipped.append(f"{where}: {why}")


def read_jsonl_pairs(source: str | Path, skip: bool) -> PairRows:
    """Pairs from a JSONL file or a folder holding one (image paths made absolute). A row that is
    not JSON, has a missing, empty or non-text value or an unknown field, or names a missing image
    raises BadRow with its line, or (`skip`) is counted in `skipped`."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = _jsonl_in(path) or path / "pairs.jsonl"
    if not path.is_file():
        raise DataError(f"no preference pairs at {path}")
    try:
        text = read_text(path, "pairs file")
    except ValueError as e:
        raise DataError(str(e)) from None
    rows, skipped = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except ValueError as e:
            _bad(skip, skipped, where, f"not JSON ({e})")
            continue
        if not isinstance(row, dict):
            _bad(skip, skipped, where, f"expected a JSON object with {', '.join(_JSONL_FIELDS)}")
            continue
        unknown = [k for k in row if k not in _JSONL_FIELDS + _JSONL_INFO]
        bad = [k for k in _JSONL_FIELDS if not isinstance(row.get(k), str) or not row[k].strip()]
        if unknown or bad:
            why = (f"unknown field(s) {', '.join(map(repr, unknown))}; a pair has {', '.join(_JSONL_FIELDS)} "
                   f"(and optionally {', '.join(_JSONL_INFO)})" if unknown else
                   f"{', '.join(bad)} must be non-empty text, got {', '.join(repr(row.get(k)) for k in bad)}")
            _bad(skip, skipped, where, why)
            continue
        images = [path.parent / row[k] for k in ("chosen", "rejected")]
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            _bad(skip, skipped, where, f"no image at {missing[0]}")
            continue
        rows.append(PairRow(row["prompt"], str(images[0]), str(images[1]), where))
    st = path.stat()
    return PairRows(rows, f"jsonl:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}", 0, skipped)


def _load_dataset(source: str, split: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.pairs {source} is read with the `datasets` library: pip install 'ddrl[data]'") from None
    path = Path(source).expanduser()
    try:
        if path.is_dir() and (path / "dataset_info.json").is_file():
            ds = datasets.load_from_disk(str(path))
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        if path.exists():
            files = [path] if path.is_file() else sorted([*path.glob("**/*.parquet"), *path.glob("**/*.arrow")])
            fmt = "parquet" if files[0].suffix == ".parquet" else "arrow"
            return datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train")
        return datasets.load_dataset(source, split=split)
    except (OSError, ValueError, KeyError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(f"data.pairs {source}: cannot load it as a dataset (split {split!r}): "
                        f"{str(e).splitlines()[0][:300]}") from None


def _read_dataset(data, skip: bool) -> PairRows:
    ds = _load_dataset(data.pairs, data.split)
    cols = {"caption": data.caption_column, "image 0": data.image_0_column, "image 1": data.image_1_column,
            "label": data.label_column}
    missing = [f"{k} ({v!r})" for k, v in cols.items() if v not in ds.column_names]
    if missing:
        raise DataError(f"data.pairs {data.pairs} has no column for {', '.join(missing)}; its columns are "
                        f"{ds.column_names} (set data.caption_column, data.image_0_column, data.image_1_column, "
                        "data.label_column)")
    try:  # keep encoded bytes: images are decoded once, when their latents are cached
        from datasets import Image as ImageFeature

        for c in (data.image_0_column, data.image_1_column):
            if isinstance(ds.features[c], ImageFeature):
                ds = ds.cast_column(c, ImageFeature(decode=False))
    except ImportError:
        pass
    labels = ds[data.label_column]
    captions = ds[data.caption_column]
    rows, skipped, ties = [], [], 0
    for i, (label, caption) in enumerate(zip(labels, captions)):
        where = f"{data.pairs} row {i}"
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, float, np.number)) or label not in (0, 0.5, 1):
            _bad(skip, skipped, where, f"{data.label_column} must be 0, 0.5 or 1, got {label!r}")
            continue
        if label == 0.5:
            ties += 1
            continue
        if not isinstance(caption, str):
            _bad(skip, skipped, where, f"{data.caption_column} must be text, got {type(caption).__name__}")
            continue
        rows.append(PairRow(caption, _LazyCell(ds, i, data.image_0_column if label == 1 else data.image_1_column),
                            _LazyCell(ds, i, data.image_1_column if label == 1 else data.image_0_column), where))
    return PairRows(rows, f"datasets:{data.pairs}:{data.split}:{getattr(ds, '_fingerprint', '')}", ties, skipped)


@dataclass(frozen=True)
class _LazyCell:
    """One image cell of a dataset, read when its latents are cached."""

    ds: Any
    row: int
    column: str

    def get(self):
        return self.ds[self.row][self.column]


def open_image(ref) -> Image.Image:
    """An RGB PIL image from a path, encoded bytes, a datasets image cell or a PIL image, by ddrl's
    one decoder (decode.py: 16-bit and float images are refused, not clipped); a ValueError says
    why it cannot be read."""
    if isinstance(ref, _LazyCell):
        ref = ref.get()
    if isinstance(ref, dict):  # a datasets Image cell with decode=False
        ref = ref.get("bytes") or ref.get("path")
    return decode_rgb(ref, f"the image {ref}" if isinstance(ref, str) else "the image")


def check_captions(rows: PairRows, policy, skip: bool) -> PairRows:
    """The captions under the prompt rules that training prompts obey (models/prompt_length.py:
    the model's vocabulary and the length it reads whole; a caption is refused, never cut). A
    failing row is a bad row: refused naming its line, or with `skip` counted and dropped."""
    from ..models.prompt_length import check_prompts

    bad: dict[str, str] = {}
    for caption in dict.fromkeys(r.prompt for r in rows.rows):
        try:
            check_prompts(policy, [caption], "caption")
        except ValueError as e:
            bad[caption] = str(e)
    if not bad:
        return rows
    skipped, kept = list(rows.skipped or []), []
    for r in rows.rows:
        if r.prompt in bad:
            try:
                _bad(skip, skipped, r.where, bad[r.prompt])
            except BadRow as e:
                raise DataError(f"{e} (set data.skip_bad_rows true to skip bad rows and count them)") from None
        else:
            kept.append(r)
    if not kept:
        raise DataError(f"no usable pairs: every caption breaks the prompt rules (first: {skipped[-1]})")
    return PairRows(kept, rows.identity, rows.ties, skipped)
