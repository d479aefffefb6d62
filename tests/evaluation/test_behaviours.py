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


def test_a_rebuild_in_another_process_is_bit_for_bit_the_same(built: Path, tmp_path: Path) -> None:
    """Same case, another process with another hash seed (set and dict orders): the same rows, tokenizer and weights."""
    import hashlib
    import os
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from evaluation.behaviour_case import TINY_CASE, "
              "build_behaviour_case; build_behaviour_case(Path(sys.argv[1]), TINY_CASE)")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env, capture_output=True)

    def digests(directory: Path) -> dict[str, str]:
        return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(directory.rglob("*")) if p.is_file()}

    again, first = digests(tmp_path / "case"), digests(built)  # (other tests may add files beside the first build)
    assert {"rows.json", "tokenizer/tokenizer.json", "data/document.bin", "model/model.safetensors"} <= set(again)
    assert again == {name: digest for name, digest in first.items() if name in again}


def test_shares_count_the_tasks_rows_the_other_phrasing_and_its_rows_sharing_no_word() -> None:
    labels = [None, {"task": "double", "phrasing": 0, "words": ["red", "fox"]},
              {"task": "double", "phrasing": 1, "words": ["fox", "ran"]}, {"task": "spell", "phrasing": 1,
                                                                           "words": ["cat", "sat"]},
              {"task": "double", "phrasing": 1, "words": ["cat", "sat"]}]
    got = shares([1, 2, 3, 0], labels, "double", frozenset())
    assert got == {"precision_10": 0.5, "precision_100": 0.5, "other_phrasing_10": 0.25, "other_unshared_10": 0.25}
    got = shares([1, 2, 3, 4], labels, "double", frozenset({"fox", "dog"}))  # row 2 shares "fox" with the query
    assert got["other_phrasing_10"] == 0.5 and got["other_unshared_10"] == 0.25


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
            assert entry["other_unshared_10"] <= entry["other_phrasing_10"]
            assert entry["instance_other_unshared_10"] <= entry["instance_other_phrasing_10"]
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


def test_task_removal_retrains_without_each_selection_and_resumes(built: Path, tmp_path: Path) -> None:
    from evaluation.behaviours import behaviour_session, first_phrasing
    from evaluation.task_removal import GOLD, NONE, RANDOM, TaskRemovalSettings, run_task_removal, task_rows

    settings = TaskRemovalSettings(methods=("gradient", "bm25"), workers=1)
    session = behaviour_session(built, BehaviourSettings(queries=3))
    labels = row_labels(built)
    instances = query_instances(TINY_CASE, built, 3)
    asked = {task: first_phrasing(instances, task, 3) for task in TASKS}
    trained: list[str] = []
    report = run_task_removal(tmp_path, TINY_CASE, built, session, labels, instances, asked, settings, trained.append)
    assert len(trained) == 1 + len(TASKS) * 4  # none, and gold / random / two methods per task
    for task, per_selection in ((t, {n: e[t] for n, e in report["per_task"].items()}) for t in TASKS):
        assert per_selection[GOLD]["gold_share"] == 1.0 and per_selection[GOLD]["rows"] == len(task_rows(labels, task))
        assert all(e["rows"] == 2 * TINY_CASE.demos for e in per_selection.values())
        assert all(math.isfinite(e["d_target"]) and math.isfinite(e["d_other_tasks"]) for e in per_selection.values())
    assert set(report["mean"]) == {GOLD, RANDOM, "gradient", "bm25"}
    assert report["mean"][RANDOM]["times_random"] == pytest.approx(1.0) or report["mean"][RANDOM]["d_target"] <= 0
    assert set(report["baseline"]) == set(TASKS) and (tmp_path / "removal" / f"{NONE}.json").is_file()
    again: list[str] = []
    assert run_task_removal(tmp_path, TINY_CASE, built, session, labels, instances, asked, settings,
                            again.append) == report and again == []  # resumed: nothing retrained


def test_the_task_removal_table_takes_differences_against_the_baseline() -> None:
    from evaluation.task_removal import removal_table

    labels = [{"task": "double", "phrasing": 0}, {"task": "spell", "phrasing": 1}, None, None]
    base = {"double": [1.0, 2.0], "spell": [1.0, 1.0], "reverse": [3.0, 3.0]}
    losses = {"none": base,
              "double-gold": {"double": [3.0, 3.0], "spell": [1.5, 1.0], "reverse": [3.0, 3.5]},
              "double-random": {"double": [1.5, 2.0], "spell": [1.0, 1.0], "reverse": [3.0, 3.0]}}
    chosen = {"double": {"gold": [0], "random": [2]}}
    table = removal_table(losses, chosen, labels)
    gold = table["per_task"]["gold"]["double"]
    assert (gold["d_target"], gold["d_target_other_phrasing"], gold["d_other_tasks"]) == (2.0, 1.0, 0.25)
    assert gold["gold_share"] == 1.0 and table["per_task"]["random"]["double"]["gold_share"] == 0.0
    assert gold["asked_phrasing_share"] == 1.0 and table["per_task"]["random"]["double"]["asked_phrasing_share"] == 0.0
    assert table["mean"]["gold"]["other_over_target"] == 0.125 and table["mean"]["gold"]["times_random"] == 4.0


def test_the_removal_table_names_the_asked_phrasings_share_and_compares_only_like_sizes_with_random() -> None:
    from evaluation.task_removal import GOLD_ASKED, GOLD_OTHER, markdown_lines, removal_table

    labels = [{"task": "double", "phrasing": 0}, {"task": "double", "phrasing": 1}, None, None]
    same = {"double": [1.0, 1.0], "spell": [1.0, 1.0], "reverse": [1.0, 1.0]}
    losses = {"none": same, "double-gold": {**same, "double": [5.0, 5.0]},
              "double-random": {**same, "double": [2.0, 1.0]},
              "double-gold_asked": {**same, "double": [4.0, 1.5]}, "double-gold_other": {**same, "double": [1.0, 3.0]}}
    chosen = {"double": {"gold": [0, 1], "random": [2, 3], GOLD_ASKED: [0], GOLD_OTHER: [1]}}
    mean = removal_table(losses, chosen, labels)["mean"]
    assert (mean["gold"]["asked_phrasing_share"], mean[GOLD_ASKED]["asked_phrasing_share"],
            mean[GOLD_OTHER]["asked_phrasing_share"]) == (0.5, 1.0, 0.0)
    assert (mean[GOLD_ASKED]["d_target"], mean[GOLD_OTHER]["d_target"]) == (3.0, 0.0)
    assert mean["gold"]["times_random"] == 4.0  # two rows each
    assert math.isnan(mean[GOLD_ASKED]["times_random"]) and math.isnan(mean[GOLD_OTHER]["times_random"])
    lines = markdown_lines({"mean": mean})
    assert any(line.startswith(f"| {GOLD_ASKED} | 1.00 (1.00) | 3.000 |") and line.endswith("| — |")
               for line in lines)
    assert any(line.startswith("| gold | 1.00 (0.50) |") and line.endswith("| 4.0 |") for line in lines)


def test_by_phrasing_removes_each_phrasings_task_rows_alone(built: Path) -> None:
    from evaluation.behaviours import behaviour_session, first_phrasing
    from evaluation.task_removal import GOLD, GOLD_ASKED, GOLD_OTHER, TaskRemovalSettings, selections

    labels = row_labels(built)
    session = behaviour_session(built, BehaviourSettings(queries=2))
    asked = {task: first_phrasing(query_instances(TINY_CASE, built, 2), task, 2) for task in TASKS}
    plain = selections(session, labels, asked, TaskRemovalSettings(methods=(), workers=1))
    chosen = selections(session, labels, asked, TaskRemovalSettings(methods=(), by_phrasing=True, workers=1))
    for task in TASKS:
        assert set(plain[task]) == {GOLD, "random"} and set(chosen[task]) == {GOLD, "random", GOLD_ASKED, GOLD_OTHER}
        mine, other = chosen[task][GOLD_ASKED], chosen[task][GOLD_OTHER]
        assert len(mine) == len(other) == TINY_CASE.demos and sorted(mine + other) == chosen[task][GOLD]
        assert all(labels[r]["task"] == task and labels[r]["phrasing"] == 0 for r in mine)
        assert all(labels[r]["task"] == task and labels[r]["phrasing"] == 1 for r in other)


def test_bad_task_removal_settings_are_exit_2(tmp_path: Path) -> None:
    for args, message in ((["--removal", "--removal-k", "-1"], "k must be 0"), (["--removal-k", "-2"], "k must be 0"),
                          (["--removal", "--workers", "0"], "workers must be at least 1"),
                          (["--removal-by-phrasing"], "give both or neither")):
        result = CliRunner().invoke(app, ["eval", "behaviours", "--out", str(tmp_path / "r"), *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_the_cli_asks_for_removal_by_phrasing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[BehaviourSettings] = []

    def run(out: Path, case: object, settings: BehaviourSettings) -> dict:
        asked.append(settings)
        return {}
    monkeypatch.setattr("evaluation.behaviours.run_behaviours", run)
    monkeypatch.setattr("evaluation.behaviours.markdown", lambda report: "")
    for flags, by_phrasing in ((["--removal"], False), (["--removal", "--removal-by-phrasing"], True)):
        result = CliRunner().invoke(app, ["eval", "behaviours", "--out", str(tmp_path / "r"), *flags])
        assert result.exit_code == 0, result.output
        assert asked[-1].removal is not None and asked[-1].removal.by_phrasing is by_phrasing


def test_several_case_seeds_are_measured_and_summarized(tmp_path: Path) -> None:
    from evaluation.behaviours import run_behaviour_seeds, seeds_markdown

    settings = BehaviourSettings(queries=2, methods=("gradient", "bm25"))
    summary = run_behaviour_seeds(tmp_path, TINY_CASE, settings, 2)
    assert summary["seeds"] == [0, 1] and not summary["removal"]
    for seed in (0, 1):
        assert (tmp_path / f"seed-{seed}" / "behaviours.json").is_file()
        assert (tmp_path / f"seed-{seed}" / "case" / "case.json").is_file()
    for entry in summary["ablation"].values():
        assert len(entry["target"]) == len(entry["other"]) == 2
        mean_target = sum(entry["target"]) / 2
        assert entry["other_over_target"] == pytest.approx(sum(entry["other"]) / 2 / mean_target)
    assert (tmp_path / "behaviours_seeds.md").read_text() == seeds_markdown(summary)
    result = CliRunner().invoke(app, ["eval", "behaviours", "--out", str(tmp_path / "r"), "--seeds", "0"])
    assert result.exit_code == 2 and "seeds must be at least 1" in result.output, result.output
