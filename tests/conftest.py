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
    from demo.config import TINY

    out = tmp_path_factory.mktemp("tiny-demo")
    build_demo(out, TINY)
    return out
