"""Pythia-style training rows: Megatron items addressed by training step.

Training step ``s`` consumed rows ``[B·s, B·(s+1))`` with ``B`` the batch size
(1024 for Pythia); checkpoint ``stepK`` has seen rows ``[0, B·K)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import StepRangeError
from indexer.examples import Example
from indexer.megatron import MegatronDataset
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
    """Map a step range to rows, refusing steps the data does not hold."""
    if batch_size <= 0:
        raise StepRangeError(f"batch size must be positive, got {batch_size}")
    num_steps = num_rows // batch_size
    start = 0 if start_step is None else start_step
    stop = num_steps if stop_step is None else stop_step
    if not 0 <= start < stop <= num_steps:
        raise StepRangeError(
            f"steps {start}:{stop} are outside the data, which holds steps 0:{num_steps} "
            f"({num_rows} rows at batch size {batch_size})"
        )
    return RowRange(start * batch_size, stop * batch_size)


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
    Text is decoded only when a tokenizer with ``decode`` is given.
    """
    data = MegatronDataset(prefix)
    span = rows or RowRange(0, len(data))
    check_rows(len(data), span.start, span.stop)
    source = Path(prefix).name
    for row, tokens in data.iter_items(span.start, span.stop):
        text = tokenizer.decode(tokens.tolist()) if tokenizer is not None else None
        metadata = {
            "source": source,
            "row": row,
            "step": row // batch_size,
            "batch_pos": row % batch_size,
            "pile_set_name": None,
        }
        yield Example(row, tokens.astype("int64"), text, metadata)
