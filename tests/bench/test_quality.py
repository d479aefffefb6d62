"""bench.quality's estimator names: each family with its curvature and scoring, and clear refusals."""

from __future__ import annotations

import pytest

from attribution.preconditioner import PreconditionMode
from attribution.retrievers import Method
from attribution.scoring import ScoreMode
from bench.quality import DEFAULT_ESTIMATORS, parse_estimator


def test_every_default_estimator_parses() -> None:
    parsed = [parse_estimator(name) for name in DEFAULT_ESTIMATORS.split(",")]
    assert {p.kind for p in parsed if p.kind is not None} == {m for m in PreconditionMode
                                                              if m is not PreconditionMode.INVERSE}
    assert {p.method for p in parsed} == {Method.GRADIENT, Method.UNLEARNING, Method.HYBRID, Method.BM25,
                                          Method.EMBEDDING}


def test_families_set_scoring_and_checkpoints() -> None:
    assert parse_estimator("gradient-ip/ekfac").mode is ScoreMode.INNER_PRODUCT
    assert parse_estimator("tracin/block").tracin and parse_estimator("tracin/block").kind is PreconditionMode.BLOCK
    assert parse_estimator("tracin/block").mode is ScoreMode.COSINE
    assert parse_estimator("tracin-ip/block").mode is ScoreMode.INNER_PRODUCT
    assert parse_estimator("tracin-ip/block").tracin
    assert parse_estimator("bm25").kind is None


@pytest.mark.parametrize("name", ["gradient/bogus", "gradient", "nonsense", "bm25/block",
                                  "gradient/block@8"])
def test_unknown_names_exit_with_the_choices(name: str) -> None:
    with pytest.raises(SystemExit, match="gradient"):
        parse_estimator(name)
