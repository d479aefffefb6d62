"""Every evaluation leaves the same pair of files: ``OUT/NAME.json`` (the report) and ``OUT/NAME.md`` (its table)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_report_files(report: dict, out: Path, name: str, markdown: Callable[[dict], str]) -> None:
    """``OUT/NAME.json`` and ``OUT/NAME.md`` (``markdown`` renders the report), each written whole to a temporary
    file and renamed over the old one, so a killed run never leaves half a report."""
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{name}.json", json.dumps(report, indent=2)), (out / f"{name}.md", markdown(report))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
