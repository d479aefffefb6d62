"""Task queries that name one phrasing, both, or an unseen third: built from the case's held-out instances, measured
per seed on a tiny case, summarized, and bad flags refused."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench import behaviour_phrasings
from bench.behaviour_phrasings import (
    KINDS,
    SHARES,
    UNSEEN,
    check_unseen,
    instruction_words,
    main,
    markdown,
    measure_seed,
    phrasing_shares,
    queries,
    summary,
)
from evaluation.behaviour_case import TASKS, TINY_CASE, Instance


def instances() -> list[Instance]:
    words = [("alpha", "beta"), ("gamma", "delta"), ("eps", "zeta"), ("eta", "theta")]
    return [Instance(task, phrasing, w) for task in TASKS for phrasing in (0, 1) for w in words]


def test_the_unseen_instructions_share_no_word_with_their_tasks_phrasings(monkeypatch: pytest.MonkeyPatch) -> None:
    check_unseen()
    monkeypatch.setitem(UNSEEN, "double", "Say them in pairs:")  # "say" is the first phrasing's word
    with pytest.raises(ValueError, match="double shares \\['say'\\]"):
        check_unseen()


def test_the_three_queries_hold_one_phrasing_both_or_an_unseen_instruction() -> None:
    asked, both, unseen = queries(instances(), "spell", 4)
    assert [q.kind for q in (asked, both, unseen)] == list(KINDS)
    assert {i.phrasing for i in asked.instances} == {0} and len(asked.prompts) == 4
    assert [i.phrasing for i in both.instances] == [0, 0, 1, 1]
    assert unseen.instances == asked.instances  # the same words and answers, another instruction
    assert [p.completion for p in unseen.prompts] == [p.completion for p in asked.prompts]
    phrasing_words = set().union(*(instruction_words(p) for p in TASKS["spell"].phrasings))
    for prompt in unseen.prompts:
        assert prompt.prompt.startswith(f" {UNSEEN['spell']} ") and prompt.prompt.endswith(" =>")
        assert not (instruction_words(prompt.prompt) - {"alpha", "beta", "gamma", "delta"}) & phrasing_words


def test_shares_count_each_phrasing_and_the_rows_sharing_no_word() -> None:
    labels = [{"task": "double", "phrasing": 0, "words": ["a", "b"]},
              {"task": "double", "phrasing": 1, "words": ["c", "d"]},
              {"task": "spell", "phrasing": 0, "words": ["a", "b"]},
              None]
    rows = [0, 1, 2, 3] * 3  # 12 rows ranked: the top 10 holds rows 0 and 1 three times, 2 and 3 twice
    got = phrasing_shares(rows[:10], labels, "double", frozenset({"a"}))
    assert got == {"precision_10": pytest.approx(0.6), "precision_100": pytest.approx(0.6),
                   "phrasing_1_10": pytest.approx(0.3), "phrasing_2_10": pytest.approx(0.3),
                   "unshared_10": pytest.approx(0.3)}  # row 1 alone shares no word with the query's "a"
    assert got["phrasing_1_10"] + got["phrasing_2_10"] == pytest.approx(got["precision_10"])
    assert all(v != v for v in phrasing_shares([], labels, "double", frozenset()).values())  # nan: nothing found


def test_each_method_and_query_is_measured_per_task_and_summarized(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = replace(TINY_CASE, seed=2)
    measured = {2: measure_seed(tmp_path / "seed-2", case, ["bm25", "gradient"])}
    monkeypatch.setattr(behaviour_phrasings, "behaviour_session", lambda *_: pytest.fail("measured again"))
    assert measure_seed(tmp_path / "seed-2", case, ["bm25", "gradient"]) == measured[2]  # reused as saved
    monkeypatch.undo()
    result = measured[2]
    assert set(result["methods"]) == {"bm25", "gradient"} and all(s > 0 for s in result["seconds"].values())
    for by_kind in result["methods"].values():
        assert set(by_kind) == set(KINDS)
        for by_task in by_kind.values():
            assert set(by_task) == set(TASKS)
            for entry in by_task.values():
                assert set(entry) == set(SHARES) and all(0 <= v <= 1 for v in entry.values())
                assert entry["phrasing_1_10"] + entry["phrasing_2_10"] == pytest.approx(entry["precision_10"])
                assert entry["unshared_10"] <= entry["precision_10"]
    assert set(result["accuracy"]) == set(TASKS)
    assert all(0 <= result["accuracy"][t][k] <= 1 for t in TASKS for k in KINDS)
    summed = summary(measured)
    p10 = [t["precision_10"] for t in result["methods"]["bm25"]["unseen"].values()]
    assert summed["bm25"]["unseen"]["precision_10"] == pytest.approx(sum(p10) / len(p10))
    table = markdown({"seeds": measured, "summary": summed})
    assert table.count("| bm25 | unseen |") == 1 and table.count("| 2 | gradient |") == 1


@pytest.mark.parametrize("flags", [["--methods", "nope"], ["--methods", ""], ["--seeds", "0,0"], ["--seeds", "x"],
                                   ["--seeds", "-1"]])
def test_bad_flags_are_refused_before_any_work(tmp_path: Path, flags: list[str], monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["behaviour_phrasings", "--out", str(tmp_path / "out"), *flags])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2 and "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()
