"""What the catalog measures of a served index: the cost of an unlearning query, timed on the real model."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def second_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny second case (other text, templates, seed), indexed whole-row: a differently built index."""
    from demo.build import build_demo
    from evaluation.demo_config import TINY_SECOND
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.runner import Rank

    demo = tmp_path_factory.mktemp("second-demo")
    build_demo(demo, TINY_SECOND)
    out = tmp_path_factory.mktemp("second-index") / "index"
    build_index(IndexConfig.create(str(demo / "model"), str(demo / "data" / "document"), k=4, shard_size=64), out,
                Rank())
    return out


@pytest.mark.parametrize("which", ["tiny_index", "second_index"])
def test_the_estimate_is_within_twice_a_timed_uncached_query(which: str, request: pytest.FixtureRequest) -> None:
    """auto decides on the estimate of an uncached unlearning query: it must be near what one costs (a ratio of two
    timings in one process, not a speed target)."""
    import time

    session = open_index(request.getfixturevalue(which))
    cost = unlearning_cost(session)
    prompt = session.texts_of([0])[0][:60] or "The"  # any prompt: the cost is the rows' passes, not the target's
    started = time.perf_counter()
    session.attribute(prompt, " the", k=5, method=Method.UNLEARNING)  # its reference losses are not cached yet
    measured = time.perf_counter() - started
    assert 0.5 <= cost.seconds() / measured <= 2.0, (cost, measured)
