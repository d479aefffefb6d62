"""Shared fixtures: a tiny demo (corpus, tokenizer, data, model) built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import transformers  # noqa: E402 - after the environment is set

transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo built with the 'tiny' preset (seconds on CPU)."""
    from demo.build import build_demo
    from evaluation.demo_config import TINY

    out = tmp_path_factory.mktemp("tiny-demo")
    build_demo(out, TINY)
    return out


@pytest.fixture(scope="session")
def tiny_index(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published index of every tiny-demo row (k=4, 16-token windows); read-only for the tests sharing it."""
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.runner import Rank

    out = tmp_path_factory.mktemp("tiny-index") / "index"
    config = IndexConfig.create(str(tiny_demo / "model"), str(tiny_demo / "data" / "document"), k=4, window=16,
                                shard_size=64)
    build_index(config, out, Rank())
    return out
