"""Lexical indices behind the ``bm25`` retriever: in memory (bm25s) or on disk (tantivy).

Both score Okapi BM25 over the same words (two or more word characters, lower-cased, bm25s's English stop words
removed; BM25's k1 is 1.5 in bm25s, 1.2 in tantivy, so scores and close ranks differ), and both answer
``search(text, k, allowed)`` with row positions and scores. They differ in where the index lives:

- ``bm25s`` (the default) holds the whole index in memory: fast (4 ms p50 at 10^5 rows) but its build needs
  every text at once and ~8.5 GiB at 10^6 rows of 300 words (``bench/lexical.py``), so 10^7 rows do not fit a
  24 GiB machine.
- ``tantivy`` writes segments to disk as texts stream in (``TantivyWriter``: memory bounded by its heap, never
  all texts at once) and searches memory-mapped segments: the engine for Pythia-scale row counts.

An index directory says which engine wrote it (``engine.json``; a directory without one is a bm25s index,
as every index built before tantivy was).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import numpy as np

from attribution.errors import ConfigError

ENGINE_FILE = "engine.json"
EMPTY_MARK = "headwaterzzemptyrow"
"""The one word of every row of a bm25s index whose texts hold no word but stop words (no query asks it)."""
TERM_SET_LIMIT = 100_000
"""Filtered tantivy searches name the allowed rows in the query up to this many; beyond, they over-fetch."""


class LexicalEngine(StrEnum):
    BM25S = "bm25s"
    TANTIVY = "tantivy"


class LexicalIndex(Protocol):
    """BM25 over the texts of rows ``0 … n−1``."""

    def search(self, text: str, k: int, allowed: np.ndarray | None = None) -> tuple[list[int], list[float]]:
        """The ``k`` best rows for ``text`` (among ``allowed`` row positions, when given) and their scores; rows
        that share no word with ``text`` are left out."""
        ...

    def save(self, directory: Path) -> None: ...


class Bm25sIndex:
    """bm25s in memory (English stop words)."""

    def __init__(self, texts: list[str] | None = None, bm25=None) -> None:
        import bm25s

        if bm25 is None:
            tokens = bm25s.tokenize(texts or [], stopwords="en", show_progress=False)
            if not tokens.vocab:  # every text only stop words: bm25s cannot index an empty vocabulary
                tokens = bm25s.tokenize([EMPTY_MARK] * len(texts or []), stopwords="en", show_progress=False)
            bm25 = bm25s.BM25()
            bm25.index(tokens, show_progress=False)
        self.bm25 = bm25
        self.size = len(texts) if texts is not None else int(bm25.scores["num_docs"])

    def save(self, directory: Path) -> None:
        self.bm25.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path) -> Bm25sIndex:
        import bm25s

        return cls(None, bm25s.BM25.load(str(directory), show_progress=False))

    def search(self, text: str, k: int, allowed: np.ndarray | None = None) -> tuple[list[int], list[float]]:
        import bm25s

        mask = None
        if allowed is not None:
            mask = np.zeros(self.size, dtype="float32")
            mask[allowed] = 1.0
            k = min(k, len(allowed))
        k = min(k, self.size)
        if k == 0:
            return [], []
        tokens = bm25s.tokenize([text], stopwords="en", show_progress=False)
        rows, scores = self.bm25.retrieve(tokens, k=k, show_progress=False, weight_mask=mask)
        kept = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if s > 0]
        return [r for r, _ in kept], [s for _, s in kept]


def _analyzer():
    """bm25s's own tokenization: words of two or more word characters, lower-cased, its English stop words."""
    import tantivy
    from bm25s.stopwords import STOPWORDS_EN

    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(r"\w\w+")).filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.custom_stopword(list(STOPWORDS_EN))).build())


def _schema():
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("text", stored=False, tokenizer_name="headwater", index_option="freq")
    builder.add_unsigned_field("row", stored=True, indexed=True, fast=True)
    return builder.build()


def _open(directory: Path, create: bool):
    import tantivy

    directory.mkdir(parents=True, exist_ok=True)
    index = tantivy.Index(_schema(), path=str(directory), reuse=not create)
    index.register_tokenizer("headwater", _analyzer())
    return index


class TantivyWriter:
    """Streams texts into an on-disk tantivy index, row positions in the order given; ``finish`` commits."""

    def __init__(self, directory: Path, heap_bytes: int = 256 * 2**20) -> None:
        if directory.exists() and any(directory.iterdir()):
            raise ConfigError(f"{directory} is not empty; a lexical index is written into a fresh directory")
        self.directory = directory
        self.index = _open(directory, create=True)
        self.writer = self.index.writer(heap_size=heap_bytes, num_threads=1)
        self.rows = 0

    def add(self, texts: Iterable[str]) -> None:
        import tantivy

        for text in texts:
            document = tantivy.Document()
            document.add_text("text", text)
            document.add_unsigned("row", self.rows)
            self.writer.add_document(document)
            self.rows += 1

    def finish(self) -> TantivyIndex:
        self.writer.commit()
        self.writer.wait_merging_threads()
        (self.directory / ENGINE_FILE).write_text(json.dumps({"engine": LexicalEngine.TANTIVY.value,
                                                              "rows": self.rows}))
        return TantivyIndex.load(self.directory)


class TantivyIndex:
    """A tantivy index on disk (memory-mapped segments), searched with the same BM25 as bm25s's defaults
    (k1 1.2, b 0.75)."""

    def __init__(self, directory: Path, index, rows: int) -> None:
        self.directory, self.index, self.size = directory, index, rows
        self.analyzer = _analyzer()
        self.searcher = index.searcher()

    @classmethod
    def from_texts(cls, texts: Iterable[str], directory: Path) -> TantivyIndex:
        writer = TantivyWriter(directory)
        writer.add(texts)
        return writer.finish()

    @classmethod
    def load(cls, directory: Path) -> TantivyIndex:
        rows = json.loads((directory / ENGINE_FILE).read_text())["rows"]
        return cls(directory, _open(directory, create=False), int(rows))

    def save(self, directory: Path) -> None:
        if directory.resolve() != self.directory.resolve():
            raise ConfigError(f"a tantivy index lives where it was written ({self.directory}); write it into "
                              f"{directory} with TantivyWriter instead")

    def _query(self, text: str, rows: np.ndarray | None = None):
        import tantivy

        schema = self.index.schema
        terms = list(dict.fromkeys(self.analyzer.analyze(text)))
        if not terms:
            return None
        words = tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(schema, "text", t))
                                             for t in terms])
        if rows is None:
            return words
        allowed = tantivy.Query.term_set_query(schema, "row", [int(r) for r in rows])
        return tantivy.Query.boolean_query([(tantivy.Occur.Must, words),
                                            (tantivy.Occur.Must, tantivy.Query.const_score_query(allowed, 0.0))])

    def _hits(self, query, limit: int) -> list[tuple[int, float]]:
        found = self.searcher.search(query, limit, count=False).hits
        return [(int(self.searcher.doc(address)["row"][0]), float(score)) for score, address in found]

    def search(self, text: str, k: int, allowed: np.ndarray | None = None) -> tuple[list[int], list[float]]:
        k = min(k, self.size if allowed is None else len(allowed))
        if k == 0:
            return [], []
        if allowed is not None and len(allowed) <= TERM_SET_LIMIT:
            query = self._query(text, np.asarray(allowed))
            hits = self._hits(query, k) if query is not None else []
        else:
            query = self._query(text)
            hits = [] if query is None else self._over_fetched(query, k, allowed)
        return [r for r, _ in hits], [s for _, s in hits]

    def _over_fetched(self, query, k: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        """Without a filter, the top k; with a large one, fetch more until k allowed rows are found."""
        if allowed is None:
            return self._hits(query, k)
        keep = np.zeros(self.size, dtype=bool)
        keep[allowed] = True
        limit = 4 * k
        while True:
            hits = self._hits(query, limit)
            chosen = [(r, s) for r, s in hits if keep[r]]
            if len(chosen) >= k or len(hits) < limit:
                return chosen[:k]
            limit *= 4


def load_lexical(directory: Path) -> LexicalIndex:
    """The lexical index in ``directory``, whichever engine wrote it."""
    marker = directory / ENGINE_FILE
    if not marker.is_file():
        return Bm25sIndex.load(directory)
    engine = json.loads(marker.read_text()).get("engine")
    if engine != LexicalEngine.TANTIVY.value:
        raise ConfigError(f"{marker}: unknown lexical engine {engine!r}; known: {[e.value for e in LexicalEngine]}")
    return TantivyIndex.load(directory)
