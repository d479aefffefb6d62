"""What the catalog measures of a served index: the cost of an unlearning query, timed on the real model."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from attribution.unlearning import CANDIDATE_SOURCES
from indexer.store import open_index
from service.catalog import unlearning_cost


def test_unlearning_cost_times_a_typical_row_and_counts_the_rows_a_query_rescores(tiny_index: Path) -> None:
    session = open_index(tiny_index)
    cost = unlearning_cost(session)
    assert cost.rows == len(session) == 192  # a small index: every row is re-scored
    median = int(statistics.median(m["token_count"] for m in session.metadata))
    assert cost.row_tokens == min(median, session.encoder.max_length)  # rows are cut to the context, as scored
    assert 0 < cost.row_seconds < 5 and cost.seconds == cost.rows * cost.row_seconds
    settings = session.config.unlearning
    session.config = replace(session.config, unlearning=replace(settings, exhaustive_rows=100, candidates=20))
    assert unlearning_cost(session).rows == len(CANDIDATE_SOURCES) * 20  # a large one: the candidate pool

