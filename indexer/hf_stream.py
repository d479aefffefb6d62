"""Hugging Face ``datasets`` streaming: hub datasets and local files through one call.

``load_dataset(..., streaming=True)`` reads a hub id (e.g. ``monology/pile-uncopyrighted``)
and local ``json``/``jsonl.zst`` files the same way, so the code path tested here on local
files is the one that streams the hub on a machine with internet.
:class:`HFSource` is its data source (``--data hf:NAME``, see :mod:`indexer.sources`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets

from attribution.records import Example
from indexer.errors import MissingFieldError, UnknownSourceError
from indexer.metadata import Column
from indexer.textfiles import Tokenizer, encode_text, expand_paths

log = logging.getLogger(__name__)


def open_stream(name: str, split: str = "train", config: str | None = None) -> datasets.IterableDataset:
    """Open a streaming dataset from a hub id, or from local json/jsonl(.zst) files or globs."""
    if any(ch in name for ch in "*?[") or Path(name).exists():
        files = [str(p) for p in expand_paths(name)]
        if any(f.endswith(".parquet") for f in files):
            raise UnknownSourceError(f"hf:{name}: local Parquet files are read without 'hf:' (Pythia's preshuffled "
                                     f"token copy); give --data {name}")
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


@dataclass(frozen=True)
class HFSource:
    """``hf:NAME``: a hub dataset or local json/jsonl(.zst) files, streamed; ids count rows from 0."""

    kind: ClassVar[str] = "hf"
    columns: ClassVar[frozenset[Column]] = frozenset({Column.SOURCE, Column.ROW, Column.PILE_SET_NAME})
    takes_steps: ClassVar[bool] = True  # accepted but ignored, as it always was: a stream has no step layout
    global_ids: ClassVar[bool] = False
    first_row: ClassVar[int] = 0
    count: ClassVar[None] = None
    prefix: ClassVar[str] = "hf:"
    spec: str

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec.startswith(cls.prefix)

    @classmethod
    def open(cls, spec: str, steps: str | None, batch_rows: int) -> HFSource:
        return cls(spec)

    def read(self, start: int, stop: int, tokenizer: Tokenizer) -> Iterator[Example]:
        return itertools.islice(read_hf(self.spec[len(self.prefix):], tokenizer=tokenizer), start, stop)
