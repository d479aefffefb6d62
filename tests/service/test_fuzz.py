"""Fuzz every endpoint from the generated OpenAPI schema (schemathesis): no input may cause a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from indexer.build import build_index
from indexer.config import IndexConfig
from indexer.runner import Rank
from tests.service.conftest import uvicorn_server


@pytest.fixture(scope="module")
def ivf_server(tiny_demo: Path, tmp_path_factory) -> Iterator[str]:
    """A server over an approximate (IVF-PQ, re-ranked) index of the tiny demo."""
    out = tmp_path_factory.mktemp("ivf") / "index"
    config = IndexConfig.create(str(tiny_demo / "model"), str(tiny_demo / "data" / "document"), k=4, window=16,
                                shard_size=64, faiss_factory="IVF4,PQ4x4", nprobe=2)
    build_index(config, out, Rank())
    with uvicorn_server(out, out.parent / "server.log") as url:
        yield url


@pytest.mark.parametrize("which", ["server", "ivf_server"])
def test_no_server_errors(which: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(which)
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            response = case.call(timeout=120)
            calls.append(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}")
            if response.status_code >= 400:
                assert "error" in response.json()

        check()
    assert len(calls) >= 6 * 10  # every operation was really exercised
    assert any(code == 200 for code in calls) and any(400 <= code < 500 for code in calls)
