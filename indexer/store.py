"""Open a published index read-only and serve attribution queries from it.

The gradient side is rebuilt from the manifest's config (same model, revisions,
projection seed and dims, normalizer) with the stored preconditioners, and the
tokenizer is checked against the one the index was built with.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import faiss
import numpy as np

from attribution.embeddings import TextEmbedder
from attribution.preconditioner import Preconditioner
from attribution.retrievers import BM25Retriever, EmbeddingRetriever, GradientRetriever, Method
from attribution.session import AttributionSession
from indexer.config import IndexConfig, IndexMismatchError
from indexer.manifest import read_manifest, resolve_build, tokenizer_hash
from indexer.runner import make_encoder

METADATA_COLUMNS = ("id", "source", "row", "step", "batch_pos", "pile_set_name", "token_count")


class DuckTexts:
    """Row → text lookup against the read-only DuckDB table, one cursor per call (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.con = duckdb.connect(str(path), read_only=True)
        self.lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self.lock:
            return self.con.cursor()

    def __getitem__(self, position: int) -> str:
        row = self.cursor().execute("SELECT text FROM examples WHERE position = ?", [int(position)]).fetchone()
        return row[0]

    def by_ids(self, ids: list[int]) -> list[dict]:
        """Full rows for example ids (``IN`` list on the id index)."""
        cur = self.cursor()
        result = cur.execute("SELECT * FROM examples WHERE id IN (SELECT UNNEST(?))", [list(map(int, ids))])
        names = [d[0] for d in result.description]
        return [dict(zip(names, values, strict=True)) for values in result.fetchall()]


def load_metadata(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, list[dict]]:
    columns = ", ".join(METADATA_COLUMNS)
    rows = con.execute(f"SELECT {columns} FROM examples ORDER BY position").fetchall()
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    return ids, [dict(zip(METADATA_COLUMNS[1:], r[1:], strict=True)) for r in rows]


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
