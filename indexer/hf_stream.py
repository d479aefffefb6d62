"""Hugging Face ``datasets`` streaming: hub datasets and local files through one call.

``load_dataset(..., streaming=True)`` reads a hub id (e.g. ``monology/pile-uncopyrighted``)
and local ``json``/``jsonl.zst`` files the same way, so the code path tested here on local
files is the one that streams the hub on a machine with internet.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import datasets

from indexer.errors import MissingFieldError, UnknownSourceError
from indexer.examples import Example
from indexer.textfiles import Tokenizer, encode_text, expand_paths

log = logging.getLogger(__name__)


def open_stream(name: str, split: str = "train", config: str | None = None) -> datasets.IterableDataset:
    """Open a streaming dataset from a hub id, or from local json/jsonl(.zst) files or globs."""
    if any(ch in name for ch in "*?[") or Path(name).exists():
        files = [str(p) for p in expand_paths(name)]
        return datasets.load_dataset("json", data_files=files, split=split, streaming=True)
    try:
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # datasets raises many kinds; all mean "cannot open"
        raise UnknownSourceError(
            f"cannot stream Hugging Face dataset {name!r} (split {split!r}): {err}. "
            "Offline, pass local files instead, e.g. 'hf:data/*.jsonl.zst'."
        ) from err


def read_hf(
    name: str,
    split: str = "train",
    text_field: str = "text",
    tokenizer: Tokenizer | None = None,
    limit: int | None = None,
    config: str | None = None,
) -> Iterator[Example]:
    """Stream a Hugging Face dataset as Examples; ``pile_set_name`` is taken from ``meta`` when present."""
    stream = open_stream(name, split, config)
    for row, record in enumerate(itertools.islice(stream, limit)):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise MissingFieldError(f"{name} row {row}: no string field {text_field!r}")
        meta = record.get("meta") or {}
        metadata = {"source": name, "row": row, "pile_set_name": meta.get("pile_set_name")}
        yield Example(row, encode_text(tokenizer, text), text, metadata)
