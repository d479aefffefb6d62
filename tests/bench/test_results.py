"""bench/RESULTS.md composition: a section not rerun keeps its earlier text, labelled, and only once."""

from __future__ import annotations

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
