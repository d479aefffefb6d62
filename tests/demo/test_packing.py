"""Packing documents into Pythia-style rows, with ground truth about which rows state what."""

from __future__ import annotations

import numpy as np

from demo.packing import TokenizedDoc, pack_rows
from indexer.groundtruth import gold_rows


def docs() -> list[TokenizedDoc]:
    # Token values encode (document, position) so rows can be checked by hand.
    out = []
    for d in range(12):
        ids = [100 * (d + 1) + i for i in range(7 + d % 5)]
        out.append(TokenizedDoc(f"doc{d}", ids, key_start=2, key_end=5) if d % 2 == 0 else TokenizedDoc(f"doc{d}", ids))
    return out


def test_rows_have_width_and_count_and_are_deterministic() -> None:
    a = pack_rows(docs(), eos_id=0, seq_len=9, num_rows=30, seed=3)
    b = pack_rows(docs(), eos_id=0, seq_len=9, num_rows=30, seed=3)
    assert a.rows.shape == (30, 10) and a.epochs > 1
    np.testing.assert_array_equal(a.rows, b.rows)
    assert a.row_docs == b.row_docs


def test_row_docs_match_the_tokens_in_each_row() -> None:
    packed = pack_rows(docs(), eos_id=0, seq_len=9, num_rows=30, seed=3)
    by_id = {d.doc_id: d for d in docs()}
    for row, info in zip(packed.rows, packed.row_docs, strict=True):
        owners = {f"doc{t // 100 - 1}" for t in row.tolist() if t}
        assert owners <= set(info["docs"])
        for doc_id in info["stated"]:
            doc = by_id[doc_id]
            key = doc.ids[doc.key_start : doc.key_end]
            assert any(row.tolist()[i : i + len(key)] == key for i in range(len(row) - len(key) + 1))


def test_gold_rows_are_rows_stating_the_document() -> None:
    packed = pack_rows(docs(), eos_id=0, seq_len=9, num_rows=30, seed=3)
    rows = gold_rows(["doc4"], packed.row_docs)
    assert rows and all("doc4" in packed.row_docs[r]["stated"] for r in rows)
    assert gold_rows(["doc1"], packed.row_docs) == []  # doc1 has no key sentence
