"""bench/RESULTS.md composition: a section not rerun keeps its earlier text, labelled, and only once."""

from __future__ import annotations

import json
from pathlib import Path

from bench.results import carried_over, earlier_sections, previous_sections

EARLIER = """# headwater benchmark and evaluation results

- date: 2026-11-30; commit abc1234

## Fact tracing (attribution)

About facts (12 s)

| a | b |

## Index build and search at scale

About the index.

## Demo index build: 1600 rows

inner table

## Service latency

_Not run in this pass._
"""


def test_earlier_sections_are_found_with_their_own_subheadings() -> None:
    found = previous_sections(EARLIER, ["Fact tracing (attribution)", "Index build and search at scale",
                                        "Service latency", "Never run"])
    assert found["Fact tracing (attribution)"] == "About facts (12 s)\n\n| a | b |"
    assert "## Demo index build: 1600 rows" in found["Index build and search at scale"]  # stays inside
    assert found["Service latency"] == "_Not run in this pass._" and "Never run" not in found


def test_a_carried_section_is_labelled_once() -> None:
    once = carried_over("| a | b |", "2026-11-30; commit abc1234")["markdown"]
    assert once.startswith("_Not rerun in this pass: carried over from the pass of 2026-11-30; commit abc1234._")
    twice = carried_over(once.strip(), "2026-12-01; commit def5678")["markdown"]
    assert twice == once and "def5678" not in twice


def test_a_table_counts_as_rows_only_past_its_header() -> None:
    from bench.results import has_rows

    assert not has_rows("## T\n\n| a | b |\n|---|---|\n")
    assert has_rows("| a | b |\n|---|---|\n| 1 | 2 |\n")


def test_the_summary_section_ends_where_the_next_section_begins() -> None:
    """Looked up alone, the summary (first) section ran to the end of the file and was carried over with every
    later section inside it: RESULTS.md held each section twice."""
    from bench.results import SUMMARY_TITLE, earlier_sections

    earlier = EARLIER.replace("## Fact tracing", f"## {SUMMARY_TITLE}\n\n| m | x |\n\n## Fact tracing")
    found = earlier_sections(earlier, ["Fact tracing (attribution)", "Index build and search at scale"])
    assert found[SUMMARY_TITLE] == "| m | x |"
    assert found["Fact tracing (attribution)"] == "About facts (12 s)\n\n| a | b |"


def test_no_earlier_results_no_earlier_sections() -> None:
    assert earlier_sections("", ["Fact tracing (attribution)"]) == {}
    assert previous_sections("# headwater benchmark and evaluation results\n", ["Sketch throughput"]) == {}


def test_without_a_stored_table_the_earlier_section_is_carried() -> None:
    from bench.results import EVIDENCE_TITLE, evidence_headline

    before = {EVIDENCE_TITLE: "| method | LDS from scratch, drop 1 % |\n|---|---|\n| BM25 | 0.194 |"}
    headline = evidence_headline("", before, "2026-12-02; commit 06ddd31")
    assert "LDS from scratch, drop 1 %" in headline and "carried over from the pass of 2026-12-02" in headline
    assert evidence_headline("", {}, "an earlier pass") == ""
    table = "| method | removal, second case: Δ nats (× random) |\n|---|---|\n| BM25 | 1.56 (4.1×) |\n"
    headline = evidence_headline(table, before, "2026-12-02; commit 06ddd31")
    assert headline.startswith(f"## {EVIDENCE_TITLE}") and "carried over" not in headline and "1.56" in headline


def test_a_pass_of_some_sections_updates_their_columns_and_keeps_the_others(tmp_path: Path) -> None:
    """Rerunning only the removal section once made a table of its columns alone; then the whole earlier table was
    kept, however stale. Now the pass's columns replace theirs in the store and the others keep their pass."""
    from bench import evidence_store
    from bench.results import stored_evidence

    store = tmp_path / "evidence.json"
    out = tmp_path / "out"
    _write(out / "field-lds" / "field_lds.json", {"lds": {"drop": {"bm25": {"mean": 0.194, "ci95": [0.15, 0.24]}}}})
    first = stored_evidence(store, out, {"field-lds": {"ok": True, "measured": "2026-12-02; commit aaa"}})
    assert "| BM25 | 0.194 |" in first and "Every column was measured in one pass: 2026-12-02; commit aaa." in first
    _write(out / "removal-k40" / "removal.json", {"selections": {"bm25": {"target": 1.56, "vs_random": 4.1}}})
    _write(out / "removal-demo" / "removal.json", {"selections": {"bm25": {"target": 9.9, "vs_random": 9.9}}})
    _write(out / "field-lds" / "field_lds.json", {"lds": {"drop": {"bm25": {"mean": 0.5, "ci95": [0.4, 0.6]}}}})
    results = {"removal": {"ok": True, "measured": "2026-12-07; commit bbb"},
               "field-lds": {"ok": True, "carried": True, "measured": "2026-12-07; commit bbb"},
               "removal-demo": {"ok": False, "measured": "2026-12-07; commit bbb"}}
    second = stored_evidence(store, out, results)
    assert "| BM25 | 0.194 | 1.56 (4.1×) |" in second  # the carried LDS column keeps its reading; no failed column
    assert "- 2026-12-02; commit aaa: LDS from scratch, drop 1 %" in second
    assert "- 2026-12-07; commit bbb: removal, second case: Δ nats (× random)" in second
    assert set(evidence_store.load(store)) == {"LDS from scratch, drop 1 %", "removal, second case: Δ nats (× random)"}


def test_a_saved_result_without_its_pass_or_from_an_earlier_day_replaces_nothing(tmp_path: Path) -> None:
    """A result.json kept from before passes were recorded, or a report older than the stored column (a stale
    bench-out re-read with --reuse), must not overwrite a newer reading."""
    from bench import evidence_store
    from bench.evidence import COLUMNS, Cell
    from bench.results import stored_evidence

    store = tmp_path / "evidence.json"
    drop = COLUMNS[0]
    evidence_store.save(store, {drop.title: evidence_store.StoredColumn("2026-12-07; commit new",
                                                                        {"bm25": Cell(0.3)})})
    _write(tmp_path / "field-lds" / "field_lds.json", {"lds": {"drop": {"bm25": {"mean": 0.1, "ci95": [0, 0.2]}}}})
    for result in ({"ok": True}, {"ok": True, "measured": "2026-12-01; commit old"}):
        assert "| BM25 | 0.300 |" in stored_evidence(store, tmp_path, {"field-lds": result})
    assert "| BM25 | 0.100 |" in stored_evidence(store, tmp_path, {"field-lds": {"ok": True, "measured":
                                                                                 "2026-12-07; commit newer"}})


def test_an_unreadable_store_or_report_is_left_alone_and_gives_no_table(tmp_path: Path) -> None:
    from bench.results import stored_evidence

    store = tmp_path / "evidence.json"
    store.write_text("{not json")
    _write(tmp_path / "out" / "removal-k40" / "removal.json", {"selections": {"bm25": {"target": 1.0}}})
    ran = {"removal": {"ok": True, "measured": "now"}}
    assert stored_evidence(store, tmp_path / "out", ran) == ""
    assert store.read_text() == "{not json"
    store.unlink()
    (tmp_path / "out" / "removal-k40" / "removal.json").write_text('{"selections": ')  # a truncated report
    assert stored_evidence(store, tmp_path / "out", ran) == "" and not store.exists()


def test_a_store_that_cannot_be_written_still_gives_the_table(tmp_path: Path) -> None:
    from bench.results import stored_evidence

    _write(tmp_path / "out" / "removal-k40" / "removal.json", {"selections": {"bm25": {"target": 1.0}}})
    store = tmp_path / "no-such-folder" / "evidence.json"  # the write fails as a full disk would: OSError
    table = stored_evidence(store, tmp_path / "out", {"removal": {"ok": True, "measured": "2026-12-07; commit a"}})
    assert "| BM25 | — |" not in table and "1.00" in table and not store.exists()


def test_the_pass_stamp_names_the_date_commit_and_a_quick_pass() -> None:
    import datetime

    from bench.results import pass_stamp

    stamp = pass_stamp(4)
    assert stamp.startswith(f"{datetime.date.today().isoformat()}; commit ") and stamp.endswith(
        "; a quick pass of 4 LDS retrains")
    assert "quick" not in pass_stamp()

def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))


def test_a_section_never_run_is_not_carried_over_as_a_measurement() -> None:
    """A section whose earlier text was its description and "_Not run in this pass._" was labelled "carried over
    from the pass of …" as if that pass had measured it."""
    from bench.results import measured_before

    assert not measured_before("_Not run in this pass._")
    assert not measured_before("About the section.\n\n_Not run in this pass._\n")
    assert not measured_before("_Not rerun in this pass: carried over from the pass of X._\n\nAbout.\n\n"
                               "_Not run in this pass._")
    assert measured_before("About facts (12 s)\n\n| a | b |")
    assert not measured_before("_Not run: the bench-only environment .venv-bench/ is missing; create it._")


def test_a_stored_cell_of_the_wrong_type_gives_no_table_and_no_crash(tmp_path: Path) -> None:
    from bench.evidence import COLUMNS
    from bench.results import stored_evidence

    store = tmp_path / "evidence.json"
    store.write_text(json.dumps({"schema": 1, "columns": {COLUMNS[0].title: {"measured": "x", "cells": {
        "bm25": {"value": "high"}, "newton": {"value": 0.3}}}}}))
    assert stored_evidence(store, tmp_path / "out", {}) == ""
