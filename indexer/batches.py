"""The batch viewer: what did the model see at a given row range or training step?

Pythia ships a similar tool; ours reads the same Megatron files (single or split ``.bin``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attribution.errors import ConfigError
from attribution.models import load_tokenizer
from indexer.megatron import MegatronDataset
from indexer.training_rows import (
    PYTHIA_BATCH_SIZE,
    RowRange,
    check_rows,
    layout_batch_size,
    parse_range,
    read_training_rows,
    rows_for_steps,
)


def default_batch_size(prefix: Path) -> int:
    """The batch size recorded in ``layout.json`` beside the data, else Pythia's 1024."""
    return layout_batch_size(prefix, PYTHIA_BATCH_SIZE)


def select_rows(num_rows: int, rows: str | None, step: int | None, batch_size: int) -> RowRange:
    """Resolve ``--rows`` or ``--step`` (exactly one) into a row range."""
    if (rows is None) == (step is None):
        raise ConfigError("give exactly one of --rows A:B or --step N")
    if step is not None:
        return rows_for_steps(num_rows, batch_size, step, step + 1)
    start, stop = parse_range(rows, "rows")
    return check_rows(num_rows, start, stop)


def show_rows(
    prefix: str | Path,
    rows: str | None = None,
    step: int | None = None,
    batch_size: int | None = None,
    tokenizer: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one JSON-ready record per selected row."""
    prefix = Path(prefix)
    size = default_batch_size(prefix) if batch_size is None else batch_size
    if size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {size}")
    span = select_rows(len(MegatronDataset(prefix)), rows, step, size)
    decoder = load_tokenizer(tokenizer) if tokenizer else None
    for example in read_training_rows(prefix, span, size, decoder):
        meta = example.metadata
        record: dict[str, Any] = {"row": meta["row"], "step": meta["step"], "batch_pos": meta["batch_pos"],
                                  "tokens": example.token_ids.tolist()}
        if example.text is not None:
            record["text"] = example.text
        yield record
