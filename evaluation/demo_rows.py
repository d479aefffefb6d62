"""Read a built demo back: its labelled training rows (its planted facts: ``indexer.groundtruth``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from attribution.errors import ConfigError
from attribution.records import Example
from indexer.training_rows import RowRange, read_layout, read_training_rows


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
