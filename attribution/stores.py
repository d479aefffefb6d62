"""Vector-store kinds: how an index's gradient vectors are searched, built, saved and opened.

Every kind keeps the vectors themselves (``vectors.npy``, float16, memory-mapped) and differs in what
it puts beside them. One class per kind with the :class:`StoreKind`-keyed members below; :data:`STORES`
is the registry. To add a kind, write its class (here, or in a module of its own) and add one line to
:data:`STORES`; ``IndexConfig.storage.store`` records the kind and ``headwater index build --store`` picks it.

- ``faiss`` (default): a FAISS inner-product index (``--faiss-factory``: exact ``Flat``, or an approximate
  one re-ranked exactly from the vectors).
- ``memmap``: nothing beside the vectors: every query scores every row exactly, block by block, from the
  memory-mapped float16 file (no index to build, and no float32 copy in memory or on disk: the flat FAISS
  index holds one, twice the vectors' bytes).
- ``faiss-gpu``: the ``faiss`` store, searched on the GPUs where ``faiss`` was built with GPU support.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Protocol

import faiss
import numpy as np

from attribution.errors import ConfigError
from attribution.vectors import (
    BLOCK_ROWS,
    FaissStore,
    Found,
    SearchSettings,
    VectorStore,
    build_faiss_index,
    check_factory_fits,
    new_faiss_index,
)


class StoreKind(StrEnum):
    FAISS = "faiss"
    MEMMAP = "memmap"
    FAISS_GPU = "faiss-gpu"


class Store(Protocol):
    """One kind of vector store: it checks its settings, builds and saves its files, and opens them for search."""

    kind: ClassVar[StoreKind]
    file: ClassVar[str | None]
    """What it writes beside ``vectors.npy`` in a build (None: nothing)."""

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this machine cannot use the kind (None: it can)."""
        ...

    @classmethod
    def check(cls, factory: str, dim: int, total: int | None, settings: SearchSettings) -> None:
        """Refuse (ConfigError), before any work, settings it cannot build over ``total`` vectors (None: not yet
        known) of ``dim``."""
        ...

    @classmethod
    def build(cls, vectors: np.ndarray, factory: str, settings: SearchSettings, build: Path) -> float | None:
        """Write its files for ``vectors`` into the build directory; the recall@10 of an approximate index against
        exact search, else None."""
        ...

    @classmethod
    def open(cls, build: Path, vectors: np.ndarray, settings: SearchSettings) -> VectorStore:
        """The searchable store of a build (``vectors``: its memory-mapped ``vectors.npy``)."""
        ...


class FaissKind:
    """A FAISS index beside the vectors (:class:`~attribution.vectors.FaissStore`)."""

    kind: ClassVar[StoreKind] = StoreKind.FAISS
    file: ClassVar[str | None] = "gradient.faiss"

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    @classmethod
    def check(cls, factory: str, dim: int, total: int | None, settings: SearchSettings) -> None:
        if factory == "Flat":
            return
        new_faiss_index(factory, dim)
        if total is not None:
            check_factory_fits(factory, dim, total, settings)

    @classmethod
    def build(cls, vectors: np.ndarray, factory: str, settings: SearchSettings, build: Path) -> float | None:
        index, recall = build_faiss_index(vectors, factory, settings=settings)
        faiss.write_index(index, str(build / cls.file))
        return recall

    @classmethod
    def open(cls, build: Path, vectors: np.ndarray, settings: SearchSettings) -> VectorStore:
        return FaissStore(vectors, faiss.read_index(str(build / cls.file)), settings)


def gpu_count() -> int:
    """GPUs FAISS can use here (0 for a CPU-only ``faiss``)."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


class FaissGpuKind(FaissKind):
    """The FAISS store, its index copied to every GPU when opened (built and saved on the CPU, so the same files
    open on a machine without GPUs as ``faiss``)."""

    kind: ClassVar[StoreKind] = StoreKind.FAISS_GPU

    @classmethod
    def unavailable(cls) -> str | None:
        if gpu_count() == 0:
            return "this faiss has no GPU support or sees no GPU (pip install faiss-gpu-cu12 on a CUDA machine)"
        return None

    @classmethod
    def check(cls, factory: str, dim: int, total: int | None, settings: SearchSettings) -> None:
        why = cls.unavailable()
        if why is not None:
            raise ConfigError(f"--store faiss-gpu: {why}; or use --store faiss")
        super().check(factory, dim, total, settings)

    @classmethod
    def open(cls, build: Path, vectors: np.ndarray, settings: SearchSettings) -> VectorStore:
        index = faiss.read_index(str(build / cls.file))
        if gpu_count() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        return FaissStore(vectors, index, settings)


class MemmapStore:
    """Exact search straight from the (memory-mapped) vectors: every row scored, ``BLOCK_ROWS`` at a time."""

    def __init__(self, vectors: np.ndarray) -> None:
        self._vectors = vectors if vectors.ndim == 3 else vectors[:, None, :]
        self.rows, self.windows, self.dim = self._vectors.shape

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._vectors[rows], dtype=np.float32)

    def score_all(self, vector: np.ndarray) -> np.ndarray:
        return self._best_windows(np.asarray(vector, dtype=np.float32)[None])[0][0]

    def search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Found:
        return self.search_many(np.asarray(vector)[None], k, [allowed])[0]

    def search_many(self, vectors: np.ndarray, k: int, allowed: list[np.ndarray | None]) -> list[Found]:
        """Every query scores every row in one pass over the file (the vectors are read once for all)."""
        scores, windows = self._best_windows(np.asarray(vectors, dtype=np.float32))
        return [self._top(s, w, k, a) for s, w, a in zip(scores, windows, allowed, strict=True)]

    def _best_windows(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each query's best-window score and window of every row, ``(Q, rows)`` each."""
        scores = np.empty((len(queries), self.rows), dtype=np.float32)
        windows = np.empty((len(queries), self.rows), dtype=np.int64)
        for start in range(0, self.rows, BLOCK_ROWS):
            block = self.vectors(np.arange(start, min(start + BLOCK_ROWS, self.rows)))  # (b, W, D)
            window_scores = np.einsum("bwd,qd->qbw", block, queries)
            windows[:, start : start + len(block)] = window_scores.argmax(axis=2)
            scores[:, start : start + len(block)] = window_scores.max(axis=2)
        return scores, windows

    @staticmethod
    def _top(scores: np.ndarray, windows: np.ndarray, k: int, allowed: np.ndarray | None) -> Found:
        rows = np.arange(len(scores)) if allowed is None else np.unique(np.asarray(allowed, dtype=np.int64))
        k = min(k, len(rows))
        if k == 0:
            return Found(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
        candidates = rows[np.argpartition(-scores[rows], k - 1)[:k]]
        order = np.lexsort((candidates, -scores[candidates]))  # best first; ties by row
        best = candidates[order]
        return Found(best, scores[best], windows[best])


class MemmapKind:
    """No index: :class:`MemmapStore` over the vectors."""

    kind: ClassVar[StoreKind] = StoreKind.MEMMAP
    file: ClassVar[str | None] = None

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    @classmethod
    def check(cls, factory: str, dim: int, total: int | None, settings: SearchSettings) -> None:
        if factory != "Flat":
            raise ConfigError(f"--faiss-factory {factory} applies to --store faiss; --store memmap scores every row "
                              "exactly from the vectors (leave --faiss-factory at Flat)")

    @classmethod
    def build(cls, vectors: np.ndarray, factory: str, settings: SearchSettings, build: Path) -> float | None:
        return None

    @classmethod
    def open(cls, build: Path, vectors: np.ndarray, settings: SearchSettings) -> VectorStore:
        return MemmapStore(vectors)


STORES: dict[StoreKind, type[Store]] = {
    StoreKind.FAISS: FaissKind,
    StoreKind.MEMMAP: MemmapKind,
    StoreKind.FAISS_GPU: FaissGpuKind,
}
"""Every vector-store kind (``--store``)."""


def store_kind(name: str | StoreKind) -> StoreKind:
    """The kind named ``name``, or a ConfigError listing them."""
    try:
        return StoreKind(name)
    except ValueError:
        raise ConfigError(f"store must be one of {[k.value for k in StoreKind]}, got {name!r}") from None
