"""Resolve a ``--data`` spec into a source that yields examples by global position.

Specs: a Megatron prefix (``PREFIX.idx`` exists; Pythia's split ``.bin`` pieces too),
a ``jsonl``/``jsonl.zst`` file or glob (Pile format), a ``txt`` file or glob, or
``hf:NAME`` for a Hugging Face dataset (hub id or local files, streamed).

The unit of work is a shard: examples ``[start, stop)`` in source order. Megatron
sources know their size; streamed sources are read up to the shard and end when
the stream does.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import UnknownSourceError
from indexer.examples import Example
from indexer.hf_stream import read_hf
from indexer.megatron import MegatronDataset
from indexer.textfiles import Tokenizer, read_jsonl, read_txt
from indexer.training_rows import RowRange, parse_range, read_training_rows, rows_for_steps


@dataclass
class Source:
    """A data source: ``count`` examples (``None`` until a stream is exhausted) read by position."""

    spec: str
    kind: str
    count: int | None
    rows: RowRange | None = None
    batch_rows: int = 1024

    def read(self, start: int, stop: int, tokenizer: Tokenizer) -> Iterator[Example]:
        """Examples ``[start, stop)`` of this source, with token ids."""
        if self.kind == "megatron":
            assert self.rows is not None
            lo, hi = self.rows.start + start, min(self.rows.start + stop, self.rows.stop)
            if lo >= hi:
                return iter(())
            return _labelled(Path(self.spec), read_training_rows(self.spec, RowRange(lo, hi), self.batch_rows,
                                                                 tokenizer))
        stream = {"jsonl": read_jsonl, "txt": read_txt}.get(self.kind)
        examples = stream(self.spec, tokenizer) if stream else read_hf(self.spec[3:], tokenizer=tokenizer)
        return itertools.islice(examples, start, stop)


def _labelled(prefix: Path, examples: Iterator[Example]) -> Iterator[Example]:
    """Add each row's ``pile_set_name`` from a ``row_docs.json`` sidecar (the demo writes one)."""
    sidecar = prefix.parent / "row_docs.json"
    labels = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    for example in examples:
        if labels is not None and example.example_id < len(labels):
            example.metadata["pile_set_name"] = labels[example.example_id].get("pile_set_name")
        yield example


def open_source(spec: str, steps: str | None = None, batch_rows: int = 1024) -> Source:
    """Recognize the kind of a data spec and, for Megatron data, the rows to index."""
    if spec.startswith("hf:"):
        return Source(spec, "hf", None)
    prefix = Path(spec)
    if prefix.with_name(prefix.name + ".idx").is_file():
        layout = prefix.parent / "layout.json"
        if layout.is_file():
            batch_rows = int(json.loads(layout.read_text())["batch_size"])
        size = len(MegatronDataset(prefix))
        start, stop = parse_range(steps, "steps") if steps else (None, None)
        rows = rows_for_steps(size, batch_rows, start, stop)
        return Source(spec, "megatron", rows.stop - rows.start, rows, batch_rows)
    if steps:
        raise UnknownSourceError(f"--steps applies to Megatron data only; {spec!r} is not a Megatron prefix")
    name = prefix.name
    if name.endswith((".jsonl", ".jsonl.zst", ".json", ".json.zst")):
        return Source(spec, "jsonl", None)
    if name.endswith((".txt", ".txt.zst")):
        return Source(spec, "txt", None)
    raise UnknownSourceError(
        f"cannot tell what {spec!r} is: expected a Megatron prefix (PREFIX.idx), a .jsonl/.jsonl.zst or .txt "
        "file or glob, or hf:DATASET"
    )
