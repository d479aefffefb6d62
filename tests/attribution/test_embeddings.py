"""Long rows are embedded as equal chunks that fit the sentence model; a row scores by its best chunk."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.embeddings import chunk_count, chunk_spans


@given(st.integers(0, 5000), st.integers(1, 400))
@settings(max_examples=300, deadline=None)
def test_chunks_cover_the_row_in_order_each_within_the_limit(length: int, limit: int) -> None:
    spans = chunk_spans(length, limit)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(a < b or length == 0 for a, b in spans) and all(b - a <= limit for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    assert len(spans) == chunk_count(length, limit) == max(1, -(-length // limit))


def test_demo_and_pythia_rows() -> None:
    assert chunk_count(129) == 1 and chunk_count(2049) == 11
    assert chunk_spans(400, 192) == [(0, 134), (134, 268), (268, 400)]


class FakeEmbedder:
    """embed_rows' bookkeeping without a model: a text's vector is its length in a one-hot-ish code."""

    dim = 4

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray([[len(t), 1, 0, 0] for t in texts], dtype=np.float32)


def test_embed_rows_pads_short_rows_with_their_first_chunk_and_keeps_one_chunk_rows_text() -> None:
    from attribution.embeddings import TextEmbedder

    rows = [list(range(10)), list(range(3))]
    out = TextEmbedder.embed_rows(FakeEmbedder(), rows, ["whole text", "abc"], lambda ids: "x" * len(ids), 2, 5)
    assert out.shape == (2, 2, 4)
    assert out[0, :, 0].tolist() == [5, 5]  # two chunks of 5 tokens, decoded
    assert out[1, :, 0].tolist() == [3, 3]  # one chunk: its own text ('abc'), repeated as padding
