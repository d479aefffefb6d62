"""Resolve a ``--data`` spec into a data source that yields examples by position.

Specs: a Megatron prefix (``PREFIX.idx`` exists; Pythia's split ``.bin`` pieces too), Pythia's
preshuffled Parquet copy (a ``train-N.parquet`` file, a directory of them or a glob), a
``jsonl``/``jsonl.zst`` file or glob (Pile format), a ``txt`` file or glob, or ``hf:NAME`` for a
Hugging Face dataset (hub id or local json/jsonl files, streamed; text records only).

The unit of work is a shard: examples ``[start, stop)`` in source order. Megatron
and Parquet sources know their size; streamed sources are read up to the shard and end when
the stream does.

Each format is one class (in its reader's module) that has the :class:`DataSource`
members; :data:`READERS` lists them in the order a spec is tried. To add a format, write
its module with such a class and add the class to :data:`READERS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Protocol

from attribution.records import Example
from indexer.errors import UnknownSourceError
from indexer.hf_stream import HFSource
from indexer.metadata import Column
from indexer.parquet import ParquetSource
from indexer.textfiles import JsonlSource, Tokenizer, TxtSource
from indexer.training_rows import MegatronSource


class DataSource(Protocol):
    """A data source: ``count`` examples (``None`` until a stream is exhausted) read by position."""

    kind: ClassVar[str]
    """The format's name (``megatron``, ``jsonl`` …)."""
    columns: ClassVar[frozenset[Column]]
    """The metadata columns its examples fill (``id``, ``token_count`` and ``text`` are always filled)."""
    takes_steps: ClassVar[bool]
    """Whether ``--steps`` and ``--rows`` may be given with this format."""

    @property
    def count(self) -> int | None: ...

    @property
    def global_ids(self) -> bool:
        """Ids are global (Megatron rows): an appended part keeps them instead of offsetting them."""
        ...

    @property
    def first_row(self) -> int:
        """The id of the first example (global ids) or 0."""
        ...

    @classmethod
    def matches(cls, spec: str) -> bool:
        """Whether ``spec`` names data of this format."""
        ...

    @classmethod
    def open(cls, spec: str, steps: str | None, batch_rows: int, rows: str | None = None) -> DataSource:
        """The source for ``spec`` (``steps``/``rows``: a training-step or row range, for formats that take
        one)."""
        ...

    def read(self, start: int, stop: int, tokenizer: Tokenizer) -> Iterator[Example]:
        """Examples ``[start, stop)`` of this source, with token ids."""
        ...


READERS: tuple[type[DataSource], ...] = (HFSource, ParquetSource, MegatronSource, JsonlSource, TxtSource)
"""Every format, in the order a spec is tried (``hf:`` first; Parquet before Megatron: a directory of ``.parquet``
files is not a prefix)."""


def _no_steps(spec: str) -> UnknownSourceError:
    return UnknownSourceError(f"--steps and --rows apply to Megatron and Parquet training data only; {spec!r} is "
                              "neither")


def open_source(spec: str, steps: str | None = None, batch_rows: int = 1024, rows: str | None = None) -> DataSource:
    """Recognize the format of a data spec and open it (for Megatron data, at the rows of ``steps`` or
    ``rows``)."""
    for reader in READERS:
        if reader.matches(spec):
            if (steps or rows) and not reader.takes_steps:
                raise _no_steps(spec)
            return reader.open(spec, steps, batch_rows, rows) if rows else reader.open(spec, steps, batch_rows)
    if steps or rows:
        raise _no_steps(spec)
    raise UnknownSourceError(
        f"cannot tell what {spec!r} is: expected a Megatron prefix (PREFIX.idx), a .parquet file, directory or glob "
        "(Pythia's preshuffled train-N.parquet), a .jsonl/.jsonl.zst or .txt file or glob, or hf:DATASET"
    )
