"""A notebook-sized API: a model, a set of training examples, and ``attribute``.

    from indexer.store import open_index
    session = open_index("demo-data/index")          # a published index, read-only
    for result in session.attribute("Joachim Fairweather studied at", " the University of Lissand", k=10):
        print(result.rank, result.score, result.metadata["step"], result.text[:80])

``AttributionSession.from_examples`` sketches examples in memory instead (small corpora,
experiments; ``evaluation.demo_session.demo_session`` does it for a built demo). The core knows nothing
of index directories or of the demo: the indexer and the demo build sessions through this class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attribution.config import AttributionConfig, CurvatureConfig, UnlearningConfig
from attribution.curvature import fit_curvature, is_prefit, new_statistics, prefit_curvature, row_sample
from attribution.embeddings import EMBED_CHUNK_TOKENS, TextEmbedder, chunk_count
from attribution.encoder import Checkpoint, GradientEncoder, load_checkpoints
from attribution.errors import ConfigError
from attribution.filters import Filters
from attribution.methods import METHODS
from attribution.models import load_tokenizer
from attribution.records import Example, Hit, Result
from attribution.retrievers import (
    BM25Retriever,
    EmbeddingRetriever,
    GradientRetriever,
    Method,
    Query,
    Retriever,
)
from attribution.rows import RowTable
from attribution.scoring import ScoreMode
from attribution.tasks import Instance, check_task
from attribution.vectors import FaissStore

log = logging.getLogger(__name__)


def parse_method(method: Method | str) -> Method:
    """A method name as the enum, or a ConfigError listing the choices."""
    try:
        return Method(method)
    except ValueError as err:
        raise ConfigError(f"unknown method {method!r}; choose one of {[m.value for m in Method]}") from err


class AttributionSession:
    """Model, encoders and the retrievers (one per ``Method``) over one set of training examples.

    ``texts`` is anything with ``__getitem__`` by row (a list in memory, a DuckDB-backed
    lookup for a stored index); ``builders`` make the lexical and embedding retrievers on
    first use.
    """

    def __init__(self, encoder: GradientEncoder, ids: np.ndarray, metadata: RowTable, gradient: GradientRetriever,
                 texts, builders: dict[Method, Callable[[], Retriever]],
                 config: AttributionConfig | None = None) -> None:
        self.encoder, self.ids, self.metadata, self.texts = encoder, ids, RowTable.of(metadata), texts
        self.config = config or AttributionConfig()
        self.retrievers: dict[Method, Retriever] = {Method.GRADIENT: gradient}
        self.builders = builders
        """How the retrievers the index provides (BM25, embedding) are made."""

    manifest: Any = None
    """The index manifest (``indexer.manifest.Manifest``) when the indexer opened the session from a stored index."""

    def __len__(self) -> int:
        return len(self.ids)

    def retriever(self, method: Method | str) -> Retriever:
        """The retriever for a method, built on first use (``attribution.methods.METHODS`` says how)."""
        method = parse_method(method)
        if method not in self.retrievers:
            self.retrievers[method] = METHODS[method].build(self)
        return self.retrievers[method]

    @property
    def gradient(self) -> GradientRetriever:
        return self.retrievers[Method.GRADIENT]

    def attribute(self, prompt: str, completion: str | None = None, k: int = 10, method: Method | str = "gradient",
                  filters: Filters | None = None, controls: Iterable[tuple[str, str | None]] = (),
                  unlearning: UnlearningConfig | None = None) -> list[Result]:
        """The top-k training examples for ``prompt`` → ``completion``, best first; ``unlearning`` overrides the
        session's settings of the ``unlearning`` method for this query."""
        if not prompt.strip():
            raise ConfigError("the prompt is empty")
        method = parse_method(method)
        if completion is None:  # every method attributes the model's own continuation
            completion = self.encoder.greedy_completion(prompt)
        query = Query(prompt, completion, list(controls), unlearning)
        return self._results(self.retriever(method).search(query, k, filters), query)

    def attribute_task(self, instances: Sequence[Instance], k: int = 10, method: Method | str = "gradient",
                       filters: Filters | None = None, control_task: Sequence[Instance] = (),
                       unlearning: UnlearningConfig | None = None) -> list[Result]:
        """The top-k training examples for a task — several instances of one behaviour — best first, each naming the
        instances it serves most (``Result.instances``, indices into ``instances``); ``control_task``: instances of
        a neighbouring task whose direction is taken out (``attribution.tasks.AGGREGATION`` says how each method
        aggregates). Missing completions become the model's own."""
        check_task(instances, control_task)
        method = parse_method(method)
        if control_task and not METHODS[method].takes_controls:
            raise ConfigError(f"method {method.value} ignores controls; drop the control task or use "
                              + ", ".join(m.value for m, spec in METHODS.items() if spec.takes_controls))
        first, *more = instances
        query = Query(first.prompt, first.completion, [(c.prompt, c.completion) for c in control_task], unlearning,
                      more=[(i.prompt, i.completion) for i in more], task=True)
        return self._results(self.retriever(method).search(query, k, filters), query)

    def attribute_many(self, queries: Sequence[tuple[str, str]], k: int = 10,
                       filters: Sequence[Filters | None] | None = None) -> list[list[Result]]:
        """:meth:`attribute` by the gradient method of several (prompt, completion) pairs, sketched in one pass."""
        asked = [Query(prompt, completion) for prompt, completion in queries]
        if any(not q.prompt.strip() for q in asked):
            raise ConfigError("the prompt is empty")
        found = self.gradient.search_many(asked, k, filters or [None] * len(asked))
        texts = iter(self.texts_of([h.row for hits in found for h in hits]))  # every query's texts in one lookup
        return [self._results(hits, query, [next(texts) for _ in hits])
                for hits, query in zip(found, asked, strict=True)]

    def matched_text(self, result: Result) -> str:
        """The part of a result's text that matched the query: its best window (gradient on a windowed index,
        embedding's best chunk, unlearning's window of largest loss increase), decoded; the whole text without one."""
        if result.token_span is None:
            return result.text
        tokenizer = self.encoder.tokenizer
        start, end = result.token_span
        return tokenizer.decode(tokenizer.encode(result.text, add_special_tokens=False)[start:end])

    def texts_of(self, rows: list[int]) -> list[str]:
        """The texts of indexed rows, in order (a stored index fetches them in one query)."""
        many = getattr(self.texts, "many", None)
        return many(rows) if many is not None else [self.texts[r] for r in rows]

    def _results(self, hits: list[Hit], query: Query, texts: list[str] | None = None) -> list[Result]:
        texts = self.texts_of([h.row for h in hits]) if texts is None else texts
        return [Result.from_hit(hit, rank=rank + 1, example_id=int(self.ids[hit.row]), text=texts[rank],
                                metadata=self.metadata[hit.row], completion=query.completion or "")
                for rank, hit in enumerate(hits)]

    @classmethod
    def from_examples(cls, model_path: str | Path, examples: Iterable[Example],
                      config: AttributionConfig | None = None, tokenizer_path: str | Path | None = None,
                      device: str = "cpu", embedding_model: str | None = None,
                      batch_size: int = 32) -> AttributionSession:
        """Sketch every example with the model (and its checkpoints) and build the retrievers in memory."""
        config = config or AttributionConfig()
        examples = list(examples)
        if not examples:
            raise ConfigError("no training examples to attribute to")
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        tokenizer = load_tokenizer(tokenizer_path or model_path)
        checkpoints = load_checkpoints(model_path, config.revisions, config.sketch, config.normalizer, device)
        rows = [ex.token_ids.tolist() for ex in examples]
        statistics = [new_statistics(config.curvature) for _ in checkpoints]
        raw = None if is_prefit(config.curvature) else sketch_all(  # prefit kinds sketch after their fit
            GradientEncoder(checkpoints, tokenizer), rows, config.window, batch_size, statistics)
        encoder, vectors = fitted_vectors(checkpoints, tokenizer, rows, raw, config.curvature, config.scoring.mode,
                                          config.window, statistics, config.revision_weights, batch_size)
        texts = [ex.text or tokenizer.decode(ex.token_ids.tolist()) for ex in examples]
        metadata = RowTable.from_dicts([ex.metadata for ex in examples])
        gradient = GradientRetriever(encoder, FaissStore(vectors), metadata, config.window)

        def embedding() -> EmbeddingRetriever:
            embedder = TextEmbedder(embedding_model)
            chunks = chunk_count(max(len(r) for r in rows))
            if chunks == 1:
                return EmbeddingRetriever(embedder, FaissStore.index_only(embedder.embed(texts)), metadata)
            vectors = embedder.embed_rows(rows, texts, tokenizer.decode, chunks)  # long rows: by their best chunk
            return EmbeddingRetriever(embedder, FaissStore(vectors), metadata, EMBED_CHUNK_TOKENS,
                                      [len(r) for r in rows])

        builders = {Method.BM25: lambda: BM25Retriever(texts, metadata), Method.EMBEDDING: embedding}
        ids = np.asarray([ex.example_id for ex in examples], dtype=np.int64)
        return cls(encoder, ids, metadata, gradient, texts, builders, config)


def sketch_all(encoder: GradientEncoder, rows: list[list[int]], window: int | None,
               batch_size: int = 32, statistics: list | None = None) -> list[torch.Tensor]:
    """Raw sketches of every row, per checkpoint, computed once in batches (gathering ``statistics``, one per
    checkpoint, for the curvature fit)."""
    parts: list[list[torch.Tensor]] = [[] for _ in encoder.checkpoints]
    for start in range(0, len(rows), batch_size):
        for index, raw in enumerate(encoder.raw_rows(rows[start : start + batch_size], window, statistics)):
            parts[index].append(raw)
    return [torch.cat(p) for p in parts]


def fitted_vectors(checkpoints: list[Checkpoint], tokenizer, rows: list[list[int]], raw: list[torch.Tensor] | None,
                   curvature: CurvatureConfig, mode: ScoreMode | str = ScoreMode.COSINE, window: int | None = None,
                   statistics: list | None = None, weights: Sequence[float] | None = None,
                   batch_size: int = 32) -> tuple[GradientEncoder, np.ndarray]:
    """An encoder over ``checkpoints`` with ``curvature`` fitted (each checkpoint's preconditioner set) and the
    training vectors of ``rows`` for it, from raw sketches already taken (``raw``, one per checkpoint, with the
    ``statistics`` of that pass): one sketch pass serves every curvature kind and scoring mode, except the kinds
    that change the training sketches themselves (kfac_whitened), which sketch the rows after their fit (``raw``
    may then be None)."""
    encoder = GradientEncoder(checkpoints, tokenizer, mode, weights)
    for ckpt in checkpoints:
        ckpt.preconditioner = prefit_curvature(curvature, ckpt.sketcher, row_sample(rows))
    if any(ckpt.preconditioner is not None for ckpt in checkpoints):
        raw = sketch_all(encoder, rows, window, batch_size)
    else:
        for ckpt, sketches, stats in zip(checkpoints, raw, statistics or [None] * len(checkpoints), strict=True):
            ckpt.preconditioner = fit_curvature([sketches], ckpt.sketcher.dim, curvature, sketcher=ckpt.sketcher,
                                                statistics=stats, rows=row_sample(rows))
    return encoder, encoder.prepare_rows(raw).numpy().astype("float32")
