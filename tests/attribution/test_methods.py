"""The method registry: every ``Method`` has one entry, each entry builds a retriever that answers, and a method's
options are its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from attribution.config import AttributionConfig, CurvatureConfig
from attribution.methods import METHODS, OPTIONS, owners
from attribution.retrievers import Method, Query
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from evaluation.demo_session import demo_session


@pytest.fixture(scope="module")
def session(tiny_demo: Path) -> AttributionSession:
    return demo_session(tiny_demo, AttributionConfig(sketch=SketchConfig(k=4), curvature=CurvatureConfig(sample=64)))


def test_every_method_has_one_entry() -> None:
    assert set(METHODS) == set(Method)
    assert OPTIONS == ("steps", "budget", "candidates", "direction")
    assert all(owners(option) == [Method.UNLEARNING] for option in OPTIONS)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_entry_builds_a_retriever_that_answers(session: AttributionSession, method: Method) -> None:
    retriever = session.retriever(method)
    assert retriever is session.retriever(method.value)  # built once
    hits = retriever.search(Query("Ilse Varga was born in", " Tarnow"), 3)
    assert 1 <= len(hits) <= 3 and all(0 <= h.row < len(session) for h in hits)
