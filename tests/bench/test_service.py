"""bench/service.py's server settings: the bench's simulated users all send from one address."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.service import server_env
from service.settings import Settings


def test_the_bench_server_admits_as_many_model_queries_from_one_address_as_the_bench_sends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default limit (2 a client), concurrency 8 from 127.0.0.1 got 429s and the make-bench section failed.
    The settings are read from the environment the server is started with, as the server reads them."""
    env = server_env(tmp_path / "index", 8, batch_window_ms=0.0)
    for key, value in env.items():
        if key.startswith("HEADWATER_"):
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.max_model_queries_per_client == 8 and settings.batch_window_ms == 0.0
    assert settings.index == tmp_path / "index" and env["HF_HUB_OFFLINE"] == "1"
    assert server_env(tmp_path, 0)["HEADWATER_MAX_MODEL_QUERIES_PER_CLIENT"] == "1"  # the setting's floor


def test_batching_is_left_at_the_servers_default_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_BATCH_WINDOW_MS", raising=False)
    assert "HEADWATER_BATCH_WINDOW_MS" not in server_env(tmp_path, 1)
