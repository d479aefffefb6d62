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


def test_a_pass_of_some_columns_keeps_the_earlier_evidence_table_whole() -> None:
    """Rerunning only the removal section made a table of its two columns and dropped the LDS columns from
    RESULTS.md and the README; now the earlier table stays (labelled) until a pass covers every column."""
    from bench import evidence
    from bench.results import EVIDENCE_TITLE, evidence_headline

    partial = "| method | removal, second case: Δ nats (× random) |\n|---|---|\n| BM25 | 1.56 (4.1×) |\n"
    before = {EVIDENCE_TITLE: "| method | LDS from scratch, drop 1 % |\n|---|---|\n| BM25 | 0.194 |"}
    table, headline = evidence_headline(partial, before, "2026-12-02; commit 06ddd31")
    assert table == "" and "LDS from scratch, drop 1 %" in headline and "carried over" in headline
    assert "removal, second case" not in headline
    full = ("| method | " + " | ".join(c.title for c in evidence.COLUMNS) + " |\n|---|" + "---|" * len(evidence.COLUMNS)
            + "\n| BM25 |" + " 1 |" * len(evidence.COLUMNS) + "\n")
    assert evidence.missing_columns(full) == [] and len(evidence.missing_columns(partial)) == len(evidence.COLUMNS) - 1
    table, headline = evidence_headline(full, before, "2026-12-02; commit 06ddd31")
    assert table == full and "carried over" not in headline and headline.startswith(f"## {EVIDENCE_TITLE}")
    table, headline = evidence_headline(partial, {}, "an earlier pass")  # nothing earlier to keep: the partial one
    assert table == partial and "removal, second case" in headline
