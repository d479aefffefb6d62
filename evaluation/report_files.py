"""Every evaluation leaves the same pair of files: ``OUT/NAME.json`` (the report) and ``OUT/NAME.md`` (its table)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_report_files(report: dict, out: Path, name: str, markdown: Callable[[dict], str]) -> None:
    """``OUT/NAME.json`` and ``OUT/NAME.md`` (``markdown`` renders the report)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{name}.md").write_text(markdown(report))
