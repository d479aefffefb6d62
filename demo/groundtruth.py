"""Read a built demo back: planted facts, their gold training rows, and labelled training rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from demo.packing import gold_rows
from indexer.examples import Example
from indexer.training_rows import RowRange, read_training_rows


def load_facts(out: Path) -> list[dict]:
    """The ground-truth facts of a built demo, each with ``gold_rows`` (rows stating it whole)."""
    row_docs = load_row_docs(out) if (out / "data" / "row_docs.json").is_file() else None
    facts = []
    with (out / "facts.jsonl").open() as f:
        for line in f:
            fact = json.loads(line)
            if row_docs is not None:
                fact["gold_rows"] = gold_rows(fact["doc_ids"], row_docs)
            facts.append(fact)
    return facts


def load_row_docs(out: Path) -> list[dict]:
    return json.loads((out / "data" / "row_docs.json").read_text())


def load_layout(out: Path) -> dict:
    return json.loads((out / "data" / "layout.json").read_text())


def demo_examples(out: Path, rows: RowRange | None = None, tokenizer=None) -> Iterator[Example]:
    """Training rows of the demo with step, batch position, text and the row's main ``pile_set_name``
    (from the data's ``document.labels.json``, which the Megatron reader applies)."""
    return read_training_rows(out / "data" / "document", rows, load_layout(out)["batch_size"], tokenizer)
