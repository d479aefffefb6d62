"""The evidence table's stored columns (bench/evidence_store.py): round trip, update, the passes they name, and
a store that cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.evidence import COLUMNS, Cell
from bench.evidence_store import SCHEMA, StoredColumn, StoreError, load, save, table, update

DROP, HALF = COLUMNS[0], COLUMNS[1]
REMOVAL = next(c for c in COLUMNS if c.kind == "removal")


def test_cells_round_trip_with_non_finite_bounds_as_null(tmp_path: Path) -> None:
    path = tmp_path / "evidence.json"
    cells = {"newton": Cell(0.29, 0.22, 0.35, two_way=True), "bm25": Cell(0.19, float("nan"), None),
             "shuffled": Cell(0.0, -0.05, 0.0)}
    removal = {"unlearning": Cell(2.25, 1.85, 2.65, 5.1, 0.24, (0.68, 0.32, 1.03)),
               "bm25": Cell(1.57, times_random=3.6, paired_vs_bm25=(0.0, float("nan"), float("nan")))}
    stored = {DROP.title: StoredColumn("2026-12-07; commit abc", cells),
              REMOVAL.title: StoredColumn("2026-12-07; commit def", removal)}
    save(path, stored)
    raw = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert raw["schema"] == SCHEMA and "NaN" not in path.read_text()
    back = load(path)
    assert back[DROP.title].cells["newton"] == cells["newton"]
    assert back[DROP.title].cells["bm25"] == Cell(0.19, None, None)
    assert back[DROP.title].cells["shuffled"] == cells["shuffled"]  # zeros are values, not defaults
    assert back[REMOVAL.title].cells["unlearning"] == removal["unlearning"]
    assert back[REMOVAL.title].cells["bm25"].paired_vs_bm25 == (0.0, None, None)
    assert back[REMOVAL.title].measured == "2026-12-07; commit def"
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed


def test_update_replaces_only_the_measured_columns() -> None:
    stored = {DROP.title: StoredColumn("old", {"bm25": Cell(0.1)}),
              HALF.title: StoredColumn("old", {"bm25": Cell(0.2)})}
    updated = update(stored, [(HALF, {"bm25": Cell(0.4)})], "new")
    assert updated[DROP.title] == stored[DROP.title]
    assert updated[HALF.title] == StoredColumn("new", {"bm25": Cell(0.4)})
    assert stored[HALF.title].measured == "old"  # the input is not changed


def test_the_table_keeps_the_columns_order_and_names_each_pass() -> None:
    stored = {REMOVAL.title: StoredColumn("2026-12-02; commit aaa", {"bm25": Cell(1.5, times_random=4.0)}),
              DROP.title: StoredColumn("2026-12-07; commit bbb", {"bm25": Cell(0.2), "newton": Cell(0.3)})}
    text = table(stored)
    assert text.splitlines()[0] == f"| method | {DROP.title} | {REMOVAL.title} |"
    assert "| BM25 | 0.200 | 1.50 (4.0×) |" in text
    assert f"- 2026-12-07; commit bbb: {DROP.title}" in text and f"- 2026-12-02; commit aaa: {REMOVAL.title}" in text
    assert table({}) == ""


def test_a_column_no_longer_in_the_table_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps({"schema": SCHEMA, "columns": {
        "a retired column": {"measured": "then", "cells": {"bm25": {"value": 0.1}}},
        DROP.title: {"measured": "then", "cells": {"bm25": {"value": 0.2}}}}}))
    assert set(load(path)) == {DROP.title}


@pytest.mark.parametrize("text", ["{not json", json.dumps({"schema": 99, "columns": {}}), json.dumps([1, 2]),
                                  json.dumps({"schema": SCHEMA, "columns": {COLUMNS[0].title: {"cells": {}}}}),
                                  json.dumps({"schema": SCHEMA, "columns": {COLUMNS[0].title: {
                                      "measured": "x", "cells": {"bm25": {"value": 0.1, "colour": "red"}}}}})])
def test_a_store_that_cannot_be_read_says_how_to_mend_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "evidence.json"
    path.write_text(text)
    with pytest.raises(StoreError, match="git checkout"):
        load(path)


def test_no_store_no_columns(tmp_path: Path) -> None:
    assert load(tmp_path / "missing.json") == {}


def test_the_committed_store_reads_and_names_only_known_rows() -> None:
    """bench/evidence.json, as committed: every column readable, every cell a method some row of the table shows."""
    from bench.evidence import ROWS
    from bench.evidence_store import STORE

    stored = load(STORE)
    assert stored, "bench/evidence.json holds no column"
    names = {name for row in ROWS for name in (row.lds, row.removal) if name}
    for column in stored.values():
        assert column.measured and set(column.cells) <= names


def test_the_readme_shows_the_committed_store() -> None:
    """The README's evidence table is the committed store's: a store changed without regenerating the README (or
    the README edited by hand) fails here. Regenerate with `python -m bench.results --reuse --only … --readme
    README.md`."""
    from bench.evidence import BEGIN, END
    from bench.evidence_store import STORE

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    shown = readme[readme.index(BEGIN) + len(BEGIN): readme.index(END)].strip()
    assert shown == table(load(STORE)).strip()
