"""Pythia's preshuffled training data in its Parquet copy, addressed by training step.

The copy most users now fetch (e.g. ``pietrolesci/pile-deduped-pythia-preshuffled``, ``data/``) holds the
Megatron rows as ``train-N.parquet`` files with columns ``uid``, ``batch_idx`` and ``token_ids`` (2,049 ids a
row): file ``train-N`` holds the 1,024 rows of each step ``N-1000 … N-1``, in ``batch_idx`` order. A row's id is
its place in the preshuffled order, ``batch_idx · B + position in the batch`` (``B`` = ``--rows-per-step``),
which is the Megatron row number, so an index of either copy has the same ids and steps.

A file's name tells the last step it holds, so a step range opens only the files that can hold it; each file's
first step and row count come from its footer (``batch_idx`` statistics), and rows are read a row group and a
record batch at a time, ``uid`` never. :class:`ParquetSource` is the data source (see :mod:`indexer.sources`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from attribution.records import Example
from indexer.errors import CorruptShardError, DataFormatError, MissingFieldError, StepRangeError, UnknownSourceError
from indexer.metadata import Column
from indexer.textfiles import Tokenizer, expand_paths
from indexer.training_rows import RowRange, parse_range

STEP, TOKENS = "batch_idx", "token_ids"
NAME = re.compile(r"^train-(\d+)\.parquet$")
READ_BATCH = 256
"""Rows decoded at a time (2 MiB of int32 tokens at Pythia's 2,049 a row)."""
BUFFER = 1 << 20
"""Bytes read at a time: a column chunk is streamed, not read whole (a row group may hold a whole file)."""


@dataclass(frozen=True)
class ParquetPart:
    """One file: steps ``[first_step, stop_step)``, ``num_rows`` rows from global row ``first_row``."""

    path: Path
    first_step: int
    stop_step: int
    num_rows: int
    first_row: int

    @property
    def stop_row(self) -> int:
        return self.first_row + self.num_rows


def _open(path: Path, buffer_size: int = 0) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, buffer_size=buffer_size)
    except (pa.ArrowException, OSError) as err:
        raise CorruptShardError(f"{path}: not a readable Parquet file ({err})") from err


def named_stop(path: Path) -> int | None:
    """The step after the last one a ``train-N.parquet`` file holds (``N``), or None for another name."""
    match = NAME.match(path.name)
    return int(match.group(1)) if match else None


def _check_schema(path: Path, schema: pa.Schema) -> None:
    missing = [c for c in (STEP, TOKENS) if c not in schema.names]
    if missing:
        raise MissingFieldError(f"{path}: no column {' or '.join(map(repr, missing))}; expected Pythia's preshuffled "
                                f"Parquet (uid, batch_idx, token_ids), found {schema.names}")
    tokens = schema.field(TOKENS).type
    listed = pa.types.is_list(tokens) or pa.types.is_large_list(tokens) or pa.types.is_fixed_size_list(tokens)
    if not pa.types.is_integer(schema.field(STEP).type) or not (listed and pa.types.is_integer(tokens.value_type)):
        raise DataFormatError(f"{path}: batch_idx must be integers and token_ids lists of integers, found "
                              f"{schema.field(STEP).type} and {tokens}")


def _step_bounds(path: Path, parquet: pq.ParquetFile) -> tuple[int, int] | None:
    """Smallest and largest ``batch_idx`` from the footer's statistics, or None where a row group has none."""
    meta = parquet.metadata
    column = next(j for j in range(meta.num_columns) if meta.row_group(0).column(j).path_in_schema == STEP)
    stats = [meta.row_group(i).column(column).statistics for i in range(meta.num_row_groups)]
    if any(s is None or not s.has_min_max for s in stats):
        return None
    return min(int(s.min) for s in stats), max(int(s.max) for s in stats)


def read_part(path: Path, batch_rows: int) -> ParquetPart:
    """A file's steps and rows from its footer (``batch_idx`` statistics, else its name, else the ``batch_idx``
    column alone), checked against its name and ``batch_rows`` rows a step (the last step may be partial)."""
    parquet = _open(path)
    _check_schema(path, parquet.schema_arrow)
    count, stop = parquet.metadata.num_rows, named_stop(path)
    if count == 0:
        raise DataFormatError(f"{path}: holds no rows")
    bounds = _step_bounds(path, parquet)
    if bounds is None and stop is not None:
        bounds = stop - -(-count // batch_rows), stop - 1
    elif bounds is None:
        try:
            lo, hi = pc.min_max(parquet.read(columns=[STEP]).column(STEP)).values()
        except (pa.ArrowException, OSError) as err:
            raise CorruptShardError(f"{path}: cannot read batch_idx ({err})") from err
        bounds = lo.as_py(), hi.as_py()
    first, last = bounds
    if stop is not None and last + 1 != stop:
        raise DataFormatError(f"{path}: its name says it ends at step {stop - 1}, but its batch_idx runs "
                              f"{first}:{last + 1}; rename it or fix the file")
    steps = last + 1 - first
    if first < 0 or not (steps - 1) * batch_rows < count <= steps * batch_rows:
        raise DataFormatError(f"{path}: {count} rows for steps {first}:{last + 1}, which is not {batch_rows} rows a "
                              "step; give --rows-per-step as the data was written")
    return ParquetPart(path, first, last + 1, count, first * batch_rows)


def parquet_files(spec: str) -> list[Path]:
    """The ``.parquet`` files a spec names: a file, a glob, or a directory's ``*.parquet``."""
    if Path(spec).is_dir():
        files = sorted(Path(spec).glob("*.parquet"))
        if not files:
            raise UnknownSourceError(f"{spec}: a directory with no .parquet files")
        return files
    return [p for p in expand_paths(spec) if p.name.endswith(".parquet")]


def candidates(files: list[Path], start: int | None, stop: int | None) -> list[Path]:
    """The files that may hold steps ``[start, stop)``: by their names when every one is ``train-N``, else all."""
    stops = [named_stop(f) for f in files]
    if None in stops:
        return files
    ordered = sorted(zip(stops, files, strict=True))
    lo, hi = -1 if start is None else start, float("inf") if stop is None else stop
    return [f for k, (n, f) in enumerate(ordered) if n > lo and (k == 0 or ordered[k - 1][0] < hi)]


def holdings(parts: list[ParquetPart]) -> str:
    """The step runs that files hold, e.g. ``0:1000, 2000:3000``."""
    runs: list[list[int]] = []
    for part in sorted(parts, key=lambda p: p.first_step):
        if runs and runs[-1][1] == part.first_step:
            runs[-1][1] = part.stop_step
        else:
            runs.append([part.first_step, part.stop_step])
    return ", ".join(f"{a}:{b}" for a, b in runs) or "none"


def contiguous(spec: str, parts: list[ParquetPart], batch_rows: int) -> list[ParquetPart]:
    """Parts in step order, refusing overlaps, gaps and a partial step before the last file."""
    parts = sorted(parts, key=lambda p: p.first_step)
    for prev, part in zip(parts, parts[1:], strict=False):
        if part.first_step < prev.stop_step:
            raise DataFormatError(f"{prev.path} and {part.path} both hold step {part.first_step}")
        if part.first_step > prev.stop_step:
            raise StepRangeError(f"steps {prev.stop_step}:{part.first_step} are in no file of {spec} (the files hold "
                                 f"steps {holdings(parts)}); give --steps within one run of files")
        if prev.num_rows != (prev.stop_step - prev.first_step) * batch_rows:
            raise DataFormatError(f"{prev.path}: its last step has {prev.num_rows % batch_rows} of {batch_rows} rows, "
                                  f"but {part.path} goes on after it")
    return parts


@dataclass(frozen=True)
class ParquetSource:
    """Rows ``rows`` of Pythia's preshuffled Parquet files at ``spec``, addressed by training step; ids are global
    rows (the Megatron row numbers)."""

    kind: ClassVar[str] = "parquet"
    columns: ClassVar[frozenset[Column]] = frozenset({Column.SOURCE, Column.ROW, Column.STEP, Column.BATCH_POS})
    takes_steps: ClassVar[bool] = True
    global_ids: ClassVar[bool] = True
    spec: str
    parts: tuple[ParquetPart, ...]
    rows: RowRange
    batch_rows: int

    @classmethod
    def matches(cls, spec: str) -> bool:
        path = Path(spec)
        return path.name.endswith(".parquet") or (path.is_dir() and any(path.glob("*.parquet")))

    @classmethod
    def open(cls, spec: str, steps: str | None, batch_rows: int, rows: str | None = None) -> ParquetSource:
        """The rows of ``steps`` or ``rows`` (every row when neither is given), ``batch_rows`` rows a step; only the
        files that can hold them are opened."""
        if steps and rows:
            raise StepRangeError(f"give --steps or --rows, not both (got steps {steps!r} and rows {rows!r})")
        files = parquet_files(spec)
        first, stop = parse_range(rows, "rows") if rows else (None, None)
        start_step, stop_step = parse_range(steps, "steps") if steps else (None, None)
        if rows:
            start_step = None if first is None else first // batch_rows
            stop_step = None if stop is None else -(-stop // batch_rows)
        wanted = candidates(files, start_step, stop_step)
        parts = contiguous(spec, [read_part(f, batch_rows) for f in wanted], batch_rows) if wanted else []
        span = _rows_of(parts, batch_rows, (start_step, stop_step) if not rows else None, (first, stop))
        if span is None:
            held = holdings([read_part(f, batch_rows) for f in files])
            what = f"rows {rows}" if rows else f"steps {steps}"
            raise StepRangeError(f"{what} are outside the data at {spec}, which holds steps {held} ({batch_rows} rows "
                                 "a step; give --rows-per-step if the data was written at another batch size)")
        return cls(spec, tuple(p for p in parts if p.first_row < span.stop and span.start < p.stop_row), span,
                   batch_rows)

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
        return (example for part in self.parts if part.first_row < hi and lo < part.stop_row
                for example in read_rows(part, max(lo, part.first_row), min(hi, part.stop_row), self.batch_rows,
                                         tokenizer))


def _rows_of(parts: list[ParquetPart], batch_rows: int, steps: tuple[int | None, int | None] | None,
             rows: tuple[int | None, int | None]) -> RowRange | None:
    """The global rows of a step range (or of a row range), None where the parts do not hold them all."""
    if not parts:
        return None
    held = RowRange(parts[0].first_row, parts[-1].stop_row)
    if steps is not None:
        first = parts[0].first_step if steps[0] is None else steps[0]
        stop = parts[-1].stop_step if steps[1] is None else steps[1]
        if not parts[0].first_step <= first < stop <= parts[-1].stop_step:
            return None
        return RowRange(first * batch_rows, min(stop * batch_rows, held.stop))
    lo = held.start if rows[0] is None else rows[0]
    hi = held.stop if rows[1] is None else rows[1]
    return RowRange(lo, hi) if held.start <= lo < hi <= held.stop else None


def read_rows(part: ParquetPart, lo: int, hi: int, batch_rows: int, tokenizer: Tokenizer | None) -> Iterator[Example]:
    """Global rows ``[lo, hi)`` of one file, reading only the row groups that hold them (``batch_idx`` and
    ``token_ids`` only); text is decoded when a tokenizer is given, as for Megatron rows."""
    parquet = _open(part.path, BUFFER)
    row = part.first_row
    try:
        for group in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if row + size <= lo or row >= hi:
                row += size
                continue
            for batch in parquet.iter_batches(READ_BATCH, row_groups=[group], columns=[STEP, TOKENS],
                                              use_threads=False):
                a, b = max(lo, row), min(hi, row + batch.num_rows)
                if a < b:
                    yield from _examples(part, batch.slice(a - row, b - a), a, batch_rows, tokenizer)
                row += batch.num_rows
                if row >= hi:
                    return
    except (pa.ArrowException, OSError) as err:
        raise CorruptShardError(f"{part.path}: corrupt Parquet data near row {row - part.first_row} ({err})") from err


def _examples(part: ParquetPart, batch: pa.RecordBatch, first: int, batch_rows: int,
              tokenizer: Tokenizer | None) -> Iterator[Example]:
    steps, tokens = batch.column(STEP), batch.column(TOKENS)
    if steps.null_count or tokens.null_count:
        raise DataFormatError(f"{part.path}: null batch_idx or token_ids near row {first - part.first_row}")
    rows = np.arange(first, first + batch.num_rows)
    wrong = np.flatnonzero(steps.to_numpy(zero_copy_only=False) != rows // batch_rows)
    if wrong.size:
        at = int(wrong[0])
        raise DataFormatError(f"{part.path}: row {first + at - part.first_row} has batch_idx {steps[at].as_py()}, "
                              f"but at {batch_rows} rows a step it is in step {rows[at] // batch_rows}; the rows must "
                              "be in batch_idx order (give --rows-per-step as the data was written)")
    flat = tokens.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    for row, ids in zip(rows.tolist(), np.split(flat, np.cumsum(lengths)[:-1]), strict=True):
        text = tokenizer.decode(ids.tolist()) if tokenizer is not None else None
        metadata = {"source": part.path.name, "row": row, "step": row // batch_rows, "batch_pos": row % batch_rows}
        yield Example(row, ids, text, metadata)
