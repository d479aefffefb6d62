"""Concurrent gradient queries are answered in shared sketch passes, with the results of one at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from attribution.batching import EmptyCompletionError
from indexer.groundtruth import load_facts
from service.batcher import GradientBatcher
from service.state import ServedIndex


@pytest.fixture(scope="module")
def served(tiny_index: Path) -> ServedIndex:
    served = ServedIndex(tiny_index)
    served.load()
    return served


def test_queries_arriving_together_share_a_pass_and_get_their_own_results(served: ServedIndex,
                                                                         tiny_demo: Path) -> None:
    facts = [f for f in load_facts(tiny_demo) if f.gold_rows][:8]
    batcher = GradientBatcher(served, window_s=0.2)  # a wide window: the 8 threads surely meet
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda f: batcher.submit(f.prompt, f.completion, 3 + len(f.prompt) % 3, None),
                                    facts))
    finally:
        batcher.close()
    assert max(batcher.batches) > 1 and sum(batcher.batches) == len(facts)
    session = served.current()
    for fact, got in zip(facts, answers, strict=True):
        alone = session.attribute(fact.prompt, fact.completion, k=len(got))
        assert [r.example_id for r in got] == [r.example_id for r in alone]


def test_a_bad_query_fails_alone(served: ServedIndex, tiny_demo: Path) -> None:
    fact = next(f for f in load_facts(tiny_demo) if f.gold_rows)
    batcher = GradientBatcher(served, window_s=0.2)
    try:
        with ThreadPoolExecutor(2) as pool:
            good = pool.submit(batcher.submit, fact.prompt, fact.completion, 3, None)
            bad = pool.submit(batcher.submit, fact.prompt, "", 3, None)
            assert len(good.result()) == 3
            with pytest.raises(EmptyCompletionError):
                bad.result()
    finally:
        batcher.close()
