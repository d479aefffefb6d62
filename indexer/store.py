"""Open a published index read-only and serve attribution queries from it.

The gradient side is rebuilt from the manifest's config (same model, revisions,
projection seed and dims, normalizer) with the stored curvatures, and the
tokenizer is checked against the one the index was built with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attribution.curvature import load_curvature
from attribution.embeddings import TextEmbedder
from attribution.errors import memory_guard
from attribution.retrievers import BM25Retriever, EmbeddingRetriever, GradientRetriever, Method
from attribution.session import AttributionSession
from attribution.stores import STORES
from attribution.vectors import FaissStore
from indexer.config import IndexMismatchError
from indexer.manifest import (
    BM25_DIR,
    EMBEDDING_INDEX,
    EMBEDDINGS,
    METADATA_DB,
    VECTORS,
    check_weights,
    curvature_file,
    read_manifest,
    resolve_build,
    tokenizer_hash,
)
from indexer.metadata import DuckTexts, load_metadata
from indexer.runner import context_length, make_encoder


def open_index(path: str | Path, device: str = "cpu") -> AttributionSession:
    """An :class:`AttributionSession` over a published index directory (or one build); ``session.manifest``
    is its :class:`~indexer.manifest.Manifest`."""
    with memory_guard("opening the index", "give the process more memory (the model, the row metadata from "
                      "DuckDB and the FAISS index are loaded now)"):
        return _open_index(Path(path), device)


def _open_index(path: Path, device: str) -> AttributionSession:
    build = resolve_build(path)
    manifest = read_manifest(build)
    config = manifest.config
    encoder = make_encoder(config, device)
    found = tokenizer_hash(encoder.tokenizer)
    if found != manifest.tokenizer_hash:
        raise IndexMismatchError(f"{build}: built with tokenizer {manifest.tokenizer_hash}, but "
                                 f"{config.tokenizer or config.model} now has {found}; rebuild the index")
    check_weights(build, manifest, encoder)
    for c, ckpt in enumerate(encoder.checkpoints):
        ckpt.preconditioner = load_curvature(build / curvature_file(c))
    texts = DuckTexts(build / METADATA_DB)
    ids, metadata = load_metadata(texts.cursor())
    storage = config.storage
    store = STORES[storage.store].open(build, np.load(build / VECTORS, mmap_mode="r"), storage.search())
    gradient = GradientRetriever(encoder, store, metadata, config.attribution.window)

    def embedding() -> EmbeddingRetriever:
        embedder = TextEmbedder(config.embedding_model, device=device)
        if not (build / EMBEDDINGS).is_file():  # every row one chunk: FAISS's own scores
            return EmbeddingRetriever(embedder, FaissStore.open(build / EMBEDDING_INDEX), metadata)
        longest = context_length(encoder, config)
        lengths = [min(int(m.get("token_count") or 0), longest) for m in metadata]
        return EmbeddingRetriever(embedder, FaissStore.open(build / EMBEDDING_INDEX, build / EMBEDDINGS), metadata,
                                  config.embedding_chunk_tokens, lengths)

    builders = {Method.BM25: lambda: BM25Retriever.load(build / BM25_DIR, metadata), Method.EMBEDDING: embedding}
    session = AttributionSession(encoder, ids, metadata, gradient, texts, builders, config.attribution)
    session.manifest = manifest
    return session
