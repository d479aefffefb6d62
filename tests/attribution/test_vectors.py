"""The vector store finds the rows brute force would, with filters, windows and approximate FAISS indices."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.errors import ConfigError
from attribution.vectors import FaissStore, SearchSettings, brute_force_top, build_faiss_index


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None) -> list[int]:
    scores = (vectors.reshape(len(vectors), -1, vectors.shape[-1]) @ query).max(axis=1)
    rows = np.arange(len(vectors)) if allowed is None else np.sort(allowed)
    return rows[np.argsort(-scores[rows], kind="stable")][:k].tolist()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), windows=st.sampled_from([None, 1, 3]), k=st.integers(1, 10),
       filtered=st.booleans(), seed=st.integers(0, 10_000))
def test_exact_store_matches_brute_force(n: int, windows: int | None, k: int, filtered: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (n, 8) if windows is None else (n, windows, 8)
    vectors = rng.standard_normal(shape).astype(np.float32)
    query = rng.standard_normal(8).astype(np.float32)
    allowed = np.sort(rng.choice(n, size=max(1, n // 2), replace=False)) if filtered else None
    found = FaissStore(vectors).search(query, k, allowed)
    assert found.rows.tolist() == brute_force(vectors, query, k, allowed)
    exact = FaissStore(vectors).vectors(found.rows) @ query
    np.testing.assert_allclose(found.scores, exact[np.arange(len(found.rows)), found.windows], rtol=1e-5)
    np.testing.assert_allclose(FaissStore(vectors).score_all(query), exact_all := (
        vectors.reshape(n, -1, 8) @ query).max(axis=1), rtol=1e-5)
    assert exact_all.shape == (n,)


def test_approximate_index_is_reranked_exactly_and_filters_work() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    index, recall = build_faiss_index(vectors, "IVF4,Flat")
    assert recall is not None and 0 <= recall <= 1
    store = FaissStore(vectors, index)
    store.index.nprobe = 4  # every list: candidates are exact, and the re-rank must keep them exact
    query = vectors[7]
    found = store.search(query, 5)
    assert found.rows.tolist() == brute_force(vectors, query, 5, None)
    allowed = np.arange(100, 200)
    assert set(store.search(query, 5, allowed).rows.tolist()) <= set(allowed.tolist())


def test_index_only_store_keeps_faiss_scores_and_reconstructs(tmp_path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((30, 6)).astype(np.float32)
    store = FaissStore.index_only(vectors)
    store.save_index(tmp_path / "e.faiss")
    reopened = FaissStore.open(tmp_path / "e.faiss")
    assert (reopened.rows, reopened.windows, reopened.dim) == (30, 1, 6)
    found = reopened.search(vectors[3], 4)
    assert found.rows.tolist() == brute_force(vectors, vectors[3], 4, None)
    np.testing.assert_allclose(reopened.vectors(np.array([3, 5]))[:, 0], vectors[[3, 5]])
    with pytest.raises(ValueError, match="needs vectors"):
        FaissStore(None, None)


FACTORIES = ["Flat", "IVF8,Flat", "IVF8,PQ4x4", "OPQ4,IVF8,PQ4x4", "HNSW8", "IVF8,SQ8"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_every_index_type_filters_reranks_and_keeps_its_nprobe(factory: str, tmp_path) -> None:
    """A filter holds on every index type (IVF, PQ, a pre-transform, HNSW); results are re-scored exactly; the
    recorded nprobe is what a reopened IVF index searches with; a float16 memmap is indexed piece by piece."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 2, 16)).astype(np.float16)  # windows, stored as the merge stores them
    np.save(tmp_path / "v.npy", vectors)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    settings = SearchSettings(nprobe=8, train_sample=400, rerank=8)
    index, recall = build_faiss_index(mapped, factory, settings=settings)
    assert (recall is None) == (factory == "Flat") and (recall is None or 0 <= recall <= 1)
    FaissStore(mapped, index).save_index(tmp_path / "g.faiss")
    store = FaissStore.open(tmp_path / "g.faiss", tmp_path / "v.npy", settings)
    if "IVF" in factory:
        assert faiss.extract_index_ivf(store.index).nprobe == 8  # every list: candidates are exact
    query = np.asarray(vectors[11, 1], dtype=np.float32)
    allowed = np.arange(200, 320)
    found = store.search(query, 5, allowed)
    assert len(found.rows) == 5 and set(found.rows.tolist()) <= set(allowed.tolist())
    exact = (np.asarray(vectors[found.rows], dtype=np.float32) @ query).max(axis=1)
    np.testing.assert_allclose(found.scores, exact, rtol=1e-5)
    if factory in ("Flat", "IVF8,Flat"):  # exact candidates: the exact top 5 of the allowed rows
        whole = (np.asarray(vectors[allowed], dtype=np.float32) @ query).max(axis=1)
        assert found.rows.tolist() == allowed[np.argsort(-whole, kind="stable")[:5]].tolist()


@pytest.mark.parametrize(("factory", "message"), [("bogus", "could not parse"), ("IVF4,PQ5", "multiple of"),
                                                  ("IVF4096,Flat", "needs at least 4,096 training vectors")])
def test_a_factory_faiss_refuses_is_a_clear_error(factory: str, message: str) -> None:
    vectors = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    with pytest.raises(ConfigError, match=message):
        build_faiss_index(vectors, factory)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_many_queries_in_one_search_find_what_each_finds_alone(factory: str) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((500, 3, 12)).astype(np.float32)
    index, _ = build_faiss_index(vectors, factory, settings=SearchSettings(nprobe=8, train_sample=400))
    store = FaissStore(vectors, index, SearchSettings(nprobe=8))
    queries = rng.standard_normal((5, 12)).astype(np.float32)
    allowed = [None, np.arange(50, 90), None, None, np.arange(400, 500)]
    for query, filt, together in zip(queries, allowed, store.search_many(queries, 7, allowed), strict=True):
        alone = store.search(query, 7, filt)
        assert together.rows.tolist() == alone.rows.tolist() and together.windows.tolist() == alone.windows.tolist()
        np.testing.assert_allclose(together.scores, alone.scores, rtol=1e-6)


@given(n=st.integers(1, 50), k=st.integers(1, 12), block=st.integers(1, 20), seed=st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_brute_force_top_in_blocks_is_the_full_sort(n: int, k: int, block: int, seed: int) -> None:
    """Blockwise top-k (memory independent of the rows) keeps the k best scores, best first, each row once (which of
    several tied rows is kept is not specified)."""
    rng = np.random.default_rng(seed)
    vectors = rng.integers(-2, 3, (n, 4)).astype(np.float16)  # small integers: exact ties happen
    queries = rng.integers(-2, 3, (3, 4)).astype(np.float32)
    found = brute_force_top(vectors, queries, k, block=block)
    scores = queries @ vectors.astype(np.float32).T
    assert found.shape == (3, min(k, n))
    for q in range(3):
        assert len(set(found[q].tolist())) == min(k, n)
        assert scores[q, found[q]].tolist() == sorted(scores[q], reverse=True)[: min(k, n)]
