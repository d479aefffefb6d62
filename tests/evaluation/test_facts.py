"""Fact tracing (``headwater eval facts``) on a tiny demo index: schema, ranges, agreement with the API, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from attribution.errors import ConfigError
from attribution.session import AttributionSession
from evaluation.facts import FactSelection, demo_dir, known_facts, load_demo_facts, trace_facts
from evaluation.metrics import first_gold_rank
from headwater.cli import app

runner = CliRunner()


def test_bench_quality_reexports_the_moved_functions() -> None:
    import bench.quality
    import evaluation.facts

    assert bench.quality.known_facts is evaluation.facts.known_facts
    assert bench.quality.evaluate is evaluation.facts.evaluate


def test_selection_matches_the_build_accuracy(session: AttributionSession, selection: FactSelection,
                                             tiny_demo: Path) -> None:
    built = json.loads((tiny_demo / "model" / "training.json").read_text())["fact_accuracy"]["train_prompts"]
    assert selection.accuracy == pytest.approx(built["whole_completion"])
    indexed = set(session.ids.tolist())
    assert selection.facts and all(indexed & set(f.gold_rows) for f in selection.facts)
    known, accuracy = known_facts(session, load_demo_facts(session), indexed)
    assert accuracy == selection.accuracy
    assert {f.fact_id for f in known} <= {f.fact_id for f in selection.facts}


def test_report_schema_ranges_and_agreement_with_the_api(session: AttributionSession,
                                                        selection: FactSelection) -> None:
    report = trace_facts(session, selection, ["gradient", "bm25"], contrastive=True, limit=4)
    assert report["queried_facts"] == 4 and report["selection"]["usable"] == len(selection.facts)
    rows = {(r["method"], r["prompts"]): r for r in report["rows"]}
    assert set(rows) == {(m, s) for m in ("gradient", "bm25", "gradient+contrastive") for s in ("train", "heldout")}
    for r in rows.values():
        assert 0 <= r["recall@1"] <= r["recall@10"] <= r["recall@100"] <= 1
        assert r["recall@1"] <= r["mrr"] <= r["recall@100"]
    assert rows[("bm25", "train")]["queries"] == 4
    assert rows[("bm25", "heldout")]["queries"] == sum(len(f.paraphrases) for f in selection.facts[:4])
    # chance is about 0.1 (one to three gold rows among 192)
    assert rows[("bm25", "train")]["recall@10"] >= 0.5 and rows[("gradient", "train")]["recall@10"] >= 0.5
    fact = selection.facts[0]  # one query through the public API gives the same rank
    single = trace_facts(session, selection, ["gradient"], contrastive=False, limit=1)["rows"][0]
    ranked = [r.example_id for r in session.attribute(fact.prompt, fact.completion, k=100)]
    assert single["mrr"] == pytest.approx(1 / first_gold_rank(ranked, fact.gold_rows))


def test_cli_writes_the_report(index: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "facts", "--index", str(index), "--methods", "bm25,gradient", "--limit", "3",
                                 "--all-facts", "--no-contrastive", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| bm25 | train |" in result.output and "gradient+contrastive" not in result.output
    saved = json.loads((tmp_path / "facts.json").read_text())
    assert saved["schema_version"] == 1 and saved["queried_facts"] == 3
    assert (tmp_path / "facts.md").read_text() in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "psychic"], "unknown or no methods"),
        (["--limit", "0"], "--limit must be positive"),
        (["--demo", "/nonexistent-demo"], "no facts.jsonl"),
        ([], "no usable facts"),  # the tiny model gets no fact whole
    ],
)
def test_cli_bad_input(index: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["eval", "facts", "--index", str(index), "--methods", "bm25", "--out",
                                 str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_an_index_not_built_from_the_demo_needs_demo(tmp_path: Path, tiny_demo: Path) -> None:
    config = SimpleNamespace(model=str(tmp_path / "model"), data=str(tmp_path / "data"), facts=None)
    foreign = SimpleNamespace(manifest=SimpleNamespace(config=config, counts=SimpleNamespace(parts=None)))
    with pytest.raises(ConfigError, match="give --demo"):
        demo_dir(foreign)  # type: ignore[arg-type]
    assert demo_dir(foreign, tiny_demo) == tiny_demo  # type: ignore[arg-type]


def test_unlearning_is_a_fact_tracing_method(session: AttributionSession, selection: FactSelection) -> None:
    report = trace_facts(session, selection, ["unlearning", "bm25"], contrastive=False, limit=3)
    rows = {(r["method"], r["prompts"]): r for r in report["rows"]}
    assert {("unlearning", "train"), ("unlearning", "heldout")} <= rows.keys()
    assert rows[("unlearning", "train")]["queries"] == 3
    for r in rows.values():
        assert 0 <= r["recall@1"] <= r["recall@10"] <= r["recall@100"] <= 1
