"""Read a built demo back: planted facts, their gold training rows, and labelled training rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attribution.ascent import Probe
from attribution.errors import ConfigError, DataFormatError
from attribution.records import Example
from demo.packing import gold_rows
from indexer.training_rows import RowRange, read_layout, read_training_rows


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


def load_facts(out: Path) -> list[Fact]:
    """The ground-truth facts of a built demo, each with ``gold_rows`` (rows stating it whole)."""
    row_docs = load_row_docs(out) if (out / "data" / "row_docs.json").is_file() else None
    facts = []
    with (out / "facts.jsonl").open() as f:
        for line in f:
            fact = Fact.from_json(json.loads(line))
            if row_docs is not None:
                fact.gold_rows = gold_rows(fact.doc_ids, row_docs)
            facts.append(fact)
    return facts


def load_row_docs(out: Path) -> list[dict]:
    return json.loads((out / "data" / "row_docs.json").read_text())


def load_layout(out: Path) -> dict:
    """The layout of the demo's training data (see ``indexer.training_rows.read_layout``)."""
    layout = read_layout(out / "data" / "document")
    if layout is None:
        raise ConfigError(f"{out}: no data/layout.json; rebuild the demo with 'headwater demo build --out {out}'")
    return layout


def demo_examples(out: Path, rows: RowRange | None = None, tokenizer=None) -> Iterator[Example]:
    """Training rows of the demo with step, batch position, text and the row's main ``pile_set_name``
    (from the data's ``document.labels.json``, which the Megatron reader applies)."""
    return read_training_rows(out / "data" / "document", rows, load_layout(out)["batch_size"], tokenizer)
