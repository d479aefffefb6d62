"""``headwater attribute``: a prompt or a task file against a stored index, and bad input as exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attribution.methods import METHODS
from headwater.cli import app

runner = CliRunner()


def write_task(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_a_task_file_is_answered_as_one(tiny_index: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "task.jsonl", [{"prompt": "Ilse Varga was born in", "completion": " Tarnow"},
                                                {"prompt": "Marek Holloway was born in"}])
    result = runner.invoke(app, ["attribute", "--index", str(tiny_index), "--task", str(task), "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["rank"] for r in lines] == [1, 2, 3, 4]
    assert all(r["instances"] and {i for i, _ in r["instances"]} <= {0, 1} for r in lines)
    plain = runner.invoke(app, ["attribute", "--index", str(tiny_index), "--prompt", "Ilse Varga was born in",
                                "--completion", " Tarnow", "--k", "3", "--method", "bm25"])
    assert plain.exit_code == 0, plain.output
    assert len([line for line in plain.stdout.splitlines() if line.strip()]) == 3


def test_bad_task_input_is_exit_2(tiny_index: Path, tmp_path: Path) -> None:
    good = write_task(tmp_path / "good.jsonl", [{"prompt": "Ilse Varga was born in"}])
    base = ["attribute", "--index", str(tiny_index)]
    for args, message in (
        ([], "give --prompt (one query) or --task FILE"),
        (["--prompt", "x", "--task", str(good)], "not both"),
        (["--task", str(tmp_path / "none.jsonl")], "no such file"),
        (["--task", str(write_task(tmp_path / "bad.jsonl", ["just text"]))], "line 1: expected"),
        (["--task", str(tmp_path / "notjson.jsonl")], "no such file"),
        (["--task", str(write_task(tmp_path / "empty.jsonl", []))], "1 to 256 instances, got 0"),
        (["--task", str(write_task(tmp_path / "blank.jsonl", [{"prompt": "  "}]))], "prompt must be non-blank"),
        (["--task", str(good), "--control-task", str(good)], "the control task is the task itself"),
        (["--prompt", "x", "--control-task", str(good)], "--control-task goes with --task"),
        (["--task", str(good), "--method", "tea-leaves"], "tea-leaves"),
    ):
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x"\n')
    result = runner.invoke(app, [*base, "--task", str(tmp_path / "broken.jsonl")])
    assert result.exit_code == 2 and "line 1: not JSON" in result.output


@pytest.mark.parametrize("method", [m.value for m in METHODS])  # every registered method, from the command line
def test_every_method_answers_from_the_cli(method: str, tiny_index: Path) -> None:
    result = runner.invoke(app, ["attribute", "--index", str(tiny_index), "--prompt", "Ilse Varga was born in",
                                 "--completion", " Tarnow", "--k", "2", "--method", method, "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["rank"] for line in result.stdout.splitlines() if line.startswith("{")] == [1, 2]
