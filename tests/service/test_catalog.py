"""What the catalog measures of a served index: the cost of an unlearning query, timed on the real model."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from attribution.retrievers import Method
from attribution.unlearning import CANDIDATE_SOURCES
from indexer.store import open_index
from service import catalog
from service.catalog import Catalog, unlearning_cost
from service.defaults import default_method


def test_unlearning_cost_times_a_typical_row_and_counts_the_rows_a_query_rescores(tiny_index: Path) -> None:
    session = open_index(tiny_index)
    cost = unlearning_cost(session)
    assert cost.rows == len(session) == 192  # a small index: every row is re-scored
    mean = round(statistics.fmean(m["token_count"] for m in session.metadata))
    assert cost.row_tokens == min(mean, session.encoder.max_length)  # rows are cut to the context, as scored
    assert 0 < cost.row_seconds < 5
    settings = session.config.unlearning
    session.config = replace(session.config, unlearning=replace(settings, exhaustive_rows=100, candidates=20))
    assert unlearning_cost(session).rows == len(CANDIDATE_SOURCES) * 20  # a large one: the candidate pool


def test_rows_without_token_counts_are_costed_at_the_context(tiny_index: Path) -> None:
    session = open_index(tiny_index)
    session.metadata = [{**meta, "token_count": None} for meta in session.metadata]
    assert unlearning_cost(session).row_tokens == session.encoder.max_length  # never a 2-token guess


def test_a_pass_that_fails_at_load_costs_inf_and_auto_falls_back_to_gradient(
        tiny_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(catalog, "row_losses", out_of_memory)
    cost = unlearning_cost(open_index(tiny_index))
    assert cost.row_seconds == float("inf") and cost.rows == 192
    chosen = default_method("auto", Catalog({}, None, None, cost))
    assert chosen.method is Method.GRADIENT and "could not be timed" in chosen.reason


def test_the_estimate_adds_three_cold_passes_and_a_read_per_row_to_two_ascents(tiny_index: Path) -> None:
    """auto decides on the estimate of an uncached unlearning query. How near it comes to a timed query is a
    benchmark (``bench.cost_estimate``, on the demo's and the second case's indices); here its measured parts are
    summed as documented."""
    cost = unlearning_cost(open_index(tiny_index))
    parts = (cost.row_seconds, cost.ascent_seconds, cost.read_seconds)
    assert all(math.isfinite(p) and p > 0 for p in parts), cost
    expected = cost.rows * (3 * cost.row_seconds + cost.read_seconds) + 2 * cost.ascent_seconds
    assert cost.seconds() == pytest.approx(expected)
    assert cost.seconds(row_seconds=0.0) == pytest.approx(cost.rows * cost.read_seconds + 2 * cost.ascent_seconds)
