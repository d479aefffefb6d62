"""Pythia-style training rows: Megatron items addressed by training step.

Training step ``s`` consumed rows ``[B·s, B·(s+1))`` with ``B`` the batch size
(1024 for Pythia); checkpoint ``stepK`` has seen rows ``[0, B·K)``. A ``layout.json``
beside the data may record ``batch_size`` (the demo's does); ``PREFIX.labels.json`` may
label each row (see :mod:`indexer.megatron`).

:class:`MegatronSource` is the data source (see :mod:`indexer.sources`) for such data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from attribution.records import Example
from indexer.errors import StepRangeError
from indexer.megatron import MegatronDataset, read_row_labels
from indexer.metadata import Column
from indexer.textfiles import Tokenizer

PYTHIA_BATCH_SIZE = 1024


@dataclass(frozen=True)
class RowRange:
    """A half-open range of rows ``[start, stop)``."""

    start: int
    stop: int


def parse_range(text: str, what: str = "range") -> tuple[int | None, int | None]:
    """Parse ``A:B``, ``A:``, ``:B`` or ``A`` (a single value) into bounds."""
    try:
        if ":" not in text:
            value = int(text)
            return value, value + 1
        start, stop = text.split(":", 1)
        return (int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError as err:
        raise StepRangeError(f"{what} {text!r} is not of the form A:B with integers") from err


def rows_for_steps(num_rows: int, batch_size: int, start_step: int | None, stop_step: int | None) -> RowRange:
    """Map a step range to rows, refusing steps the data does not hold; a last step the data holds only part of
    counts (its rows are all indexed)."""
    if batch_size <= 0:
        raise StepRangeError(f"batch size must be positive, got {batch_size}")
    num_steps = -(-num_rows // batch_size)
    start = 0 if start_step is None else start_step
    stop = num_steps if stop_step is None else stop_step
    if not 0 <= start < stop <= num_steps:
        raise StepRangeError(
            f"steps {start}:{stop} are outside the data, which holds steps 0:{num_steps} "
            f"({num_rows} rows at {batch_size} rows per step; give --rows-per-step if the data was written at "
            "another batch size, or --rows A:B)"
        )
    return RowRange(start * batch_size, min(stop * batch_size, num_rows))


def check_rows(num_rows: int, start: int | None, stop: int | None) -> RowRange:
    """Validate a row range against the data size."""
    lo = 0 if start is None else start
    hi = num_rows if stop is None else stop
    if not 0 <= lo < hi <= num_rows:
        raise StepRangeError(f"rows {lo}:{hi} are outside the data, which holds rows 0:{num_rows}")
    return RowRange(lo, hi)


def read_training_rows(
    prefix: str | Path,
    rows: RowRange | None = None,
    batch_size: int = PYTHIA_BATCH_SIZE,
    tokenizer: Tokenizer | None = None,
) -> Iterator[Example]:
    """Stream rows of a Megatron dataset with their step and position in the batch.

    ``example_id`` is the row number, so ids agree across step ranges and machines.
    Text is decoded only when a tokenizer with ``decode`` is given; labels from the
    ``PREFIX.labels.json`` sidecar, when there is one, are added to each row's metadata.
    """
    data = MegatronDataset(prefix)
    span = rows or RowRange(0, len(data))
    check_rows(len(data), span.start, span.stop)
    source = Path(prefix).name
    labels = read_row_labels(prefix, len(data))
    for row, tokens in data.iter_items(span.start, span.stop):
        text = tokenizer.decode(tokens.tolist()) if tokenizer is not None else None
        metadata = {
            "source": source,
            "row": row,
            "step": row // batch_size,
            "batch_pos": row % batch_size,
            "pile_set_name": None,
            **{name: values[row] for name, values in labels.items()},
        }
        yield Example(row, tokens.astype("int64"), text, metadata)


def read_layout(prefix: str | Path) -> dict | None:
    """The optional ``layout.json`` beside Megatron data (``batch_size`` rows per step, and what its writer
    records: ``seq_len``, ``num_rows`` …), or None when there is none."""
    layout = Path(prefix).parent / "layout.json"
    return json.loads(layout.read_text()) if layout.is_file() else None


def layout_batch_size(prefix: str | Path, default: int = PYTHIA_BATCH_SIZE) -> int:
    """The batch size recorded in ``layout.json`` beside the data, else ``default``."""
    layout = read_layout(prefix)
    return int(layout["batch_size"]) if layout is not None else default


@dataclass(frozen=True)
class MegatronSource:
    """Rows ``rows`` of the Megatron data at ``spec``, addressed by training step; ids are global rows."""

    kind: ClassVar[str] = "megatron"
    columns: ClassVar[frozenset[Column]] = frozenset(  # pile_set_name and extra: from PREFIX.labels.json
        {Column.SOURCE, Column.ROW, Column.STEP, Column.BATCH_POS, Column.PILE_SET_NAME, Column.EXTRA})
    takes_steps: ClassVar[bool] = True
    global_ids: ClassVar[bool] = True
    spec: str
    rows: RowRange
    batch_rows: int

    @classmethod
    def matches(cls, spec: str) -> bool:
        prefix = Path(spec)
        return prefix.with_name(prefix.name + ".idx").is_file()

    @classmethod
    def open(cls, spec: str, steps: str | None, batch_rows: int, rows: str | None = None) -> MegatronSource:
        """The rows of ``steps`` or ``rows`` (every row when neither is given, a partial last step included), at
        the batch size in ``layout.json``, else ``batch_rows`` rows per step."""
        if steps and rows:
            raise StepRangeError(f"give --steps or --rows, not both (got steps {steps!r} and rows {rows!r})")
        batch_rows = layout_batch_size(spec, batch_rows)
        count = len(MegatronDataset(spec))
        if rows:
            return cls(spec, check_rows(count, *parse_range(rows, "rows")), batch_rows)
        start, stop = parse_range(steps, "steps") if steps else (None, None)
        return cls(spec, rows_for_steps(count, batch_rows, start, stop), batch_rows)

    @property
    def count(self) -> int:
        return self.rows.stop - self.rows.start

    @property
    def first_row(self) -> int:
        return self.rows.start

    def read(self, start: int, stop: int, tokenizer: Tokenizer) -> Iterator[Example]:
        """Rows ``[start, stop)`` of the selected range (fewer past its end)."""
        lo, hi = self.rows.start + start, min(self.rows.start + stop, self.rows.stop)
        if lo >= hi:
            return iter(())
        return read_training_rows(self.spec, RowRange(lo, hi), self.batch_rows, tokenizer)
