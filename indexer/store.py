"""Open a published index read-only and serve attribution queries from it.

The gradient side is rebuilt from the manifest's config (same model, revisions,
projection seed and dims, normalizer) with the stored preconditioners, and the
tokenizer is checked against the one the index was built with.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from attribution.embeddings import TextEmbedder
from attribution.preconditioner import Preconditioner
from attribution.retrievers import BM25Retriever, EmbeddingRetriever, GradientRetriever, Method
from attribution.session import AttributionSession
from indexer.config import IndexConfig, IndexMismatchError
from indexer.manifest import read_manifest, resolve_build, tokenizer_hash
from indexer.metadata import DuckTexts, load_metadata
from indexer.runner import make_encoder


def open_index(path: str | Path, device: str = "cpu") -> AttributionSession:
    """An :class:`AttributionSession` over a published index directory (or one build)."""
    build = resolve_build(Path(path))
    manifest = read_manifest(build)
    config = IndexConfig.from_json(manifest["config"])
    encoder = make_encoder(config, device)
    found = tokenizer_hash(encoder.tokenizer)
    if found != manifest["tokenizer_hash"]:
        raise IndexMismatchError(f"{build}: built with tokenizer {manifest['tokenizer_hash']}, but "
                                 f"{config.tokenizer or config.model} now has {found}; rebuild the index")
    for c, ckpt in enumerate(encoder.checkpoints):
        stored = build / f"preconditioner-{c}.safetensors"
        ckpt.preconditioner = Preconditioner.load(stored) if stored.is_file() else None
    texts = DuckTexts(build / "metadata.duckdb")
    ids, metadata = load_metadata(texts.cursor())
    vectors = np.load(build / "vectors.npy", mmap_mode="r")
    gradient = GradientRetriever(encoder, vectors, metadata, config.window,
                                 index=faiss.read_index(str(build / "gradient.faiss")))

    def embedding() -> EmbeddingRetriever:
        index = faiss.read_index(str(build / "embedding.faiss"))
        return EmbeddingRetriever(TextEmbedder(config.embedding_model, device=device), None, metadata, index)

    builders = {Method.BM25: lambda: BM25Retriever.load(build / "bm25", metadata), Method.EMBEDDING: embedding}
    session = AttributionSession(encoder, ids, metadata, gradient, texts, builders)
    session.manifest = manifest
    return session
