"""The unlearning report's removal-and-retrain column: joined by fact, oracle ↔ gold, refusals before work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attribution.errors import ConfigError
from evaluation.ablation_report import markdown
from evaluation.removal_column import load_removal, removal_column
from evaluation.targets import Target
from headwater.cli import app

FACTS = [{"prompt": f"P{i} was born in", "completion": f" C{i}"} for i in range(4)]
REMOVAL = {"settings": {"k": 10, "train_seeds": 3}, "query_facts": FACTS,
           "selections": {"gradient": {"per_query": [1.0, 2.0, 3.0, 4.0]},
                          "gold": {"per_query": [5.0, 6.0, 7.0, 8.0]},
                          "random": {"per_query": [0.0, 0.1, 0.2, 0.3]}}}


def test_the_column_averages_the_targets_the_removal_measured() -> None:
    targets = [Target(FACTS[1]["prompt"], FACTS[1]["completion"]), Target(FACTS[3]["prompt"], FACTS[3]["completion"]),
               Target("Someone else was born in", " Nowhere")]
    column = removal_column(REMOVAL, targets, ["gradient", "oracle", "random", "bm25"])
    assert column["targets"] == 2 and column["of"] == 3 and column["train_seeds"] == 3
    assert column["methods"]["gradient"]["d_target"] == pytest.approx(3.0)  # facts 1 and 3
    assert column["methods"]["oracle"] == {"d_target": pytest.approx(7.0), "selection": "gold"}
    assert "bm25" not in column["methods"]  # the removal run did not select with it
    report = {"schema_version": 2,
              "config": {"targets": 3, "examples": 10, "k": 4, "budgets": [1.0], "seeds": 1, "random_draws": 2},
              "summary": {}, "removal": column}
    text = markdown(report)
    assert "One-step check" in text and "## Removal and retrain (counterfactual, not one-step)" in text
    assert "| oracle | gold | 7.000 |" in text


def test_unjoinable_reports_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_removal(tmp_path / "missing.json")
    (tmp_path / "old.json").write_text(json.dumps({"selections": {}}))
    with pytest.raises(ConfigError, match="query facts"):
        load_removal(tmp_path / "old.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        load_removal(tmp_path / "bad.json")
    (tmp_path / "good.json").write_text(json.dumps(REMOVAL))
    assert load_removal(tmp_path / "good.json")["settings"]["k"] == 10


def test_the_ablate_command_refuses_a_bad_removal_report_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(json.dumps({"selections": {}}))
    index = tmp_path / "no-index"
    result = CliRunner().invoke(app, ["ablate", "--index", str(index), "--out", str(tmp_path / "out"),
                                      "--removal-report", str(tmp_path / "old.json")])
    assert result.exit_code != 0 and "query facts" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
