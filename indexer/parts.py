"""Appended data: each ``--append`` adds a part, ``OUT/work/parts/NN``, merged after the earlier ones.

Part 0 is ``OUT/work`` itself. Every part shares the index settings (model, projection,
preconditioner, …) and differs only in ``data``/``steps``; its ids must come after every
id already indexed (Megatron rows are global; streamed text is offset past them).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from indexer.config import SEARCH_SETTINGS, IndexConfig, IndexMismatchError, check_same
from indexer.errors import CorruptShardError
from indexer.sources import open_source


def part_dirs(out: Path) -> list[Path]:
    parts = out / "work" / "parts"
    return [out / "work", *sorted(p for p in parts.iterdir() if p.is_dir())] if parts.is_dir() else [out / "work"]


def last_indexed_id(out: Path) -> int:
    """The largest example id in any finished shard of any part (-1 when none)."""
    last = -1
    for part in part_dirs(out):
        for done in part.glob("shard-*/done.json"):
            record = json.loads(done.read_text())
            if record["last_id"] is not None:
                last = max(last, int(record["last_id"]))
    return last


def plan_append(out: Path, config: IndexConfig) -> tuple[Path, int]:
    """The part directory for ``config``'s data (new or, on a rerun, existing) and its id offset."""
    saved = out / "work" / "config.json"
    if not saved.is_file():
        raise CorruptShardError(f"{out}: no index to append to; build it first without --append")
    base = IndexConfig.load(saved)
    check_same(base, replace(config, data=base.data, steps=base.steps), out, allow=SEARCH_SETTINGS)
    for part in part_dirs(out):
        existing = IndexConfig.load(part / "config.json")
        if (existing.data, existing.steps) == (config.data, config.steps):
            return part, json.loads((part / "part.json").read_text())["id_offset"] if part != out / "work" else 0
    offset = last_indexed_id(out) + 1
    source = open_source(config.data, config.steps, config.batch_rows, config.rows)
    if source.global_ids and source.first_row < offset:
        raise IndexMismatchError(f"{out}: appended rows start at {source.first_row} but rows up to {offset - 1} "
                                 "are indexed already; append only later steps")
    part = out / "work" / "parts" / f"{len(part_dirs(out)):02d}"
    part.mkdir(parents=True)
    (part / "part.json").write_text(json.dumps({"id_offset": offset}))
    config.save(part / "config.json")
    return part, offset


def expected_shards(part: Path) -> int | None:
    """Shard count of a part whose source knows its size (None for streams)."""
    config = IndexConfig.load(part / "config.json")
    source = open_source(config.data, config.steps, config.batch_rows, config.rows)
    return None if source.count is None else -(-source.count // config.storage.shard_size)
