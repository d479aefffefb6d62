"""The one metadata schema: what an index records about each example besides its vectors.

Readers fill some columns of it (each declares which, see :mod:`indexer.sources`); the
shard writer stores every column in ``meta.parquet``, the merge copies them into the
DuckDB ``examples`` table, and the service reads them back through :class:`DuckTexts`.
Keys a reader keeps in ``Example.metadata`` beyond the schema (``read_jsonl`` keeps every
``meta`` key) go into one JSON ``extra`` column and come back under their own names; an
extra key that names a schema column is stored but, on reading, the column wins.
"""

from __future__ import annotations

import json
import threading
from enum import StrEnum
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from attribution.records import Example
from attribution.rows import INT_COLUMNS, RowTable


class Column(StrEnum):
    """The metadata columns, in table order."""

    ID = "id"
    SOURCE = "source"
    ROW = "row"
    STEP = "step"
    BATCH_POS = "batch_pos"
    PILE_SET_NAME = "pile_set_name"
    TOKEN_COUNT = "token_count"
    TEXT = "text"
    EXTRA = "extra"


TYPES: dict[Column, pa.DataType] = {
    Column.ID: pa.int64(),          # global example id (Megatron row, else running count)
    Column.SOURCE: pa.string(),     # file or dataset name
    Column.ROW: pa.int64(),         # row (or line) within the source
    Column.STEP: pa.int64(),        # training step that consumed the row (Megatron data)
    Column.BATCH_POS: pa.int64(),   # position in that step's batch
    Column.PILE_SET_NAME: pa.string(),
    Column.TOKEN_COUNT: pa.int64(),
    Column.TEXT: pa.string(),
    Column.EXTRA: pa.string(),      # JSON object of the reader's other metadata keys, or null
}
SCHEMA = pa.schema([pa.field(c.value, TYPES[c]) for c in Column])
FROM_METADATA = (Column.SOURCE, Column.ROW, Column.STEP, Column.BATCH_POS, Column.PILE_SET_NAME)
"""Columns read from ``Example.metadata`` under their own names; any other key is extra."""
LISTED = tuple(c for c in Column if c is not Column.TEXT)
"""Columns of the in-memory metadata (everything but the text, which stays in DuckDB)."""
NAMES = frozenset(c.value for c in Column)


def _extra(metadata: dict[str, Any]) -> str | None:
    rest = {k: v for k, v in metadata.items() if k not in FROM_METADATA}
    return json.dumps(rest, ensure_ascii=False, sort_keys=True, default=str) if rest else None


def _row(example: Example, text: str) -> dict[str, Any]:
    meta = example.metadata
    return {
        **{c.value: meta.get(c.value) for c in FROM_METADATA},
        Column.ID.value: example.example_id,
        Column.SOURCE.value: str(meta.get(Column.SOURCE.value)),
        Column.TOKEN_COUNT.value: len(example.token_ids),
        Column.TEXT.value: text,
        Column.EXTRA.value: _extra(meta),
    }


def metadata_table(examples: list[Example], texts: list[str]) -> pa.Table:
    """One shard's metadata (and text) as an Arrow table of :data:`SCHEMA`."""
    return pa.Table.from_pylist([_row(e, t) for e, t in zip(examples, texts, strict=True)], schema=SCHEMA)


def with_extra(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row with its ``extra`` JSON replaced by the keys it holds (schema columns win)."""
    encoded = row.pop(Column.EXTRA.value, None)
    extra = json.loads(encoded) if encoded else {}
    return {**row, **{k: v for k, v in extra.items() if k not in NAMES}}


def _stored(con: duckdb.DuckDBPyConnection, wanted: tuple[Column, ...]) -> list[str]:
    """The wanted columns the table has (an index built before ``extra`` existed lacks it)."""
    have = {r[0] for r in con.execute("DESCRIBE examples").fetchall()}
    return [c.value for c in wanted if c.value in have]


def load_metadata(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, RowTable]:
    """Every example's id and metadata (no text), in store row order: column arrays, no dict a row."""
    names = _stored(con, LISTED)
    arrays = con.execute(f"SELECT {', '.join(names)} FROM examples ORDER BY position").fetchnumpy()
    ids = np.asarray(arrays[Column.ID.value], dtype=np.int64)
    columns, present = {}, {}
    for name in names[1:]:
        missing = np.ma.getmaskarray(arrays[name])
        values = np.ma.getdata(arrays[name])
        if name in INT_COLUMNS:
            columns[name] = np.where(missing, 0, values).astype(np.int64)
            present[name] = ~missing
        else:
            column = np.asarray(values, dtype=object).copy()
            column[missing] = None
            columns[name] = column
    return ids, RowTable(columns, present, reserved=NAMES)


class DuckTexts:
    """Row → text lookup against the read-only DuckDB table, one cursor per call (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.con = duckdb.connect(str(path), read_only=True)
        self.lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self.lock:
            return self.con.cursor()

    def __getitem__(self, position: int) -> str:
        row = self.cursor().execute("SELECT text FROM examples WHERE position = ?", [int(position)]).fetchone()
        return row[0]

    def many(self, positions: list[int]) -> list[str]:
        """Texts of several rows in one query, in the order given."""
        if not positions:
            return []
        result = self.cursor().execute("SELECT position, text FROM examples WHERE position IN (SELECT UNNEST(?))",
                                       [list(map(int, positions))]).fetchall()
        found = dict(result)
        return [found[int(p)] for p in positions]

    def by_ids(self, ids: list[int]) -> list[dict]:
        """Full rows for example ids (``IN`` list on the id index), extra keys under their names."""
        cur = self.cursor()
        result = cur.execute("SELECT * FROM examples WHERE id IN (SELECT UNNEST(?))", [list(map(int, ids))])
        names = [d[0] for d in result.description]
        return [with_extra(dict(zip(names, values, strict=True))) for values in result.fetchall()]

    def by_step(self, step: int) -> list[dict]:
        """The indexed examples of one training step (``id``, ``batch_pos``, ``pile_set_name``,
        ``token_count``), ordered by batch position then id."""
        names = [c.value for c in (Column.ID, Column.BATCH_POS, Column.PILE_SET_NAME, Column.TOKEN_COUNT)]
        rows = self.cursor().execute(f"SELECT {', '.join(names)} FROM examples WHERE step = ? "
                                     "ORDER BY batch_pos, id", [int(step)]).fetchall()
        return [dict(zip(names, r, strict=True)) for r in rows]
