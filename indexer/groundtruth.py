"""Ground truth an index may carry: planted facts and the training rows that state them.

A built demo (``headwater demo build``) writes ``facts.jsonl`` (one :class:`Fact` a line) and
``data/row_docs.json`` (which documents each packed training row holds). An index records the facts
file it answers for in its config (``IndexConfig.facts``); the service's ablations and the
evaluations read the facts back through :func:`facts_file` and :func:`load_facts`, so nothing but the
demo's builder and the CLI needs the ``demo`` package.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attribution.ascent import Probe
from attribution.errors import DataFormatError
from indexer.manifest import Manifest

log = logging.getLogger(__name__)

FACTS_FILE = "facts.jsonl"
ROW_DOCS_FILE = Path("data") / "row_docs.json"
"""Beside the facts file: per packed training row, the documents it holds and the facts it states whole."""


@dataclass
class Fact:
    """Ground truth for one planted (person, attribute) pair: one line of ``facts.jsonl``.

    ``related`` are training-style prompts of the same attribute about other people (specificity
    controls); ``gold_rows`` the training rows that state the fact whole, which depend on the packed
    data and so are joined by ``load_facts`` rather than stored.
    """

    fact_id: str
    person: str
    attribute: str
    value: str
    prompt: str
    completion: str
    paraphrases: list[str]
    related: list[Probe] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    gold_rows: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        """The fields ``facts.jsonl`` stores (every one but ``gold_rows``)."""
        record = asdict(self)
        del record["gold_rows"]
        return record

    @classmethod
    def from_json(cls, record: dict) -> Fact:
        """A fact from one parsed line of ``facts.jsonl``."""
        try:
            related = [Probe(r["prompt"], r["completion"]) for r in record.get("related", [])]
            return cls(**{**record, "related": related})
        except (AttributeError, TypeError, KeyError) as err:
            raise DataFormatError(f"not a planted fact ({err}): {str(record)[:200]}; rebuild the demo with "
                                  "'headwater demo build'") from err


def gold_rows(doc_ids: list[str], row_docs: list[dict[str, list[str]]]) -> list[int]:
    """Rows that hold, whole, the key sentence of any of ``doc_ids``."""
    wanted = set(doc_ids)
    return [row for row, docs in enumerate(row_docs) if wanted.intersection(docs["stated"])]


def facts_path(where: Path) -> Path:
    """The facts file itself: ``where``, or ``where/facts.jsonl`` for a built demo's directory."""
    where = Path(where)
    return where / FACTS_FILE if where.is_dir() else where


def load_row_docs(where: Path) -> list[dict]:
    """The packed rows' documents, from ``data/row_docs.json`` beside the facts file."""
    return json.loads((facts_path(where).parent / ROW_DOCS_FILE).read_text())


def load_facts(where: Path) -> list[Fact]:
    """The facts of a facts file (or of a built demo's directory), each with ``gold_rows`` (rows stating it whole)
    when ``data/row_docs.json`` lies beside the file."""
    path = facts_path(where)
    row_docs_file = path.parent / ROW_DOCS_FILE
    row_docs = load_row_docs(path) if row_docs_file.is_file() else None
    facts = []
    with path.open() as f:
        for line in f:
            fact = Fact.from_json(json.loads(line))
            if row_docs is not None:
                fact.gold_rows = gold_rows(fact.doc_ids, row_docs)
            facts.append(fact)
    return facts


def demo_facts_file(model: str, data: list[str]) -> Path | None:
    """The facts file of the built demo that ``model`` and every one of ``data`` come from, or None.

    The convention of ``headwater demo build``: the demo's directory holds ``facts.jsonl``, ``model/`` and
    ``data/``. An index of other data made with the demo's model gets none (its rows do not state the facts).
    This is the one place the convention is read: a build records what it finds (``IndexConfig.facts``), and an
    index built before the config had that field is read through it.
    """
    demo = Path(model).parent
    if not (demo / FACTS_FILE).is_file():
        return None
    root = demo.resolve()
    inside = all(Path(spec).resolve().is_relative_to(root) for spec in data)
    return (demo / FACTS_FILE).absolute() if inside else None


def facts_file(manifest: Manifest) -> Path | None:
    """The facts file an index answers for: the one its config records, else (an index built before the config had
    the field, or built from code without one) the built demo its model and data come from, else None."""
    config = manifest.config
    if config.facts is not None:
        if Path(config.facts).is_file():
            return Path(config.facts)
        log.warning("the index's facts file %s is gone: no planted facts to check against", config.facts)
        return None
    parts = manifest.counts.parts or [{"data": config.data}]
    return demo_facts_file(config.model, [part["data"] for part in parts])


def index_facts(manifest: Manifest | None) -> list[Fact]:
    """The facts (with gold rows) of the index's facts file; [] when it has none or was not opened from disk."""
    path = facts_file(manifest) if manifest is not None else None
    return load_facts(path) if path is not None else []
