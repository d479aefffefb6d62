"""Pack tokenized documents into Pythia-style training rows and write them as Megatron data.

Documents (each followed by end-of-text) are concatenated, one freshly shuffled pass
per epoch, and cut into rows of ``seq_len + 1`` tokens, so documents run across rows
as in Pythia. The rows are then shuffled once; training step ``s`` consumes rows
``[B·s, B·(s+1))``. For ground truth we record, for each row, the documents it
touches and the documents whose key sentence (a planted fact) it holds whole.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenizedDoc:
    """A document's tokens and the token range ``[key_start, key_end)`` of its key sentence, if any."""

    doc_id: str
    ids: list[int]
    key_start: int = 0
    key_end: int = 0
    subset: str | None = None


@dataclass
class PackedRows:
    """Rows of ``seq_len + 1`` tokens, and per row the documents touched and stated whole,
    and the ``pile_set_name`` of the document that fills most of the row."""

    rows: np.ndarray
    row_docs: list[dict[str, list[str]]]
    epochs: int


def _stream(docs: list[TokenizedDoc], eos_id: int, need: int, seed: int) -> tuple[list[int], list[int], list[int], int]:
    tokens: list[int] = []
    owners: list[int] = []  # document index of every token
    keys: list[int] = []  # document index for tokens of a key sentence, else -1
    epochs = 0
    order = list(range(len(docs)))
    while len(tokens) < need:
        random.Random(seed * 1000 + epochs).shuffle(order)
        for d in order:
            doc = docs[d]
            tokens.extend(doc.ids + [eos_id])
            owners.extend([d] * (len(doc.ids) + 1))
            keys.extend(d if doc.key_start <= i < doc.key_end else -1 for i in range(len(doc.ids) + 1))
            if len(tokens) >= need:
                break
        epochs += 1
    return tokens, owners, keys, epochs


def pack_rows(docs: list[TokenizedDoc], eos_id: int, seq_len: int, num_rows: int, seed: int) -> PackedRows:
    """Pack documents into exactly ``num_rows`` rows of ``seq_len + 1`` tokens, then shuffle the rows."""
    if not docs:
        raise ValueError("cannot pack an empty corpus")
    width = seq_len + 1
    tokens, owners, keys, epochs = _stream(docs, eos_id, num_rows * width, seed)
    need = num_rows * width
    stream = np.asarray(tokens[:need], dtype=np.int64).reshape(num_rows, width)
    owner_rows = np.asarray(owners[:need]).reshape(num_rows, width)
    key_rows = np.asarray(keys[:need]).reshape(num_rows, width)
    perm = list(range(num_rows))
    random.Random(seed).shuffle(perm)
    row_docs = []
    for r in perm:
        touched = [docs[d].doc_id for d in dict.fromkeys(owner_rows[r].tolist())]
        counts = Counter(k for k in key_rows[r].tolist() if k >= 0)
        stated = [docs[d].doc_id for d, n in counts.items() if n == docs[d].key_end - docs[d].key_start]
        majority = Counter(owner_rows[r].tolist()).most_common(1)[0][0]
        row_docs.append({"docs": touched, "stated": stated, "pile_set_name": docs[majority].subset})
    return PackedRows(stream[perm], row_docs, epochs)
