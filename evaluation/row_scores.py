"""Scores of every training row of a demo for every LDS query: gradient, BM25 and embedding, cached.

LDS sums the scores of each subset's rows, and the subsets drop rows from all of training, so
every training row needs a score, not only the rows an index holds. Gradient scores use the
index's encoder (same model, projection, windows and fitted preconditioner) on every row and
take each row's best window, as the gradient retriever does; BM25 (bm25s, English stopwords)
and embedding cosine (the index's sentence-embedding model) score the rows' decoded texts.

Each method's ``(queries, rows)`` matrix is cached as ``OUT/scores/METHOD.npy`` next to a
``METHOD.json`` key (what the scores depend on, plus the seconds they took); a rerun with the
same key loads it instead of recomputing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attribution.batching import Batching
from attribution.embeddings import TextEmbedder
from attribution.retrievers import Method
from attribution.session import AttributionSession
from evaluation.demo_rows import demo_examples
from evaluation.retrain import demo_config
from indexer.groundtruth import Fact
from indexer.runner import context_length, raw_sketch_batches

log = logging.getLogger(__name__)


@dataclass
class TrainingRows:
    """Every training row of a demo: token ids (cut to the index's context as the indexer does) and text."""

    tokens: list[list[int]]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.tokens)


def load_training_rows(demo_dir: Path, session: AttributionSession) -> TrainingRows:
    max_len = context_length(session.encoder, session.manifest.config)
    tokens, texts = [], []
    for example in demo_examples(demo_dir, tokenizer=session.encoder.tokenizer):
        tokens.append(example.token_ids.tolist()[:max_len])
        texts.append(example.text)
    return TrainingRows(tokens, texts)


def gradient_scores(session: AttributionSession, rows: TrainingRows, queries: list[Fact],
                    batch_size: int = 32) -> np.ndarray:
    """``(queries, rows)`` gradient scores: each row's best window against each query vector."""
    encoder, config = session.encoder, session.manifest.config
    q = np.stack([encoder.encode_query(z.prompt, z.completion).vector.numpy() for z in queries])
    scores = np.empty((len(queries), len(rows)), dtype=np.float32)
    start = 0
    for batch, raw in enumerate(raw_sketch_batches(encoder, config, rows.tokens, Batching(rows=batch_size))):
        vectors = encoder.prepare_rows(raw).numpy()  # (B, W, D) with windows, else (B, D)
        block = vectors @ q.T
        scores[:, start : start + len(vectors)] = (block.max(axis=1) if vectors.ndim == 3 else block).T
        start += len(vectors)
        if batch % 50 == 0:
            log.info("gradient scores: %d / %d rows", start, len(rows))
    return scores


def bm25_scores(rows: TrainingRows, queries: list[Fact]) -> np.ndarray:
    """``(queries, rows)`` Okapi BM25 of each query's prompt + completion against every row's text."""
    return bm25_matrix(rows.texts, [z.prompt + z.completion for z in queries])


def bm25_matrix(texts: list[str], queries: list[str]) -> np.ndarray:
    """``(queries, texts)`` Okapi BM25 (bm25s, English stopwords) of every query text against every text."""
    import bm25s

    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
    return np.stack([bm25.get_scores(t) for t in tokens]).astype(np.float32)


def embedding_scores(rows: TrainingRows, queries: list[Fact], model: str | None) -> np.ndarray:
    """``(queries, rows)`` cosine between sentence embeddings of each query and each row's text."""
    embedder = TextEmbedder(model)
    queries_emb = embedder.embed([z.prompt + z.completion for z in queries])
    scores = np.empty((len(queries), len(rows)), dtype=np.float32)
    for start in range(0, len(rows), 2048):
        block = embedder.embed(rows.texts[start : start + 2048])
        scores[:, start : start + len(block)] = queries_emb @ block.T
        log.info("embedding scores: %d / %d rows", start + len(block), len(rows))
    return scores


def cached(directory: Path, method: str, key: dict, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """Load ``METHOD.npy`` if its recorded key matches, else compute and save it; returns scores and seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    path, meta = directory / f"{method}.npy", directory / f"{method}.json"
    if meta.is_file() and path.is_file():
        recorded = json.loads(meta.read_text())
        if recorded["key"] == key:
            log.info("%s scores: cached in %s", method, path)
            return np.load(path), recorded["seconds"]
    meta.unlink(missing_ok=True)
    started = time.perf_counter()
    scores = compute()
    seconds = round(time.perf_counter() - started, 1)
    tmp = directory / f".{method}.tmp.npy"
    np.save(tmp, scores)
    tmp.replace(path)
    meta.write_text(json.dumps({"key": key, "seconds": seconds, "shape": list(scores.shape)}, indent=2))
    log.info("%s scores: %d queries x %d rows in %.0fs", method, *scores.shape, seconds)
    return scores, seconds


def all_row_scores(demo_dir: Path, session: AttributionSession, queries: list[Fact],
                   out: Path) -> tuple[dict[Method, np.ndarray], dict[Method, float]]:
    """Every method's ``(queries, rows)`` scores over all training rows, with the seconds each took."""
    manifest = session.manifest
    base = {"demo": str(demo_dir.resolve()), "demo_model_key": demo_config(demo_dir).stage_key("model"),
            "queries": [[z.prompt, z.completion] for z in queries]}
    rows: TrainingRows | None = None

    def training() -> TrainingRows:  # decoded once, and only when some method is not cached
        nonlocal rows
        if rows is None:
            rows = load_training_rows(demo_dir, session)
        return rows

    computes = {
        Method.GRADIENT: (lambda: gradient_scores(session, training(), queries),
                          {"index_config": manifest.config.to_json(), "index_created": manifest.created}),
        Method.BM25: (lambda: bm25_scores(training(), queries), {}),
        Method.EMBEDDING: (lambda: embedding_scores(training(), queries, manifest.config.embedding_model),
                           {"embedding_model": manifest.config.embedding_model}),
    }
    scores, seconds = {}, {}
    for method, (compute, extra) in computes.items():
        scores[method], seconds[method] = cached(out / "scores", method, {**base, **extra}, compute)
    return scores, seconds
