"""The vector store: where prepared vectors live and how the best rows for a query are found.

Retrievers talk to a :class:`VectorStore` and never to FAISS or to the raw vector array, so
a compressed store (IVF-PQ candidates with exact re-rank, say) is one new class here.
Today's :class:`FaissStore` keeps the vectors (a float16 memmap for a published index) next
to a FAISS inner-product index over them: exact ``IndexFlatIP`` by default; any other
``index_factory`` string proposes candidates that are re-scored exactly from the vectors.

Vectors are ``(n, D)`` or, for windowed sketches, ``(n, W, D)``: a row scores by its best window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from attribution.errors import ConfigError

BLOCK_ROWS = 4096
"""Rows scored per block when every row is scored (bounded memory on a memmap)."""


@dataclass
class Found:
    """Rows found for one query, best first: row positions, exact scores and each row's best window."""

    rows: np.ndarray
    scores: np.ndarray
    windows: np.ndarray


class VectorStore(Protocol):
    rows: int
    """Number of stored rows (examples)."""
    windows: int
    """Vectors per row (1 without windows)."""
    dim: int

    def search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Found:
        """The ``k`` best rows by inner product (best window), restricted to ``allowed`` row positions."""
        ...

    def search_many(self, vectors: np.ndarray, k: int, allowed: list[np.ndarray | None]) -> list[Found]:
        """:meth:`search` of several query vectors ``(Q, D)``, each with its own ``allowed`` rows."""
        ...

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Exact float32 vectors ``(len(rows), windows, dim)`` of the given rows (for re-ranking and evidence)."""
        ...

    def score_all(self, vector: np.ndarray) -> np.ndarray:
        """Exact best-window score of every row, ``(rows,)``."""
        ...


ADD_ROWS = 65536
"""Vectors converted to float32 and added to FAISS at a time: the merge never holds a float32 copy of them all."""


@dataclass(frozen=True)
class SearchSettings:
    """How an approximate FAISS index is trained and searched (recorded in the index config)."""

    nprobe: int = 16
    """IVF lists visited per query (FAISS's default of 1 misses most neighbours)."""
    train_sample: int = 65536
    """Vectors, evenly spaced, an approximate index trains on (a float32 copy of these only); at least 40 per IVF
    list."""
    rerank: int = 100
    """Candidates fetched per wanted result (× windows) and re-scored exactly from the stored vectors (4-bit codes
    cannot order a cluster's neighbours: ×4 found 0.39 of the top 10 at 10^6 synthetic vectors, ×100 all of them)."""


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Visit ``nprobe`` lists per query when ``index`` is (or wraps) an IVF index."""
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:  # not an IVF index
        pass


def build_faiss_index(vectors: np.ndarray, factory: str = "Flat", sample_queries: int = 100,
                      settings: SearchSettings | None = None) -> tuple[faiss.Index, float | None]:
    """A FAISS inner-product index over (window) vectors, added ``ADD_ROWS`` at a time (a float16 memmap is read
    and converted piece by piece); for non-flat ones, trained on ``settings.train_sample`` evenly spaced vectors,
    and recall@10 of the index alone (before the exact re-rank) against brute force on sample queries."""
    settings = settings or SearchSettings()
    dim = vectors.shape[-1]
    flat = vectors.reshape(-1, dim)  # a view: nothing is read yet
    total = len(flat)
    if factory == "Flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = new_faiss_index(factory, dim)
        picks = np.unique(np.linspace(0, total - 1, training_sample_size(index, total, settings)).astype(np.int64))
        check_trainable(factory, index, len(picks), total)
        index.train(np.ascontiguousarray(flat[picks], dtype=np.float32))
        set_nprobe(index, settings.nprobe)
    for start in range(0, total, ADD_ROWS):
        index.add(np.ascontiguousarray(flat[start : start + ADD_ROWS], dtype=np.float32))
    if factory == "Flat":
        return index, None
    picks = np.unique(np.linspace(0, total - 1, min(total, sample_queries)).astype(np.int64))
    queries = np.ascontiguousarray(flat[picks], dtype=np.float32)
    truth = brute_force_top(flat, queries, 10)
    _, approx = index.search(queries, 10)
    recall = float(np.mean([len(set(t) & set(a)) / 10 for t, a in zip(truth, approx, strict=True)]))
    return index, recall


def brute_force_top(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = ADD_ROWS) -> np.ndarray:
    """Rows of the ``k`` largest inner products of each query, best first, ``(queries, k)``: ``vectors`` (a
    memmap) is read ``block`` rows at a time and only each query's best ``k`` so far are kept, so memory is
    ``queries × (k + block)`` scores whatever the number of rows."""
    k = min(k, len(vectors))
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), block):
        scores = queries @ np.asarray(vectors[start : start + block], dtype=np.float32).T  # (queries, block)
        both_scores = np.concatenate([best_scores, scores], axis=1)
        both_rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + scores.shape[1]),
                                                                scores.shape)], axis=1)
        top = min(k, both_scores.shape[1])
        keep = np.argpartition(-both_scores, top - 1, axis=1)[:, :top]
        best_scores = np.take_along_axis(both_scores, keep, 1)
        best_rows = np.take_along_axis(both_rows, keep, 1)
    order = np.lexsort((best_rows, -best_scores), axis=1)  # best first; ties by row
    return np.take_along_axis(best_rows, order, 1)


def new_faiss_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index of ``factory``, or a ConfigError saying why FAISS refuses it."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).strip().rsplit(": ", 1)[-1] or "refused"
        raise ConfigError(f"--faiss-factory {factory!r} cannot index {dim}-dimensional vectors ({reason}); e.g. "
                          f"Flat, IVF256,Flat or IVF256,PQ{next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0)}"
                          ) from err


def ivf_lists(index: faiss.Index) -> int:
    """IVF lists of ``index`` (0 when it is not, and wraps no, IVF index)."""
    try:
        return faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        return 0


def min_training_vectors(index: faiss.Index) -> int:
    """The fewest vectors FAISS trains ``index`` on: k-means needs a point per cluster, i.e. per IVF list, per
    product-quantizer centroid (2^bits) and, for OPQ, per centroid of the 8-bit PQ it rotates for."""
    typed = faiss.downcast_index(index)  # a view: ``index`` must stay referenced, it owns the C++ object
    need = 1
    if isinstance(typed, faiss.IndexPreTransform):
        for i in range(typed.chain.size()):
            if isinstance(faiss.downcast_VectorTransform(typed.chain.at(i)), faiss.OPQMatrix):
                need = 256
        return max(need, min_training_vectors(typed.index))
    for wrapped in ("storage", "base_index"):  # HNSW over codes; a Refine around another index
        inner = getattr(typed, wrapped, None)
        if isinstance(inner, faiss.Index):
            need = max(need, min_training_vectors(inner))
    quantizer = getattr(typed, "pq", None)
    return max(need, ivf_lists(typed), quantizer.ksub if quantizer is not None else 1)


def training_sample_size(index: faiss.Index, total: int, settings: SearchSettings) -> int:
    """Vectors an approximate index of ``total`` trains on: ``settings.train_sample``, at least 40 per IVF list
    (FAISS's k-means asks ~39), at most all of them."""
    return min(total, max(settings.train_sample, 40 * ivf_lists(index)))


def check_factory_fits(factory: str, dim: int, total: int, settings: SearchSettings) -> None:
    """Refuse (ConfigError), before any work, a factory FAISS cannot build over ``total`` vectors of ``dim``."""
    if factory == "Flat":
        return
    index = new_faiss_index(factory, dim)
    check_trainable(factory, index, training_sample_size(index, total, settings), total)


def check_trainable(factory: str, index: faiss.Index, sample: int, total: int) -> None:
    """Refuse (ConfigError) a factory that cannot train on ``sample`` vectors of the ``total`` an index will hold."""
    need = min_training_vectors(index)
    if sample >= need:
        return
    short = "--train-sample" if total >= need else "the index"
    raise ConfigError(f"--faiss-factory {factory} needs at least {need:,} training vectors (one per IVF list and per "
                      f"PQ centroid) and {short} gives {sample:,}; use fewer lists or PQ bits (about √N lists: "
                      f"IVF{max(1, int(total**0.5))},Flat), Flat (exact, fine below ~10^6 rows), or index more data")


def search_params(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters carrying ``selector`` of the type ``index`` takes: IVF (with its nprobe), HNSW (with its
    efSearch), a pre-transform (OPQ…) wrapping either, or plain."""
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_params(faiss.downcast_index(index.index), selector)
        return faiss.SearchParametersPreTransform(sel=selector, index_params=inner)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


def faiss_search(index: faiss.Index, vector: np.ndarray, fetch: int,
                 allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product search of one vector, restricted to ``allowed`` FAISS ids when given."""
    params = None
    if allowed is not None:
        params = search_params(index, faiss.IDSelectorBatch(allowed.astype("int64")))
        fetch = min(fetch, len(allowed))
    scores, rows = index.search(np.ascontiguousarray(vector[None], dtype="float32"), max(fetch, 1), params=params)
    keep = rows[0] >= 0
    return scores[0][keep], rows[0][keep]


class FaissStore:
    """Vectors plus a FAISS index over them; exact scores come from the vectors when they are kept.

    ``vectors=None`` keeps only the index (it must then be exact, e.g. the embedding index's
    ``IndexFlatIP``): scores are FAISS's own.
    """

    def __init__(self, vectors: np.ndarray | None, index: faiss.Index | None = None,
                 settings: SearchSettings | None = None) -> None:
        if vectors is None and index is None:
            raise ValueError("a FaissStore needs vectors, an index, or both")
        self._vectors = None if vectors is None else (vectors if vectors.ndim == 3 else vectors[:, None, :])
        if index is None:
            index, _ = build_faiss_index(self._vectors)
        self.index = index
        self.settings = settings or SearchSettings()
        set_nprobe(self.index, self.settings.nprobe)
        if self._vectors is not None:
            self.rows, self.windows, self.dim = self._vectors.shape
        else:
            self.rows, self.windows, self.dim = index.ntotal, 1, index.d

    @classmethod
    def index_only(cls, vectors: np.ndarray) -> FaissStore:
        """An exact FAISS index over ``vectors`` without keeping them (scores are FAISS's own)."""
        return cls(None, build_faiss_index(vectors)[0])

    @classmethod
    def open(cls, index_path: Path, vectors_path: Path | None = None,
             settings: SearchSettings | None = None) -> FaissStore:
        """A stored index (and its vectors, memory-mapped read-only), searched with ``settings``."""
        vectors = np.load(vectors_path, mmap_mode="r") if vectors_path is not None else None
        return cls(vectors, faiss.read_index(str(index_path)), settings)

    def save_index(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @property
    def exact(self) -> bool:
        return isinstance(self.index, faiss.IndexFlat)

    def search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Found:
        if self._vectors is None:
            scores, rows = faiss_search(self.index, vector, k, allowed)
            return Found(rows.astype(np.int64), scores, np.zeros(len(rows), dtype=np.int64))
        windowed = None if allowed is None else (allowed[:, None] * self.windows + np.arange(self.windows)).ravel()
        # Candidates from FAISS (k·W windows hold at least k rows; approximate indices fetch more),
        # then exact scores of each candidate's best window from the stored vectors.
        _, flat = faiss_search(self.index, vector, self._fetch(k), windowed)
        return self._rerank(vector, flat, k)

    def search_many(self, vectors: np.ndarray, k: int, allowed: list[np.ndarray | None]) -> list[Found]:
        """Unfiltered queries share one FAISS search (the stored matrix is read once for all of them: a flat
        search is bound by memory bandwidth, not arithmetic); filtered ones are searched one by one."""
        found: list[Found | None] = [None] * len(vectors)
        plain = [i for i, a in enumerate(allowed) if a is None]
        if plain and self._vectors is not None:
            queries = np.ascontiguousarray(vectors[plain], dtype=np.float32)
            _, candidates = self.index.search(queries, self._fetch(k))
            for i, flat in zip(plain, candidates, strict=True):
                found[i] = self._rerank(vectors[i], flat[flat >= 0], k)
        return [f if f is not None else self.search(v, k, a) for f, v, a in zip(found, vectors, allowed, strict=True)]

    def _fetch(self, k: int) -> int:
        return k * self.windows * (1 if self.exact else self.settings.rerank)

    def _rerank(self, vector: np.ndarray, flat: np.ndarray, k: int) -> Found:
        rows = np.unique(flat // self.windows)
        window_scores = self.vectors(rows) @ vector  # (r, W)
        best_window = window_scores.argmax(axis=1)
        best = window_scores[np.arange(len(rows)), best_window]
        order = np.argsort(-best, kind="stable")[:k]
        return Found(rows[order], best[order], best_window[order])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        if self._vectors is None:
            return np.stack([self.index.reconstruct(int(r)) for r in rows])[:, None, :]
        return np.asarray(self._vectors[rows], dtype=np.float32)

    def score_all(self, vector: np.ndarray) -> np.ndarray:
        scores = np.empty(self.rows, dtype=np.float32)
        for start in range(0, self.rows, BLOCK_ROWS):
            block = self.vectors(np.arange(start, min(start + BLOCK_ROWS, self.rows)))
            scores[start : start + BLOCK_ROWS] = (block @ vector).max(axis=1)
        return scores
