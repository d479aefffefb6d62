"""The attribution-vs-influence table of bench/RESULTS.md, from evaluation JSON written by hand."""

from __future__ import annotations

import json
from pathlib import Path

from bench.summary import attribution_vs_influence


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))


def _lds(means: dict[str, float]) -> dict:
    return {m: {"mean": v} for m, v in means.items()}


def test_lds_columns_and_the_shuffled_control_caveat(tmp_path: Path) -> None:
    _write(tmp_path / "lds" / "lds.json", {
        "config": {"top_k": 100},
        "methods": _lds({"gradient": 0.03, "bm25": 0.06, "oracle": 0.16, "shuffled": 0.16}),
        "methods_top_k": _lds({"gradient": 0.21, "bm25": 0.33, "oracle": 0.16, "shuffled": 0.01}),
    })
    _write(tmp_path / "tailpatch" / "tailpatch.json", {"summary": {"gradient": {"mean": 5.0e-4}}})
    table = attribution_vs_influence(tmp_path)
    header = next(line for line in table.splitlines() if line.startswith("| method |"))
    assert "| LDS | LDS top 100 | tail-patch Δlog p (×1e-4) |" in header
    assert "| gradient | — | — | — | 0.030 | 0.210 | 5.000 | — | — |" in table
    assert "| random rows | — | — | — | 0.160 | 0.010 |" in table
    # The all-row control ties the oracle and beats gradient: flagged; the top-100 control is beaten: not flagged.
    assert ("**LDS caveat**: the shuffled-score control scores 0.160, as high as or higher than gradient, bm25, "
            "oracle (gold rows):") in table
    assert "top-100 LDS caveat" not in table
    assert "- LDS top 100: **bm25** (0.330); gradient 0.210" in table
    assert "- tail-patch Δlog p (×1e-4): **gradient** (5.000)\n" in table  # gradient leads: not named twice


def test_reports_without_top_k_show_no_top_k_column(tmp_path: Path) -> None:
    _write(tmp_path / "lds" / "lds.json", {"methods": _lds({"gradient": 0.2, "shuffled": 0.0})})
    header = next(line for line in attribution_vs_influence(tmp_path).splitlines() if line.startswith("| method |"))
    assert "| LDS |" in header and "top" not in header
