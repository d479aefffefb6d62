"""Shared by the evaluation tests: the tiny index, a session on it and the facts with a gold row in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from attribution.session import AttributionSession
from evaluation.facts import FactSelection, load_demo_facts, select_facts
from indexer.store import open_index


@pytest.fixture(scope="module")
def index(tiny_index: Path) -> Path:
    return tiny_index


@pytest.fixture(scope="module")
def session(index: Path) -> AttributionSession:
    return open_index(index)


@pytest.fixture(scope="module")
def selection(session: AttributionSession) -> FactSelection:
    """Facts with a gold row in the index (the tiny model gets none whole, so not only known ones)."""
    return select_facts(session, load_demo_facts(session), known_only=False)
