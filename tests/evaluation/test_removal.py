"""Removal and retrain on the tiny demo: selections, resumable retrains, the report and its controls."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from attribution.config import UnlearningConfig
from attribution.errors import ConfigError
from attribution.retrievers import Method, Query
from attribution.session import AttributionSession
from evaluation.removal import (
    GOLD,
    NONE,
    RANDOM,
    RemovalSettings,
    run_removal,
    selection_method,
    selections,
    split_facts,
)
from indexer.groundtruth import load_facts

SETTINGS = RemovalSettings(queries=4, controls=4, k=3, methods=("gradient", "bm25"), workers=1, bootstrap=100,
                           known_only=False)


@pytest.fixture(scope="module")
def removal(tiny_demo: Path, session: AttributionSession, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out = tmp_path_factory.mktemp("removal")
    return out, run_removal(tiny_demo, session, out, SETTINGS)


def test_every_selection_is_retrained_and_measured_against_the_baseline(removal: tuple) -> None:
    out, report = removal
    assert set(report["selections"]) == {"gradient", "bm25", RANDOM, GOLD}
    assert all((out / "removal" / name / "done.json").is_file() for name in [NONE, *report["selections"]])
    gold = report["selections"][GOLD]
    assert gold["gold_recall"] == 1.0 and gold["removed"] > 0
    assert report["selections"][RANDOM]["removed"] == SETTINGS.k * SETTINGS.queries
    assert "| gold |" in (out / "removal.md").read_text()
    assert json.loads((out / "removal.json").read_text())["schema_version"] == 1


def test_removing_the_gold_rows_raises_the_target_loss_more_than_random(removal: tuple) -> None:
    """The oracle beats the control: forgetting what states the facts costs more than forgetting random rows."""
    rows = removal[1]["selections"]
    assert rows[GOLD]["target"] > rows[RANDOM]["target"]
    assert rows[GOLD]["target"] > 0


def test_each_selection_is_compared_with_bm25_fact_by_fact(removal: tuple) -> None:
    rows = removal[1]["selections"]
    mean, low, high = rows["gradient"]["vs_bm25_paired"]
    differences = [a - b for a, b in zip(rows["gradient"]["per_query"], rows["bm25"]["per_query"], strict=True)]
    assert mean == pytest.approx(sum(differences) / len(differences)) and low <= mean <= high
    assert rows["bm25"]["vs_bm25_paired"] is None
    assert "− BM25 (paired)" in (removal[0] / "removal.md").read_text()


def test_a_rerun_trains_nothing(removal: tuple, tiny_demo: Path, session: AttributionSession) -> None:
    out, report = removal
    stamps = {p: p.stat().st_mtime_ns for p in (out / "removal").glob("*/done.json")}
    again = run_removal(tiny_demo, session, out, SETTINGS)
    assert {p: p.stat().st_mtime_ns for p in (out / "removal").glob("*/done.json")} == stamps
    assert again["selections"] == report["selections"]


def test_selections_hold_k_rows_per_query_at_most(tiny_demo: Path, session: AttributionSession) -> None:
    queries, controls = split_facts(session, load_facts(tiny_demo), SETTINGS)
    assert not {f.person for f in queries} & {f.person for f in controls}
    chosen = selections(session, queries, len(session), SETTINGS)
    assert chosen[NONE] == []
    assert all(0 < len(chosen[m]) <= SETTINGS.k * len(queries) for m in SETTINGS.methods)


def test_a_newton_selection_removes_what_the_served_newton_step_ranks_first(
        tiny_demo: Path, session: AttributionSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """``unlearning@newton`` queries the served ``unlearning`` with the Newton direction and its solver settings."""
    from attribution.config import Direction

    queries, _ = split_facts(session, load_facts(tiny_demo), SETTINGS)
    settings = RemovalSettings(queries=2, k=3, methods=("unlearning@newton@d10@i5",), workers=1, known_only=False)
    newton = replace(session.config.unlearning, direction=Direction.NEWTON, newton_damping=10.0, newton_iterations=5)
    asked: list[tuple[Method, UnlearningConfig | None]] = []
    retriever = session.retriever

    class Recording:
        def __init__(self, method: Method) -> None:
            self.method, self.inner = method, retriever(method)

        def search(self, query: Query, k: int) -> list:
            asked.append((self.method, query.unlearning))
            return self.inner.search(query, k)

    monkeypatch.setattr(session, "retriever", Recording)
    chosen = selections(session, queries[:2], len(session), settings)
    monkeypatch.undo()
    assert asked == [(Method.UNLEARNING, newton)] * 2
    expected = {r.example_id for f in queries[:2]
                for r in session.attribute(f.prompt, f.completion, k=3, method="unlearning", unlearning=newton)}
    assert chosen["unlearning@newton@d10@i5"] == sorted(expected) and 0 < len(expected) <= 6


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="unknown or no methods"):
        RemovalSettings(methods=("nope",))
    with pytest.raises(ConfigError, match="unknown or no methods \\['unlearning@foo'\\]"):
        RemovalSettings(methods=("unlearning@foo",))
    for name in ("unlearning@newton@x", "unlearning@newton@c100"):
        with pytest.raises(ConfigError, match=f"unknown or no methods \\['{name}'\\]"):
            RemovalSettings(methods=("bm25", name))
    for twice in (("bm25", "bm25"), ("unlearning@newton", "unlearning@newton@d100"),
                  ("unlearning@newton@d10@i5", "unlearning@newton@i5@d10")):
        with pytest.raises(ConfigError, match="named twice"):
            RemovalSettings(methods=twice)
    RemovalSettings(methods=("unlearning", "unlearning@newton", "unlearning@newton@d10"))  # all different
    with pytest.raises(ConfigError, match="at least 1"):
        RemovalSettings(k=0)


def test_a_newton_selection_keeps_the_sessions_other_unlearning_settings() -> None:
    from attribution.config import Direction

    base = replace(UnlearningConfig(), budget=0.25, steps=1, candidates=7)
    method, settings = selection_method("unlearning@newton@d10@i5", base)
    assert method is Method.UNLEARNING and settings == replace(
        base, direction=Direction.NEWTON, newton_damping=10.0, newton_iterations=5)
    assert selection_method("bm25", base) == (Method.BM25, None)


def test_more_training_seeds_reuse_seed_zero_and_average_each_against_its_own_baseline(
        removal: tuple, tiny_demo: Path, session: AttributionSession, tmp_path: Path) -> None:
    import shutil
    from dataclasses import replace

    out = tmp_path / "seeds"
    shutil.copytree(removal[0], out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "removal").glob("*/done.json")}
    report = run_removal(tiny_demo, session, out, replace(SETTINGS, train_seeds=2, workers=2))  # spawned workers
    assert {p: p.stat().st_mtime_ns for p in (out / "removal").glob("*/done.json")} == stamps  # seed 0 reused
    assert all((out / "removal" / "seed-1" / name / "done.json").is_file()
               for name in [NONE, *report["selections"]])
    for name, row in report["selections"].items():
        first = removal[1]["selections"][name]["target"]
        assert row["per_seed"][0] == pytest.approx(first, abs=1e-9) and len(row["per_seed"]) == 2
        assert row["target"] == pytest.approx(sum(row["per_seed"]) / 2, abs=1e-9)
    assert "per seed" in (out / "removal.md").read_text()
    with pytest.raises(ConfigError, match="at least 1"):
        RemovalSettings(train_seeds=0)


def test_cli_refuses_zero_training_seeds_before_opening_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from headwater.cli import app

    result = CliRunner().invoke(app, ["eval", "removal", "--index", str(tmp_path / "none"), "--out",
                                      str(tmp_path / "out"), "--train-seeds", "0"])
    assert result.exit_code != 0 and "train_seeds must be at least 1" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
