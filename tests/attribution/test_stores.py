"""Every vector-store kind finds the rows brute force would; the registry's entries check, build and open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.errors import ConfigError
from attribution.stores import STORES, MemmapStore, StoreKind, store_kind
from attribution.vectors import SearchSettings


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None) -> list[int]:
    scores = (vectors.reshape(len(vectors), -1, vectors.shape[-1]) @ query).max(axis=1)
    rows = np.arange(len(vectors)) if allowed is None else np.sort(allowed)
    return rows[np.argsort(-scores[rows], kind="stable")][:k].tolist()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 70), windows=st.sampled_from([None, 1, 3]), k=st.integers(1, 12),
       filtered=st.booleans(), queries=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_memmap_store_is_brute_force(n: int, windows: int | None, k: int, filtered: bool, queries: int,
                                     seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 8) if windows is None else (n, windows, 8)).astype(np.float32)
    asked = rng.standard_normal((queries, 8)).astype(np.float32)
    allowed = [np.sort(rng.choice(n, size=max(1, n // 2), replace=False)) if filtered else None for _ in asked]
    store = MemmapStore(vectors)
    for query, found, only in zip(asked, store.search_many(asked, k, allowed), allowed, strict=True):
        assert found.rows.tolist() == brute_force(vectors, query, k, only)
        assert store.search(query, k, only).rows.tolist() == found.rows.tolist()
        exact = store.vectors(found.rows) @ query
        np.testing.assert_allclose(found.scores, exact[np.arange(len(found.rows)), found.windows], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(store.score_all(query), (vectors.reshape(n, -1, 8) @ query).max(axis=1),
                                   rtol=1e-5, atol=1e-5)
    assert store.search(asked[0], k, np.zeros(0, np.int64)).rows.tolist() == []


def test_memmap_store_reads_blocks_of_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("attribution.stores.BLOCK_ROWS", 7)  # many blocks over 50 rows
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, 2, 16)).astype(np.float16)
    np.save(tmp_path / "vectors.npy", vectors)
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    query = rng.standard_normal(16).astype(np.float32)
    found = MemmapStore(mapped).search(query, 5)
    assert found.rows.tolist() == brute_force(vectors.astype(np.float32), query, 5, None)


@pytest.mark.parametrize("kind", list(STORES))
def test_every_kind_builds_and_opens_the_same_answers(kind: StoreKind, tmp_path: Path) -> None:
    store = STORES[kind]
    assert store.kind is kind and store_kind(kind.value) is kind
    if store.unavailable() is not None:
        with pytest.raises(ConfigError, match=f"--store {kind.value}"):
            store.check("Flat", 16, 100, SearchSettings())
        return
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((120, 3, 16)).astype(np.float16)
    np.save(tmp_path / "vectors.npy", vectors)
    store.check("Flat", 16, 360, SearchSettings())
    assert store.build(np.load(tmp_path / "vectors.npy", mmap_mode="r"), "Flat", SearchSettings(), tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["vectors.npy", *([store.file] if store.file else [])])
    opened = store.open(tmp_path, np.load(tmp_path / "vectors.npy", mmap_mode="r"), SearchSettings())
    query = rng.standard_normal(16).astype(np.float32)
    assert opened.search(query, 10).rows.tolist() == brute_force(vectors.astype(np.float32), query, 10, None)


def test_bad_store_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="store must be one of"):
        store_kind("parquet")
    with pytest.raises(ConfigError, match="applies to --store faiss"):
        STORES[StoreKind.MEMMAP].check("IVF4,Flat", 16, 1000, SearchSettings())
    with pytest.raises(ConfigError, match="cannot index"):
        STORES[StoreKind.FAISS].check("IVF4,PQ7", 16, 1000, SearchSettings())
