"""The notebook API and the four retrievers on the tiny demo, including bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attribution.batching import ContextLengthError, EmptyCompletionError
from attribution.config import AttributionConfig, CurvatureConfig, ScoringConfig
from attribution.errors import ConfigError
from attribution.filters import Filters
from attribution.retrievers import Query
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from evaluation.demo_session import demo_session
from evaluation.metrics import first_gold_rank, recall_at
from indexer.groundtruth import Fact, load_facts

METHODS = ["gradient", "embedding", "bm25", "hybrid"]


@pytest.fixture(scope="module")
def session(tiny_demo: Path) -> AttributionSession:
    return demo_session(tiny_demo, AttributionConfig(sketch=SketchConfig(k=6), curvature=CurvatureConfig(sample=64)))


@pytest.fixture(scope="module")
def fact(tiny_demo: Path) -> Fact:
    return next(f for f in load_facts(tiny_demo) if f.gold_rows)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_ranks_k_distinct_examples(session: AttributionSession, fact: Fact, method: str) -> None:
    rows = session.attribute(fact.prompt, fact.completion, k=7, method=method)
    assert [r.rank for r in rows] == list(range(1, 8))
    assert len({r.example_id for r in rows}) == 7
    scores = [r.score for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all({"step", "batch_pos", "pile_set_name", "source"} <= r.metadata.keys() for r in rows)


def test_gradient_evidence_sums_to_the_score(session: AttributionSession, fact: Fact) -> None:
    rows = session.attribute(fact.prompt, fact.completion, k=3)
    for row in rows:
        assert len(row.token_contributions) == len(row.completion_tokens) >= 1
        assert sum(row.token_contributions) == pytest.approx(row.score, rel=1e-4, abs=1e-6)


def test_filters_restrict_results(session: AttributionSession, fact: Fact) -> None:
    for method in METHODS:
        rows = session.attribute(fact.prompt, fact.completion, k=5, method=method,
                                 filters=Filters(pile_set_name="Planted Facts"))
        assert rows and all(r.metadata["pile_set_name"] == "Planted Facts" for r in rows)
        rows = session.attribute(fact.prompt, fact.completion, k=5, method=method,
                                 filters=Filters(step_min=3, step_max=5))
        assert rows and all(3 <= r.metadata["step"] <= 5 for r in rows)


def test_contrastive_and_greedy_queries(session: AttributionSession, fact: Fact) -> None:
    controls = [(r.prompt, r.completion) for r in fact.related] + [(fact.related[0].prompt, None)]
    rows = session.attribute(fact.prompt, fact.completion, k=4, controls=controls)
    assert len(rows) == 4
    own = session.attribute(fact.prompt, None, k=2)
    assert own[0].completion and own[0].completion == own[1].completion


def test_gradient_finds_planted_facts_well_above_random(session: AttributionSession, tiny_demo: Path) -> None:
    facts = [f for f in load_facts(tiny_demo) if f.gold_rows]
    ranks = [first_gold_rank([r.example_id for r in session.attribute(f.prompt, f.completion, k=10)],
                             f.gold_rows) for f in facts]
    n = len(session)
    random_recall = sum(min(1.0, 10 * len(f.gold_rows) / n) for f in facts) / len(facts)  # union bound
    assert recall_at(ranks, 10) >= max(0.5, 2 * random_recall)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 0}, ConfigError, "k must be between 1"),
        ({"k": 10**6}, ConfigError, "k must be between 1"),
        ({"method": "psychic"}, ConfigError, "unknown method 'psychic'"),
        ({"completion": ""}, EmptyCompletionError, "completion is empty"),
        ({"prompt": "   "}, ConfigError, "prompt is empty"),
        ({"completion": " word" * 500}, ContextLengthError, "exceeds the model's context"),
    ],
)
def test_bad_queries(session: AttributionSession, fact: Fact, kwargs: dict, error: type, message: str) -> None:
    args = {"prompt": fact.prompt, "completion": fact.completion, **kwargs}
    with pytest.raises(error, match=message):
        session.attribute(**args)


def test_windowed_session_returns_spans(tiny_demo: Path, fact: Fact) -> None:
    config = AttributionConfig(sketch=SketchConfig(k=4), window=16, curvature=CurvatureConfig(kind="none"))
    session = demo_session(tiny_demo, config)
    rows = session.attribute(fact.prompt, fact.completion, k=3)
    for row in rows:
        start, end = row.token_span
        assert end - start == 16 and start % 16 == 0
        assert sum(row.token_contributions) == pytest.approx(row.score, rel=1e-4, abs=1e-6)
        matched = session.matched_text(row)  # the window's text, for printing instead of the row's start
        assert matched.strip() and matched in row.text and len(matched) < len(row.text)


def test_multi_checkpoint_session_sums_over_revisions(tiny_demo: Path, fact: Fact) -> None:
    base = AttributionConfig(sketch=SketchConfig(k=4), curvature=CurvatureConfig(kind="none"),
                             scoring=ScoringConfig(mode="inner_product"))
    final = demo_session(tiny_demo, base)
    early = demo_session(tiny_demo, replace(base, revisions=("step8",)))
    both = demo_session(tiny_demo, replace(base, revisions=("step8", None)))
    scores = {}
    for name, s in (("final", final), ("early", early), ("both", both)):
        rows = s.attribute(fact.prompt, fact.completion, k=len(s))
        scores[name] = {r.example_id: r.score for r in rows}
    for example_id, score in scores["both"].items():
        assert score == pytest.approx(scores["final"][example_id] + scores["early"][example_id], rel=1e-4, abs=1e-4)
    weighted = demo_session(tiny_demo, replace(base, revisions=("step8", None), revision_weights=(0.25, 3.0)))
    rows = weighted.attribute(fact.prompt, fact.completion, k=len(weighted))
    for row in rows:  # TracIn-CP with the learning rates as weights
        expected = 0.25 * scores["early"][row.example_id] + 3.0 * scores["final"][row.example_id]
        assert row.score == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_embed_and_head_groups_attribute_with_exact_evidence(tiny_demo: Path, fact: Fact) -> None:
    config = AttributionConfig(sketch=SketchConfig(k=4, groups=("blocks", "embed", "head")),
                               curvature=CurvatureConfig(kind="none"))
    session = demo_session(tiny_demo, config)
    assert any(name.endswith("embed_in") for name in session.encoder.checkpoints[0].sketcher.module_names)
    rows = session.attribute(fact.prompt, fact.completion, k=3)
    assert len(rows) == 3
    for row in rows:
        assert sum(row.token_contributions) == pytest.approx(row.score, rel=1e-4, abs=1e-6)


def test_a_query_of_token_ids_is_the_query_of_their_text(session: AttributionSession, fact: Fact) -> None:
    """encode_query_ids (held-out chunks as queries) gives the vector encode_query gives for the same tokens."""
    encoder = session.encoder
    prompt, completion = fact.prompt, fact.completion
    by_text = encoder.encode_query(prompt, completion)
    by_ids = encoder.encode_query_ids(encoder.encode_ids(prompt), encoder.encode_ids(completion))
    assert torch.equal(by_text.vector, by_ids.vector) and by_ids.completion == by_text.completion


def test_queries_sketched_together_answer_as_one_at_a_time(session: AttributionSession, tiny_demo: Path) -> None:
    """attribute_many (a server's batch of concurrent gradient queries, one sketch pass) = attribute, query by query."""
    facts = [f for f in load_facts(tiny_demo) if f.gold_rows][:4]
    pairs = [(f.prompt, f.completion) for f in facts] + [("The tower", " stood")]
    together = session.attribute_many(pairs, k=5)
    for (prompt, completion), batch in zip(pairs, together, strict=True):
        alone = session.attribute(prompt, completion, k=5)
        assert [r.example_id for r in batch] == [r.example_id for r in alone]
        assert [r.score for r in batch] == pytest.approx([r.score for r in alone], rel=1e-4, abs=1e-6)
        assert batch[0].token_contributions == pytest.approx(alone[0].token_contributions, rel=1e-3, abs=1e-5)
    with pytest.raises(ConfigError, match="no controls"):
        session.gradient.search_many([Query("a", None)], 3, [None])
