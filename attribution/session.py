"""A notebook-sized API: load a model and a set of training examples, then ``attribute``.

    from attribution.session import AttributionSession
    session = AttributionSession.from_demo("demo-data")
    for row in session.attribute("Ilse Varga was born in", " Tarnow", k=10, method="gradient"):
        print(row["rank"], row["score"], row["metadata"]["step"], row["text"][:80])

The session holds every vector in memory (fine for the demo; the indexer writes the
same vectors to disk for large corpora).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attribution.embeddings import TextEmbedder
from attribution.encoder import GradientEncoder, load_checkpoints
from attribution.errors import ConfigError
from attribution.filters import Filters
from attribution.models import load_tokenizer
from attribution.preconditioner import CovarianceAccumulator, Preconditioner, PreconditionMode
from attribution.retrievers import (
    BM25Retriever,
    EmbeddingRetriever,
    GradientRetriever,
    HybridRetriever,
    Method,
    Query,
    Retriever,
)
from attribution.scoring import ScoreMode
from attribution.sketch import SketchConfig
from indexer.examples import Example

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionConfig:
    """How training examples are turned into vectors."""

    sketch: SketchConfig = SketchConfig()
    mode: ScoreMode = ScoreMode.COSINE
    precondition: PreconditionMode = PreconditionMode.INVERSE_SQRT
    damping: float = 0.1
    """λ as a multiple of the mean eigenvalue of the sketch covariance."""
    precondition_sample: int = 2048
    """Training examples used to estimate the covariance."""
    window: int | None = None
    """Sketch windows of this many tokens; an example scores by its best window."""
    normalizer: bool = False
    """Divide gradients by the factored √v of the model's saved Adam state."""
    batch_size: int = 32
    revisions: tuple[str | None, ...] = (None,)
    """Checkpoints to sum over (TracIn-CP); ``None`` is the final model."""
    hybrid_fusion: str = "rerank"
    """How ``hybrid`` combines: gradient re-rank of lexical+embedding candidates, or 'rrf' rank fusion."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", ScoreMode(self.mode))
            object.__setattr__(self, "precondition", PreconditionMode(self.precondition))
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if self.window is not None and self.window <= 0:
            raise ConfigError(f"window must be a positive number of tokens, got {self.window}")
        if self.damping <= 0 or self.batch_size <= 0 or self.precondition_sample <= 0:
            raise ConfigError("damping, batch_size and precondition_sample must be positive")
        if not self.revisions:
            raise ConfigError("give at least one revision (None is the final model)")


class AttributionSession:
    """Model, encoders and the four retrievers over one set of training examples.

    ``texts`` is anything with ``__getitem__`` by row (a list in memory, a DuckDB-backed
    lookup for a stored index); ``builders`` make the lexical and embedding retrievers on
    first use.
    """

    def __init__(self, encoder: GradientEncoder, ids: np.ndarray, metadata: list[dict], gradient: GradientRetriever,
                 texts, builders: dict[Method, Callable[[], Retriever]], hybrid_fusion: str = "rerank") -> None:
        self.encoder, self.ids, self.metadata, self.texts = encoder, ids, metadata, texts
        self.hybrid_fusion = hybrid_fusion
        self.retrievers: dict[Method, Retriever] = {Method.GRADIENT: gradient}
        self._builders = builders

    manifest: dict | None = None
    """The index manifest, when the session was opened from a stored index."""

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_index(cls, path: str | Path, device: str = "cpu") -> AttributionSession:
        """Open a published index (see ``headwater index build``) read-only."""
        from indexer.store import open_index

        return open_index(path, device)

    def retriever(self, method: Method | str) -> Retriever:
        """The retriever for a method, built on first use."""
        try:
            method = Method(method)
        except ValueError as err:
            raise ConfigError(f"unknown method {method!r}; choose one of {[m.value for m in Method]}") from err
        if method not in self.retrievers:
            if method is Method.HYBRID:
                self.retrievers[method] = HybridRetriever(
                    self.retrievers[Method.GRADIENT], self.retriever(Method.BM25), self.retriever(Method.EMBEDDING),
                    fusion=self.hybrid_fusion)
            else:
                self.retrievers[method] = self._builders[method]()
        return self.retrievers[method]

    def attribute(self, prompt: str, completion: str | None = None, k: int = 10, method: str = "gradient",
                  filters: Filters | None = None, controls: Iterable[tuple[str, str | None]] = ()) -> list[dict]:
        """The top-k training examples for ``prompt`` → ``completion`` as JSON-ready rows."""
        if not prompt.strip():
            raise ConfigError("the prompt is empty")
        if completion is None:  # every method attributes the model's own continuation
            completion = self.encoder.greedy_completion(prompt)
        query = Query(prompt, completion, list(controls))
        hits = self.retriever(method).search(query, k, filters)
        return [
            {
                "rank": rank + 1,
                "example_id": int(self.ids[hit.row]),
                "score": hit.score,
                "text": self.texts[hit.row],
                "metadata": self.metadata[hit.row],
                "completion": query.completion,
                **hit.evidence,
            }
            for rank, hit in enumerate(hits)
        ]

    @classmethod
    def from_examples(cls, model_path: str | Path, examples: Iterable[Example], config: SessionConfig = SessionConfig(),
                      tokenizer_path: str | Path | None = None, device: str = "cpu",
                      adam_state: str | Path | None = None, embedding_model: str | None = None) -> AttributionSession:
        """Sketch every example with the model (and its checkpoints) and build the retrievers."""
        examples = list(examples)
        if not examples:
            raise ConfigError("no training examples to attribute to")
        tokenizer = load_tokenizer(tokenizer_path or model_path)
        state = Path(adam_state or Path(model_path) / "adam_state.safetensors") if config.normalizer else None
        checkpoints = load_checkpoints(model_path, config.revisions, config.sketch, state, device)
        encoder = GradientEncoder(checkpoints, tokenizer, config.mode)
        raw = sketch_all(encoder, [ex.token_ids.tolist() for ex in examples], config)
        if config.precondition is not PreconditionMode.NONE:
            fit_preconditioners(encoder, raw, config)
        vectors = encoder.prepare_rows(raw).numpy().astype("float32")
        texts = [ex.text or tokenizer.decode(ex.token_ids.tolist()) for ex in examples]
        metadata = [ex.metadata for ex in examples]
        gradient = GradientRetriever(encoder, vectors, metadata, config.window)

        def embedding() -> EmbeddingRetriever:
            embedder = TextEmbedder(embedding_model)
            return EmbeddingRetriever(embedder, embedder.embed(texts), metadata)

        builders = {Method.BM25: lambda: BM25Retriever(texts, metadata), Method.EMBEDDING: embedding}
        ids = np.asarray([ex.example_id for ex in examples], dtype=np.int64)
        return cls(encoder, ids, metadata, gradient, texts, builders, config.hybrid_fusion)

    @classmethod
    def from_demo(cls, demo_dir: str | Path, config: SessionConfig = SessionConfig(), **kwargs) -> AttributionSession:
        """All training rows of a built demo (see ``headwater demo build``)."""
        from demo.groundtruth import demo_examples

        demo_dir = Path(demo_dir)
        tokenizer = load_tokenizer(demo_dir / "tokenizer")
        examples = list(demo_examples(demo_dir, kwargs.pop("rows", None), tokenizer))
        return cls.from_examples(demo_dir / "model", examples, config, **kwargs)


def sketch_all(encoder: GradientEncoder, rows: list[list[int]], config: SessionConfig) -> list[torch.Tensor]:
    """Raw sketches of every row, per checkpoint, computed once in batches."""
    parts: list[list[torch.Tensor]] = [[] for _ in encoder.checkpoints]
    for start in range(0, len(rows), config.batch_size):
        for index, raw in enumerate(encoder.raw_rows(rows[start : start + config.batch_size], config.window)):
            parts[index].append(raw)
    return [torch.cat(p) for p in parts]


def fit_preconditioners(encoder: GradientEncoder, raw: list[torch.Tensor], config: SessionConfig) -> None:
    """Fit each checkpoint's preconditioner on an evenly spaced sample of its raw sketches (windows count as
    samples when windows are scored)."""
    for ckpt, sketches in zip(encoder.checkpoints, raw, strict=True):
        flat = sketches.reshape(-1, sketches.shape[-1])
        sample = flat[:: max(1, len(flat) // config.precondition_sample)][: config.precondition_sample]
        acc = CovarianceAccumulator(ckpt.sketcher.dim)
        acc.add(sample)
        ckpt.preconditioner = Preconditioner.fit(acc, config.precondition, config.damping)
