"""Every evaluation leaves the same pair of files: ``OUT/NAME.json`` (the report) and ``OUT/NAME.md`` (its table);
the resumable ones record each retrain under a key — the rows it dropped as a digest — written whole or not at all."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def write_whole(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file renamed over it, so a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def rows_digest(rows: Sequence[int] | np.ndarray) -> str:
    """A short digest of a list of row ids (in its order), for a retrain's key."""
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def as_json(record: dict) -> dict:
    """A key as it reads back from JSON (tuples become lists), so a stored key compares equal to a fresh one."""
    return json.loads(json.dumps(record))


def write_report_files(report: dict, out: Path, name: str, markdown: Callable[[dict], str]) -> None:
    """``OUT/NAME.json`` and ``OUT/NAME.md`` (``markdown`` renders the report), each written whole to a temporary
    file and renamed over the old one, so a killed run never leaves half a report."""
    out.mkdir(parents=True, exist_ok=True)
    write_whole(out / f"{name}.json", json.dumps(report, indent=2))
    write_whole(out / f"{name}.md", markdown(report))
