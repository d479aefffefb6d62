"""The behaviour case and its measurement, at a tiny size: demonstrations where the labels say, two phrasings that
share no word, held-out queries, every method measured as a task and per instance, and bad input refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attribution.models import load_tokenizer
from evaluation.behaviour_case import (
    TASKS,
    TINY_CASE,
    Instance,
    build_behaviour_case,
    query_instances,
    row_labels,
    training_rows,
)
from evaluation.behaviours import BehaviourSettings, markdown, run_behaviours, shares
from headwater.cli import app


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_behaviour_case(tmp_path_factory.mktemp("behaviours"), TINY_CASE)


def test_each_task_answers_as_named_and_its_phrasings_share_no_word() -> None:
    words = ["red", "fox", "ran"]
    assert TASKS["double"].answer(words) == "red red fox fox ran ran"
    assert TASKS["spell"].answer(words) == "r e d / f o x / r a n"
    assert TASKS["reverse"].answer(words) == "ran fox red"
    for task in TASKS.values():
        first, second = ({w.strip(":,").lower() for w in p.split()} for p in task.phrasings)
        assert not first & second
    assert Instance("double", 1, ("a", "b")).prompt == "Repeat each token two times over: a b =>"


def test_the_rows_hold_the_demonstrations_their_labels_name(built: Path) -> None:
    tokenizer = load_tokenizer(built / "tokenizer")
    labels, rows = row_labels(built), training_rows(built)
    assert len(rows) == TINY_CASE.rows and all(len(r) == TINY_CASE.seq_len + 1 for r in rows)
    demos = [(row, label) for row, label in enumerate(labels) if label is not None]
    assert len(demos) == len(TASKS) * 2 * TINY_CASE.demos
    for row, label in demos:
        instance = Instance(label["task"], label["phrasing"], tuple(label["words"]))
        assert instance.prompt + instance.completion in tokenizer.decode(rows[row].tolist())
    seen = {tuple(label["words"]) for _, label in demos}
    queries = query_instances(TINY_CASE, built, 3)
    assert queries and not any(q.words in seen for q in queries)  # inputs the model never saw
    assert {(q.task, q.phrasing) for q in queries} == {(t, p) for t in TASKS for p in (0, 1)}


def test_shares_count_the_tasks_rows_and_the_other_phrasing() -> None:
    labels = [None, {"task": "double", "phrasing": 0}, {"task": "double", "phrasing": 1}, {"task": "spell",
                                                                                            "phrasing": 1}]
    got = shares([1, 2, 3, 0], labels, "double")
    assert got == {"precision_10": 0.5, "precision_100": 0.5, "other_phrasing_10": 0.25}


def test_every_method_is_measured_as_a_task_and_per_instance(built: Path) -> None:
    out = built.parent
    report = run_behaviours(out, TINY_CASE, BehaviourSettings(queries=3))
    assert set(report["accuracy"]) == set(TASKS) and set(report["retrieval"]) == set(TASKS)
    for accuracy in report["accuracy"].values():
        assert set(accuracy) == {"phrasing_1", "phrasing_2", "tokens_1", "tokens_2"}
        assert all(0.0 <= v <= 1.0 for v in accuracy.values())
        assert accuracy["tokens_1"] >= accuracy["phrasing_1"]  # a whole answer right has every token right
    for methods in report["retrieval"].values():
        assert set(methods) == {"gradient", "unlearning", "bm25", "embedding"}
        for entry in methods.values():
            assert all(0.0 <= value <= 1.0 for value in entry.values())
            assert entry["other_phrasing_10"] <= entry["precision_10"]
    for selection in ("gradient", "bm25", "random", "unlearning"):
        assert math.isfinite(report["ablation"][selection]["related_over_target"])
    text = (out / "behaviours.md").read_text()
    assert text == markdown(report) and "| double | gradient |" in text and "| random |" in text


def test_bad_behaviour_settings_are_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in ((["--queries", "0"], "--queries must be at least 1"),
                          (["--methods", "tea-leaves"], "tea-leaves"),
                          (["--demos", "600"], "do not fit")):
        result = runner.invoke(app, ["eval", "behaviours", "--out", str(tmp_path / "r"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
