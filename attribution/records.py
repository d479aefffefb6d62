"""Records shared by every stage: the training example every reader yields, a retriever's hit and an attributed
result, and the evidence those two carry (declared once, in ``Evidence``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


@dataclass
class Example:
    """One training example.

    ``example_id`` is global and stable for a given source (row number for
    Megatron data, running line count for text files); ``token_ids`` is set for
    pre-tokenized data or when a tokenizer was given; ``metadata`` carries
    provenance: ``source``, ``row`` and, where known, ``step``, ``batch_pos``
    and ``pile_set_name``.
    """

    example_id: int
    token_ids: np.ndarray | None
    text: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Evidence:
    """Why a row scores what it does, as far as its retriever can say: each field None where it says nothing.

    The one list of these fields: ``Hit`` and ``Result`` inherit them (keyword-only), and the HTTP schema
    (``service.schemas.Result``) takes its descriptions from the docstrings below.
    """

    token_contributions: list[float] | None = None
    """gradient: each completion token's share of the score (one per completion_tokens; they sum to the score)."""
    completion_tokens: list[str] | None = None
    """gradient: the completion's tokens, each decoded alone."""
    token_span: tuple[int, int] | None = None
    """The row's best-matching window [start, end) in tokens, when the index is windowed (embedding: its best chunk;
    unlearning: its window of largest loss increase)."""
    loss_increase: list[float] | None = None
    """unlearning: the loss increase (nats) of each predicted token of the row (row_tokens); their mean is the score
    (with window scoring: their mean over token_span)."""
    row_tokens: list[str] | None = None
    """unlearning: the row's tokens after the first (the ones predicted), each decoded alone."""
    instances: list[tuple[int, float]] | None = None
    """A task query: the instances this row serves most, (instance index, contribution), at most three, largest
    first (gradient: the row's share of the task vector; rank fusion: its reciprocal-rank terms; unlearning: the
    instance's signed share of the row's first-order loss change, shares' absolute values summing to 1)."""

    def evidence(self) -> dict[str, Any]:
        """The evidence fields alone, by name (the values themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(Evidence)}


@dataclass
class Hit(Evidence):
    """One retrieved example: its row position in the store, its score, and the retriever's evidence."""

    row: int
    score: float


@dataclass
class Result(Evidence):
    """One attributed training example, as ``AttributionSession.attribute`` returns it: a hit with its rank, its
    example's id, text and metadata, and the completion it was attributed for."""

    rank: int
    example_id: int
    score: float
    text: str
    metadata: dict[str, Any]
    completion: str

    @classmethod
    def from_hit(cls, hit: Hit, *, rank: int, example_id: int, text: str, metadata: dict[str, Any],
                 completion: str) -> Result:
        """The result of ``hit``: its score and evidence, with what the session knows of its row."""
        return cls(rank=rank, example_id=example_id, score=hit.score, text=text, metadata=metadata,
                   completion=completion, **hit.evidence())
