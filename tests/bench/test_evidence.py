"""The counterfactual evidence table (bench/evidence.py) from evaluation JSON written by hand, and its README
markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.evidence import BEGIN, END, render, replace_between_markers, report_columns, section


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))


def _lds(means: dict[str, tuple[float, float, float]]) -> dict:
    return {name: {"mean": m, "ci95": [lo, hi]} for name, (m, lo, hi) in means.items()}


def _removal(selections: dict[str, dict]) -> dict:
    return {"selections": selections}


def test_columns_rows_and_verdicts(tmp_path: Path) -> None:
    _write(tmp_path / "field-lds" / "field_lds.json", {"lds": {
        "drop": _lds({"unlearning": (0.30, 0.25, 0.35), "kronfluence-ekfac": (0.20, 0.15, 0.24),
                      "bm25": (0.1, 0.0, 0.2), "shuffled": (0.0, -0.04, 0.04)}),
        "half": _lds({"unlearning": (0.30, 0.20, 0.40), "bergson-ekfac": (0.35, 0.25, 0.45)}),
    }})
    _write(tmp_path / "removal-k40" / "removal.json", _removal({
        "unlearning": {"target": 2.0, "target_ci95": [1.7, 2.3], "vs_random": 5.0, "related_ratio": 0.25,
                       "vs_bm25_paired": [0.5, 0.1, 0.9]},
        "bm25": {"target": 1.5, "target_ci95": [1.2, 1.9], "vs_random": 3.75},
        "random": {"target": 0.4, "target_ci95": [0.2, 0.6], "vs_random": 1.0},
    }))
    table = render(report_columns(tmp_path))
    header = table.splitlines()[0]
    # only the columns whose report is there; the fine-tuning and demo reports are missing
    assert header == ("| method | LDS from scratch, drop 1 % | LDS from scratch, halves | removal, second case: Δ nats "
                      "(× random) |")
    assert "| **headwater `unlearning` (ascent on the query; no storage beyond the index)** | 0.300 | 0.300 | " \
           "2.00 (5.0×) |" in table
    assert "| Kronfluence EK-FAC | 0.200 | — | — |" in table
    assert "| control: shuffled scores (LDS) / random rows (removal) | 0.000 | — | 0.40 (1.0×) |" in table
    assert "bergson identity" not in table  # no value anywhere: no row
    lines = [line for line in table.splitlines() if line.startswith("- ")]
    assert lines[0].startswith("- LDS from scratch, drop 1 %: we **lead** — headwater `unlearning` 0.300 vs "
                               "Kronfluence EK-FAC 0.200 (1.500×; 95 % intervals apart)")
    assert lines[1].startswith("- LDS from scratch, halves: we **tie** — headwater `unlearning` 0.300 vs bergson "
                               "EK-FAC 0.350 (0.857×; 95 % intervals overlap)")
    # removal: against the best baseline, decided by the paired interval (here above 0), with the aims' numbers
    assert lines[2] == ("- removal, second case: Δ nats (× random): we **lead** — headwater `unlearning` 2.000 vs BM25 "
                        "1.500 (1.333×; paired difference +0.50 [+0.10, +0.90]); 5.0× random; related/target 0.25 "
                        "(aim ≤ 0.2)")


def test_a_trailing_column_says_so(tmp_path: Path) -> None:
    _write(tmp_path / "field-lds-finetune" / "field_lds.json", {"lds": {
        "drop": _lds({"gradient/block": (0.30, 0.27, 0.33), "bergson-ekfac": (0.60, 0.57, 0.63)})}})
    line = next(line for line in render(report_columns(tmp_path)).splitlines() if line.startswith("- "))
    assert line.startswith("- LDS fine-tuning, drop 1 %: we **trail** — headwater gradient, `block`, cosine 0.300")


def test_the_interval_over_queries_and_retrains_decides_where_a_report_has_it(tmp_path: Path) -> None:
    """Apart over queries alone, overlapping once retrains are resampled too: a tie, and the line says which."""
    drop = _lds({"unlearning": (0.30, 0.27, 0.33), "kronfluence-ekfac": (0.24, 0.21, 0.26)})
    drop["unlearning"]["ci95_two_way"] = [0.20, 0.40]
    drop["kronfluence-ekfac"]["ci95_two_way"] = [0.15, 0.33]
    _write(tmp_path / "field-lds" / "field_lds.json", {"lds": {"drop": drop}})
    line = next(line for line in render(report_columns(tmp_path)).splitlines() if line.startswith("- "))
    assert "we **tie**" in line and "95 % intervals (queries and retrains resampled) overlap" in line


def test_no_reports_no_section(tmp_path: Path) -> None:
    assert render(report_columns(tmp_path)) == "" and section(render(report_columns(tmp_path))) == ""


def test_unknown_intervals_and_equal_values_decide_nothing(tmp_path: Path) -> None:
    _write(tmp_path / "field-lds" / "field_lds.json", {"lds": {
        "drop": {"unlearning": {"mean": 0.30, "ci95": [float("nan"), float("nan")]},
                 "kronfluence-ekfac": {"mean": 0.10, "ci95": [0.05, 0.15]}},
        "half": _lds({"unlearning": (0.30, 0.29, 0.31), "kronfluence-ekfac": (0.30, 0.29, 0.31)})}})
    _write(tmp_path / "removal-k40" / "removal.json", _removal({
        "unlearning": {"target": 0.5, "vs_bm25_paired": [0.6, float("nan"), float("nan")]},
        "bm25": {"target": -0.1}}))
    lines = [line for line in render(report_columns(tmp_path)).splitlines() if line.startswith("- ")]
    assert "we **tie**" in lines[0] and "no intervals" in lines[0]
    assert "we **tie**" in lines[1]  # equal means
    assert "we **tie**" in lines[2] and "(–; no paired interval)" in lines[2]  # BM25 below 0: no ratio


def test_only_the_sections_that_ran_give_columns(tmp_path: Path) -> None:
    _write(tmp_path / "field-lds" / "field_lds.json", {"lds": {"drop": _lds({"unlearning": (0.3, 0.2, 0.4)})}})
    _write(tmp_path / "removal-k40" / "removal.json", _removal({"unlearning": {"target": 2.0}}))
    header = render(report_columns(tmp_path, {"removal"})).splitlines()[0]
    assert "removal, second case" in header and "LDS" not in header
    assert render(report_columns(tmp_path, set())) == ""


def test_readme_markers_are_replaced_between_and_refused_when_missing() -> None:
    text = f"# README\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n"
    replaced = replace_between_markers(text, "| new |\n")
    assert replaced == f"# README\n\nbefore\n{BEGIN}\n| new |\n{END}\nafter\n"
    assert replace_between_markers(replaced, "| new |\n") == replaced  # idempotent
    with pytest.raises(ValueError, match="markers"):
        replace_between_markers("# README without markers\n", "| new |\n")
    with pytest.raises(ValueError, match="markers"):
        replace_between_markers(f"{END}\n{BEGIN}\n", "| new |\n")


def test_the_readme_has_the_markers_make_bench_fills() -> None:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    assert "| new |" in replace_between_markers(readme.read_text(), "| new |\n")


def test_the_reports_paired_lead_decides_where_it_names_the_rows_compared(tmp_path: Path) -> None:
    """Overlapping intervals, but the report's paired lead (queries and retrains drawn together) excludes 0: a lead.
    A lead measured against another peer than the table's best decides nothing."""
    drop = _lds({"newton": (0.23, 0.16, 0.29), "kronfluence-ekfac": (0.20, 0.13, 0.27)})
    half = _lds({"newton": (0.58, 0.47, 0.65), "kronfluence-ekfac": (0.52, 0.39, 0.58)})
    lead = {"drop": {"ours": "newton", "peer": "kronfluence-ekfac", "ratio": 1.15, "difference": 0.03,
                     "difference_ci95": [0.005, 0.06]},
            "half": {"ours": "newton", "peer": "bergson-ekfac", "ratio": 1.3, "difference": 0.1,
                     "difference_ci95": [0.05, 0.15]}}
    _write(tmp_path / "field-lds" / "field_lds.json", {"lds": {"drop": drop, "half": half}, "lead": lead})
    lines = [line for line in render(report_columns(tmp_path)).splitlines() if line.startswith("- ")]
    assert lines[0] == ("- LDS from scratch, drop 1 %: we **lead** — headwater `newton` 0.230 vs Kronfluence EK-FAC "
                        "0.200 (1.150×; difference +0.030 [+0.005, +0.060], paired: queries and retrains resampled, "
                        "each side's best re-chosen in every draw)")
    assert "we **tie**" in lines[1] and "95 % intervals overlap" in lines[1]


def test_a_lead_for_a_row_the_table_does_not_show_or_without_an_interval_decides_nothing(tmp_path: Path) -> None:
    drop = _lds({"newton": (0.23, 0.16, 0.29), "newton@d10": (0.25, 0.18, 0.31),
                 "kronfluence-ekfac": (0.20, 0.13, 0.27)})
    half = _lds({"newton": (0.58, 0.47, 0.65), "kronfluence-ekfac": (0.52, 0.39, 0.58)})
    lead = {"drop": {"ours": "newton@d10", "peer": "kronfluence-ekfac", "ratio": 1.25, "difference": 0.05,
                     "difference_ci95": [0.01, 0.09]},
            "half": {"ours": "newton", "peer": "kronfluence-ekfac", "ratio": 1.1, "difference": 0.06,
                     "difference_ci95": [float("nan"), float("nan")]}}
    _write(tmp_path / "field-lds" / "field_lds.json", {"lds": {"drop": drop, "half": half}, "lead": lead})
    lines = [line for line in render(report_columns(tmp_path)).splitlines() if line.startswith("- ")]
    assert "we **tie**" in lines[0] and "95 % intervals overlap" in lines[0]  # newton@d10 is no row of the table
    assert "we **tie**" in lines[1] and "no paired interval" in lines[1]
