"""The behaviour-case diagnostic of ``unlearning``'s variants: measured per seed on a tiny case, summarized over
seeds and tasks, and bad flags refused."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.behaviour_variants import SEED_FILE, SHARES, main, markdown, measure_seed, meets_aims, summary
from evaluation.behaviour_case import TASKS, TINY_CASE


def test_each_variant_is_measured_per_task_and_summarized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured = {1: measure_seed(tmp_path / "seed-1", replace(TINY_CASE, seed=1), ["default", "exhaustive"])}
    # a rerun reuses what the first one saved, without opening the case's session again
    monkeypatch.setattr("bench.behaviour_variants.behaviour_session", lambda *_: pytest.fail("measured again"))
    assert measure_seed(tmp_path / "seed-1", replace(TINY_CASE, seed=1), ["exhaustive", "default"]) == measured[1]
    # a result saved before a share was measured is measured again
    saved_file = tmp_path / "seed-1" / SEED_FILE
    saved = json.loads(saved_file.read_text())
    del saved["variants"]["default"]["tasks"]["double"]["other_unshared_10"]
    saved_file.write_text(json.dumps(saved))

    def remeasured(*_: object) -> None:
        raise RuntimeError("remeasured")
    monkeypatch.setattr("bench.behaviour_variants.behaviour_session", remeasured)
    with pytest.raises(RuntimeError, match="remeasured"):
        measure_seed(tmp_path / "seed-1", replace(TINY_CASE, seed=1), ["default"])
    monkeypatch.undo()
    for by_variant in measured.values():
        assert set(by_variant) == {"default", "exhaustive"}
        for entry in by_variant.values():
            assert set(entry["tasks"]) == set(TASKS) and entry["seconds"] > 0
            assert all(set(t) == set(SHARES) and 0 <= t[s] <= 1 for t in entry["tasks"].values() for s in t)
            assert all(t["other_unshared_10"] <= t["other_phrasing_10"] for t in entry["tasks"].values())
    summed = summary(measured)
    shares = [t["other_phrasing_10"] for by_variant in measured.values()
              for t in by_variant["exhaustive"]["tasks"].values()]
    assert summed["exhaustive"]["other_phrasing_10"] == pytest.approx(sum(shares) / len(shares))
    table = markdown({"seeds": measured, "summary": summed})
    assert table.count("| 1 | default |") == 1 and "| exhaustive |" in table


def test_both_aims_must_hold_on_every_task() -> None:
    good = {"precision_10": 0.9, "precision_100": 0.5, "other_phrasing_10": 0.3, "other_unshared_10": 0.1}
    assert meets_aims({"a": good, "b": good})
    assert not meets_aims({"a": good, "b": {**good, "other_phrasing_10": 0.2}})
    assert not meets_aims({"a": {**good, "precision_10": 0.8}})
    by_seed = {0: {"v": {"tasks": {"a": good}, "seconds": 1.0}},
               1: {"v": {"tasks": {"a": {**good, "precision_10": 0.5}}, "seconds": 1.0}}}
    assert summary(by_seed)["v"]["seeds_meeting_aims"] == [0]
    assert summary(by_seed)["v"]["precision_10"] == pytest.approx(0.7)


@pytest.mark.parametrize("flags", [["--variants", "nope"], ["--variants", "default,related"], ["--seeds", "0,0"],
                                   ["--seeds", "x"], ["--seeds", "-1"]])
def test_bad_flags_are_refused_before_any_work(tmp_path: Path, flags: list[str], monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["behaviour_variants", "--out", str(tmp_path / "out"), *flags])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2 and "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()
