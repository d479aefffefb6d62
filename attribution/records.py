"""Records shared by every stage: the training example every reader yields, and an attributed result."""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Result:
    """One attributed training example, as ``AttributionSession.attribute`` returns it.

    ``token_contributions`` (one per completion token, summing to ``score``) and
    ``completion_tokens`` are set by the gradient retriever; ``token_span`` is the
    best-matching window ``[start, end)`` in tokens when the index is windowed (for ``unlearning``: the
    row's window of largest loss increase). ``loss_increase`` (``unlearning``) is the per-token loss
    increase of the row's predicted tokens ``row_tokens`` (every token after the first); ``score`` is its
    mean (its mean over ``token_span`` with ``UnlearningConfig.score = window``).
    """

    rank: int
    example_id: int
    score: float
    text: str
    metadata: dict[str, Any]
    completion: str
    token_contributions: list[float] | None = None
    completion_tokens: list[str] | None = None
    token_span: tuple[int, int] | None = None
    loss_increase: list[float] | None = None
    row_tokens: list[str] | None = None
    instances: list[tuple[int, float]] | None = None
    """A task query: the instances this row serves most, ``(instance index, contribution)``, at most three, largest
    first (gradient: the row's share of the task vector; rank fusion: its reciprocal-rank terms)."""
