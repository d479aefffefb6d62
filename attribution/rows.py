"""Row metadata by column: one array a column, so filters and counts over 10^7 rows are array operations.

A stored index reads its DuckDB ``examples`` table into a :class:`RowTable` without building a dict a
row; a dict is made only for the rows a caller asks for (``table[row]``: the results of a query, at the
HTTP edge). Keys a reader kept beyond the schema live in one JSON ``extra`` column and are decoded on
request; a schema column wins over an extra key of the same name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from attribution.filters import Filters

INT_COLUMNS = frozenset({"row", "step", "batch_pos", "token_count"})
"""Integer columns (a missing value is masked, not None in an object array)."""
EXTRA = "extra"
"""The JSON column of a reader's other keys."""


class RowTable:
    """The metadata of ``n`` rows (store order), one array per column; ``table[row]`` is one row as a dict."""

    def __init__(self, columns: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None = None,
                 reserved: frozenset[str] = frozenset()) -> None:
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self.n = lengths.pop() if lengths else 0
        self.columns = dict(columns)
        """Column name → values ``(n,)``: int64 for :data:`INT_COLUMNS` (see :attr:`present`), else objects."""
        self.present = {name: np.asarray(mask, dtype=bool) for name, mask in (present or {}).items()}
        """Integer column → whether each row has a value (a column absent here has one in every row)."""
        self.reserved = reserved | set(self.columns)
        """Names an ``extra`` key may not take (the schema's columns win)."""

    @classmethod
    def from_dicts(cls, rows: Sequence[Mapping[str, Any]]) -> RowTable:
        """The table of in-memory rows (``Example.metadata`` dicts): every key a column."""
        names = list(dict.fromkeys(key for row in rows for key in row))
        columns, present = {}, {}
        for name in names:
            values = [row.get(name) for row in rows]
            if name in INT_COLUMNS and all(v is None or (isinstance(v, int | np.integer) and not isinstance(v, bool))
                                           for v in values):
                present[name] = np.asarray([v is not None for v in values], dtype=bool)
                columns[name] = np.asarray([0 if v is None else v for v in values], dtype=np.int64)
            else:
                column = np.empty(len(values), dtype=object)
                column[:] = values
                columns[name] = column
        return cls(columns, present)

    @classmethod
    def of(cls, metadata: RowTable | Sequence[Mapping[str, Any]]) -> RowTable:
        """``metadata`` as a table (a list of dicts is converted)."""
        return metadata if isinstance(metadata, RowTable) else cls.from_dicts(metadata)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, row: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, values in self.columns.items():
            if name == EXTRA:
                continue
            if name in self.present and not self.present[name][row]:
                out[name] = None
            else:
                value = values[row]
                out[name] = value.item() if isinstance(value, np.generic) else value
        encoded = self.columns[EXTRA][row] if EXTRA in self.columns else None
        if encoded:
            out.update({k: v for k, v in json.loads(encoded).items() if k not in self.reserved})
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[row] for row in range(self.n))

    def ints(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """An integer column's values and which rows have one (no such column: none have)."""
        if name not in self.columns:
            return np.zeros(self.n, dtype=np.int64), np.zeros(self.n, dtype=bool)
        values = self.columns[name]
        if values.dtype == object:  # a column of other values too: only its integers count
            have = np.asarray([isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values])
            return np.where(have, values, 0).astype(np.int64), have
        return values, self.present.get(name, np.ones(self.n, dtype=bool))

    @cached_property
    def subsets(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every Pile subset a row holds (its ``pile_set_names`` label, else its one ``pile_set_name``), flattened:
        ``(names, rows, codes)`` — row ``rows[i]`` holds subset ``names[codes[i]]``. Built on first use."""
        names: dict[str, int] = {}
        rows, codes = [], []
        listed = self.columns.get("pile_set_names")
        extra = self.columns.get(EXTRA)
        single = self.columns.get("pile_set_name")
        for row in range(self.n):
            held = listed[row] if listed is not None else None
            if held is None and extra is not None and extra[row]:
                held = json.loads(extra[row]).get("pile_set_names")
            if not held:
                held = [single[row]] if single is not None and single[row] is not None else []
            for name in dict.fromkeys(held):
                rows.append(row)
                codes.append(names.setdefault(name, len(names)))
        return list(names), np.asarray(rows, dtype=np.int64), np.asarray(codes, dtype=np.int64)

    def subset_counts(self) -> dict[str, int]:
        """Rows holding text of each subset."""
        names, _, codes = self.subsets
        return {name: int(count) for name, count in zip(names, np.bincount(codes, minlength=len(names)), strict=True)}

    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """Row positions that pass the filters, ascending; ``None`` when nothing is filtered."""
        if filters is None or filters.empty:
            return None
        keep = np.ones(self.n, dtype=bool)
        if filters.pile_set_name is not None:
            names, rows, codes = self.subsets
            holding = np.zeros(self.n, dtype=bool)
            if filters.pile_set_name in names:
                holding[rows[codes == names.index(filters.pile_set_name)]] = True
            keep &= holding
        if filters.step_min is not None or filters.step_max is not None:
            steps, have = self.ints("step")
            keep &= have
            if filters.step_min is not None:
                keep &= steps >= filters.step_min
            if filters.step_max is not None:
                keep &= steps <= filters.step_max
        return np.flatnonzero(keep).astype(np.int64)


def allowed_rows(metadata: RowTable | Sequence[Mapping[str, Any]], filters: Filters | None) -> np.ndarray | None:
    """Row positions of ``metadata`` that pass the filters; ``None`` when nothing is filtered."""
    if filters is None or filters.empty:
        return None
    return RowTable.of(metadata).allowed(filters)
