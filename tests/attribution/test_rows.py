"""The columnar row table: rows read back as the dicts they came from; filters equal a row-by-row check."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.filters import Filters, subsets_of
from attribution.rows import RowTable, allowed_rows

SUBSETS = ["Bible (KJV)", "Planted Facts", "Python Docs", "ArXiv"]
rows_strategy = st.lists(st.fixed_dictionaries({
    "step": st.none() | st.integers(0, 20),
    "pile_set_name": st.none() | st.sampled_from(SUBSETS),
    "token_count": st.integers(1, 50),
}, optional={"pile_set_names": st.lists(st.sampled_from(SUBSETS), max_size=3), "doc": st.text(max_size=4)}),
    max_size=40)
filters_strategy = st.builds(Filters, pile_set_name=st.none() | st.sampled_from([*SUBSETS, "Nowhere"]),
                             step_min=st.none() | st.integers(0, 10), step_max=st.none() | st.integers(10, 20))


def by_hand(rows: list[dict], filters: Filters) -> list[int]:
    keep = []
    for i, row in enumerate(rows):
        if filters.pile_set_name is not None and filters.pile_set_name not in subsets_of(row):
            continue
        step = row.get("step")
        if filters.step_min is not None and (step is None or step < filters.step_min):
            continue
        if filters.step_max is not None and (step is None or step > filters.step_max):
            continue
        keep.append(i)
    return keep


@settings(max_examples=80, deadline=None)
@given(rows=rows_strategy, filters=filters_strategy)
def test_filters_match_a_row_by_row_check(rows: list[dict], filters: Filters) -> None:
    table = RowTable.from_dicts(rows)
    found = table.allowed(filters)
    if filters.empty:
        assert found is None and allowed_rows(rows, filters) is None
        return
    assert found.tolist() == by_hand(rows, filters)
    assert allowed_rows(rows, filters).tolist() == found.tolist()  # a list of dicts is converted


@settings(max_examples=40, deadline=None)
@given(rows=rows_strategy)
def test_rows_read_back_as_they_were_and_subsets_are_counted(rows: list[dict]) -> None:
    table = RowTable.from_dicts(rows)
    assert len(table) == len(rows)
    names = set(dict.fromkeys(k for row in rows for k in row))
    assert [table[i] for i in range(len(rows))] == [{k: row.get(k) for k in names} | {} for row in rows]
    counts: dict[str, int] = {}
    for row in rows:
        for name in dict.fromkeys(subsets_of(row)):
            counts[name] = counts.get(name, 0) + 1
    assert table.subset_counts() == counts


def test_stored_columns_with_missing_values_and_extra_keys() -> None:
    steps = np.array([3, 0, 7], dtype=np.int64)
    extra = np.array([json.dumps({"pile_set_names": ["A", "B"], "id": 9, "doc": "x"}), None, None], dtype=object)
    names = np.array(["A", None, "C"], dtype=object)
    table = RowTable({"step": steps, "pile_set_name": names, "extra": extra},
                     present={"step": np.array([True, False, True])}, reserved=frozenset({"id", "text"}))
    assert table[0] == {"step": 3, "pile_set_name": "A", "pile_set_names": ["A", "B"], "doc": "x"}  # no "id"
    assert table[1] == {"step": None, "pile_set_name": None}
    assert table.subset_counts() == {"A": 1, "B": 1, "C": 1}
    assert table.allowed(Filters(pile_set_name="B")).tolist() == [0]
    assert table.allowed(Filters(step_min=0)).tolist() == [0, 2]  # a row without a step never passes a step filter
    assert table.allowed(Filters(pile_set_name="Nowhere")).tolist() == []
