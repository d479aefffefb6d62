"""Index configs: local paths are stored absolute (the index opens from any directory); hub ids are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.config import IndexConfig, IndexMismatchError, check_same


def test_local_paths_become_absolute_and_hub_ids_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    local = IndexConfig(model="model", data="data/document", normalizer=None).with_absolute_paths()
    assert local.model == str(tmp_path / "model") and local.data == str(tmp_path / "data" / "document")
    hub = IndexConfig(model="EleutherAI/pythia-70m-deduped", data="hf:monology/pile-uncopyrighted")
    assert hub.with_absolute_paths() == hub
    # an index saved with relative paths (older builds) still matches the same request made absolute
    check_same(IndexConfig(model="model", data="data/document"), local, tmp_path)
    with pytest.raises(IndexMismatchError, match="model"):
        check_same(IndexConfig(model="other", data="data/document"), local, tmp_path)
