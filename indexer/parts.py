"""Appended data: each ``--append`` adds a part, ``OUT/work/parts/NN``, merged after the earlier ones.

Part 0 is ``OUT/work`` itself. Every part shares the index settings (model, projection,
preconditioner, …) and differs only in ``data``/``steps``; its ids must come after every
id already indexed (Megatron rows are global; streamed text is offset past them).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from attribution.errors import ConfigError
from indexer.config import SEARCH_SETTINGS, IndexConfig, IndexMismatchError, check_same
from indexer.errors import CorruptShardError
from indexer.sources import open_source
from indexer.workdir import CONFIG, DONE, PART_RECORD, SHARDS, parts_dir, work_dir


def part_dirs(out: Path) -> list[Path]:
    parts = parts_dir(out)
    return [work_dir(out), *sorted(p for p in parts.iterdir() if p.is_dir())] if parts.is_dir() else [work_dir(out)]


def last_indexed_id(out: Path) -> int:
    """The largest example id in any finished shard of any part (-1 when none)."""
    last = -1
    for part in part_dirs(out):
        for done in part.glob(f"{SHARDS}/{DONE}"):
            record = json.loads(done.read_text())
            if record["last_id"] is not None:
                last = max(last, int(record["last_id"]))
    return last


def indexed_examples(out: Path) -> int:
    """Examples in the finished shards of every part."""
    return sum(json.loads(done.read_text())["count"] for part in part_dirs(out) for done in
               part.glob(f"{SHARDS}/{DONE}"))


def plan_append(out: Path, config: IndexConfig) -> tuple[Path, int]:
    """The part directory for ``config``'s data (new or, on a rerun, existing) and its id offset.

    A new part is refused while another append has not finished (its ids would overlap that part's): rerun that
    append, or discard it (:func:`discard_part`)."""
    saved = work_dir(out) / CONFIG
    if not saved.is_file():
        raise CorruptShardError(f"{out}: no index to append to; build it first without --append")
    base = IndexConfig.load(saved)
    check_same(base, replace(config, data=base.data, steps=base.steps), out, allow=SEARCH_SETTINGS)
    for part in part_dirs(out):
        existing = IndexConfig.load(part / CONFIG)
        if (existing.data, existing.steps) == (config.data, config.steps):
            return part, json.loads((part / PART_RECORD).read_text())["id_offset"] if part != work_dir(out) else 0
    for part in unfinished_parts(out):
        raise IndexMismatchError(f"{unfinished_message(out, part)}, then append again")
    offset = last_indexed_id(out) + 1
    source = open_source(config.data, config.steps, config.batch_rows, config.rows)
    if source.global_ids and source.first_row < offset:
        raise IndexMismatchError(f"{out}: appended rows start at {source.first_row} but rows up to {offset - 1} "
                                 "are indexed already; append only later steps")
    numbers = [int(p.name) for p in part_dirs(out)[1:]]
    part = parts_dir(out) / f"{max(numbers, default=0) + 1:02d}"
    part.mkdir(parents=True)
    (part / PART_RECORD).write_text(json.dumps({"id_offset": offset, "finished": False}))
    config.save(part / CONFIG)
    return part, offset


def unfinished_parts(out: Path) -> list[Path]:
    """Appended parts whose sketch pass has not finished (parts written before this was recorded count as
    finished)."""
    return [part for part in part_dirs(out)[1:]
            if not json.loads((part / PART_RECORD).read_text()).get("finished", True)]


def unfinished_message(out: Path, part: Path) -> str:
    """What an unfinished part is and the two ways on: rerun its append, or discard it."""
    config = IndexConfig.load(part / CONFIG)
    command = f"--data {config.data}" + (f" --steps {config.steps}" if config.steps else "")
    return (f"{part}: an earlier append ({command}) did not finish; rerun it to finish it (ranks of a Slurm array: "
            f"once all are done, 'headwater index merge {out}'), or discard it with 'headwater index discard {out} "
            f"--part {part.name}'")


def mark_part(part: Path, finished: bool, failed: bool = False) -> None:
    """Record whether every shard of an appended part is written, and whether its last run failed (part 0,
    ``OUT/work``, needs no record)."""
    record = part / PART_RECORD
    if record.is_file():  # replaced whole: another rank may be reading it
        tmp = record.with_name(f".tmp-{os.getpid()}-part.json")
        tmp.write_text(json.dumps({**json.loads(record.read_text()), "finished": finished, "failed": failed}))
        os.replace(tmp, record)


def failed_parts(out: Path) -> list[Path]:
    """Appended parts whose last run failed: they hold only some of their data, so no merge may publish them."""
    return [part for part in part_dirs(out)[1:] if json.loads((part / PART_RECORD).read_text()).get("failed")]


def has_shards(part: Path) -> bool:
    return any(part.glob(f"{SHARDS}/{DONE}"))


def discard_part(out: Path, name: str) -> Path:
    """Remove an appended part that did not finish (its shards are in no published build); returns it."""
    part = parts_dir(out) / name
    if not (part / PART_RECORD).is_file():
        names = [p.name for p in part_dirs(out)[1:]]
        raise CorruptShardError(f"{part}: no such appended part; parts of {out}: {names or 'none'}")
    if part not in unfinished_parts(out):
        raise ConfigError(f"{part}: this append finished and may be published; only an unfinished append can be "
                          "discarded (to drop published rows, rebuild the index without them)")
    shutil.rmtree(part)
    return part


def expected_shards(part: Path) -> int | None:
    """Shard count of a part whose source knows its size (None for streams)."""
    config = IndexConfig.load(part / CONFIG)
    source = open_source(config.data, config.steps, config.batch_rows, config.rows)
    return None if source.count is None else -(-source.count // config.storage.shard_size)
