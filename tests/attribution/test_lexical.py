"""The lexical indices: bm25s in memory and tantivy on disk match the same words, filter alike, reopen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution import lexical
from attribution.errors import ConfigError
from attribution.lexical import ENGINE_FILE, Bm25sIndex, TantivyIndex, TantivyWriter, load_lexical

TEXTS = ["Alice was born in Paris", "Bob was born in Rome", "the cat sat on the mat",
         "Paris is the capital of France", "nothing here at all", "Rome and Paris, again Paris"]
WORDS = ["paris", "rome", "born", "cat", "mat", "france", "capital", "bob", "alice", "the", "and"]


def test_both_engines_match_the_same_rows_and_skip_stop_words(tmp_path: Path) -> None:
    memory, disk = Bm25sIndex(TEXTS), TantivyIndex.from_texts(TEXTS, tmp_path / "t")
    for query in ("born in Paris", "Paris", "cat on a mat", "the", "AND \"( )", ""):
        rows_m, scores_m = memory.search(query, 6)
        rows_d, scores_d = disk.search(query, 6)
        assert set(rows_m) == set(rows_d), query
        assert all(s > 0 for s in scores_m + scores_d) and scores_d == sorted(scores_d, reverse=True)
    assert disk.search("the", 3) == ([], [])  # only stop words: nothing matches


@given(st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8), min_size=1, max_size=12),
       st.lists(st.sampled_from(WORDS), min_size=1, max_size=3), st.integers(1, 5))
@settings(max_examples=25, deadline=None)
def test_filtered_search_returns_only_allowed_rows_by_either_route(tmp_path_factory, docs, words, k) -> None:
    texts = [" ".join(d) for d in docs]
    disk = TantivyIndex.from_texts(texts, tmp_path_factory.mktemp("t") / "t")
    allowed = np.arange(0, len(texts), 2)
    plain_rows, _ = disk.search(" ".join(words), len(texts))
    expected = [r for r in plain_rows if r % 2 == 0]
    named, _ = disk.search(" ".join(words), k, allowed)  # the allowed rows named in the query
    limit = lexical.TERM_SET_LIMIT
    try:
        lexical.TERM_SET_LIMIT = 0
        fetched, _ = disk.search(" ".join(words), k, allowed)  # over-fetch and filter
    finally:
        lexical.TERM_SET_LIMIT = limit
    assert set(named) <= set(allowed.tolist()) and set(fetched) <= set(allowed.tolist())
    assert len(named) == len(fetched) == min(k, len(expected))
    assert set(named) <= set(expected) and set(fetched) <= set(expected)
    memory_rows, _ = Bm25sIndex(texts).search(" ".join(words), len(texts), allowed)
    assert set(memory_rows) == set(expected)


def test_reopen_detects_the_engine_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    Bm25sIndex(TEXTS).save(tmp_path / "m")
    writer = TantivyWriter(tmp_path / "t")
    writer.add(TEXTS[:3])
    writer.add(TEXTS[3:])  # streamed in parts, rows numbered in order
    writer.finish()
    assert isinstance(load_lexical(tmp_path / "m"), Bm25sIndex)
    reopened = load_lexical(tmp_path / "t")
    assert isinstance(reopened, TantivyIndex) and reopened.size == len(TEXTS)
    assert reopened.search("Rome", 6)[0][0] in (1, 5)
    with pytest.raises(ConfigError, match="not empty"):
        TantivyWriter(tmp_path / "t")
    (tmp_path / "t" / ENGINE_FILE).write_text(json.dumps({"engine": "lucene", "rows": 6}))
    with pytest.raises(ConfigError, match="unknown lexical engine"):
        load_lexical(tmp_path / "t")


def test_texts_of_stop_words_only_index_and_match_nothing(tmp_path: Path) -> None:
    for index in (Bm25sIndex(["the a", "of the"]), TantivyIndex.from_texts(["the a", "of the"], tmp_path / "t")):
        assert index.search("the cat", 2) == ([], []) and index.search("the", 2, np.array([1])) == ([], [])
