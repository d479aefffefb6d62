"""The record every reader yields, whatever the data format."""

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
