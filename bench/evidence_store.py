"""The evidence table's columns as last measured, kept in the repository (``bench/evidence.json``).

A whole ``make bench`` takes about ten hours here, and the table's columns come from sections that take minutes to
hours each. Without a record of earlier passes, a pass that reran some of them could only keep the whole earlier
table, however stale. So each column is stored with the pass (date and commit) that measured it: a pass replaces the
columns its sections measured, the others keep theirs, and the table names the pass of each column. A column is
always one run, so the methods in it are compared within one run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.evidence import COLUMNS, ROWS, Cell, Column, render

log = logging.getLogger(__name__)

SCHEMA = 1
STORE = Path(__file__).with_name("evidence.json")
PAIRED = ("paired_vs_bm25", "paired_vs_peer")
"""A cell's (difference, low, high) triples: lists in JSON."""


class StoreError(ValueError):
    """The stored columns cannot be read; the message says which file and how to mend it."""


@dataclass(frozen=True)
class StoredColumn:
    """One column of the evidence table as last measured."""

    measured: str
    """The pass that measured the column: ``DATE; commit SHA`` (and a note where the numbers were carried in)."""
    cells: dict[str, Cell]


def _mend(path: Path, why: str) -> StoreError:
    """The error for a store that cannot be read, with how to mend it."""
    return StoreError(f"{path}: {why}. Restore it (`git checkout -- {path}`) or delete it: the next pass that "
                      "measures a column writes it again.")


def _finite_or_none(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def cell_record(cell: Cell) -> dict[str, object]:
    """A cell as JSON: fields at their defaults left out, non-finite numbers as null (JSON has no NaN)."""
    record = {key: _finite_or_none(value) for key, value in asdict(cell).items()
              if value is not None and value is not False}  # 0.0 is a value
    for key in PAIRED:
        if (paired := getattr(cell, key)) is not None:
            record[key] = [_finite_or_none(v) for v in paired]
    return record


def cell_from(record: dict[str, object]) -> Cell:
    """A cell from :func:`cell_record`'s JSON (lists back to tuples); an unknown field raises ``TypeError``."""
    return Cell(**{**record, **{key: tuple(record[key]) for key in PAIRED if record.get(key) is not None}})


def load(path: Path) -> dict[str, StoredColumn]:
    """The stored columns by title (none: the file is missing). A column no longer in :data:`COLUMNS` is dropped
    with a warning; a file that cannot be read raises :class:`StoreError`."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _mend(path, f"cannot be read ({err})") from err
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("columns"), dict):
        raise _mend(path, f"not a schema-{SCHEMA} evidence store")
    known = {c.title for c in COLUMNS}
    stored: dict[str, StoredColumn] = {}
    for title, entry in data["columns"].items():
        if title not in known:
            log.warning("%s: column %r is no longer in the evidence table; dropped", path, title)
            continue
        try:
            stored[title] = StoredColumn(str(entry["measured"]),
                                         {name: cell_from(cell) for name, cell in entry["cells"].items()})
        except (KeyError, TypeError, AttributeError) as err:
            raise _mend(path, f"column {title!r} is malformed ({err!r})") from err
    return stored


def save(path: Path, stored: dict[str, StoredColumn]) -> None:
    """Write the store whole or not at all (a temporary file renamed over it)."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("w") as file:
            file.write(store_text(stored))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # a failed write (a full disk) leaves no half file beside the store


def store_text(stored: dict[str, StoredColumn]) -> str:
    """The store as JSON, one cell a line (a pass's change reads as a short diff)."""
    def dumps(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    columns = []
    for title, column in stored.items():
        cells = ",\n".join(f"    {dumps(name)}: {dumps(cell_record(cell))}"
                           for name, cell in sorted(column.cells.items()))
        columns.append(f'  {dumps(title)}: {{"measured": {dumps(column.measured)}, "cells": {{\n{cells}\n  }}}}')
    return f'{{"schema": {SCHEMA}, "columns": {{\n' + ",\n".join(columns) + "\n}}\n"


def older(measured: str, stored: StoredColumn | None) -> bool:
    """Whether a pass stamped ``measured`` ran on an earlier date than the stored column's (stamps begin with an ISO
    date), so that re-reading an old report never replaces a newer reading."""
    return stored is not None and measured[:10] < stored.measured[:10]


def update(stored: dict[str, StoredColumn], columns: list[tuple[Column, dict[str, Cell]]],
           measured: str) -> dict[str, StoredColumn]:
    """``stored`` with ``columns`` (measured by the pass ``measured``) in place of their earlier readings; only the
    cells of methods that the table has a row for are kept."""
    shown = {name for row in ROWS for name in (row.lds, row.removal) if name}
    return {**stored, **{column.title: StoredColumn(measured, {n: c for n, c in found.items() if n in shown})
                         for column, found in columns}}


def table(stored: dict[str, StoredColumn]) -> str:
    """The evidence table of every stored column, in :data:`COLUMNS` order, naming each column's pass."""
    columns = [(c, stored[c.title].cells) for c in COLUMNS if c.title in stored and stored[c.title].cells]
    return render(columns, {title: column.measured for title, column in stored.items()})
