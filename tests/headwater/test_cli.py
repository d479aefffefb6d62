"""The command line, end to end: the batch viewer and the demo build, with bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluation.demo_config import TINY
from headwater.cli import app

runner = CliRunner()


def rows_of(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_show_step_uses_the_recorded_batch_size(tiny_demo: Path) -> None:
    prefix = str(tiny_demo / "data" / "document")
    result = runner.invoke(app, ["data", "show", prefix, "--step", "2", "--tokenizer", str(tiny_demo / "tokenizer")])
    assert result.exit_code == 0, result.output
    rows = rows_of(result.output)
    b = TINY.batch_size
    assert [r["row"] for r in rows] == list(range(2 * b, 3 * b))
    assert {r["step"] for r in rows} == {2} and [r["batch_pos"] for r in rows] == list(range(b))
    assert all(len(r["tokens"]) == TINY.seq_len + 1 and isinstance(r["text"], str) for r in rows)


def test_show_rows_with_explicit_batch_size(tiny_demo: Path) -> None:
    prefix = str(tiny_demo / "data" / "document")
    result = runner.invoke(app, ["data", "show", prefix, "--rows", "5:8", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert [(r["row"], r["step"], r["batch_pos"]) for r in rows_of(result.output)] == [(5, 2, 1), (6, 3, 0), (7, 3, 1)]
    assert "text" not in rows_of(result.output)[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--step", "9999"], "outside the data"),
        (["--rows", "0:99999"], "outside the data"),
        (["--rows", "x:y"], "not of the form"),
        ([], "exactly one of --rows"),
        (["--rows", "0:2", "--step", "1"], "exactly one of --rows"),
        (["--step", "1", "--batch-size", "0"], "--batch-size must be positive"),
        (["--rows", "0:2", "--tokenizer", "/nonexistent/tok"], "cannot load tokenizer"),
    ],
)
def test_show_bad_input_is_a_clear_error(tiny_demo: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["data", "show", str(tiny_demo / "data" / "document"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_show_missing_data(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "show", str(tmp_path / "nothing"), "--rows", "0:1"])
    assert result.exit_code == 2 and "index file not found" in result.output


def test_demo_build_through_the_console_script(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "headwater.cli", "demo", "build", "--out", str(out), "--preset", "tiny"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "fact accuracy on train prompts: first token" in done.stdout
    assert (out / "model" / "training.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "up to date, skipped" in again.stderr


def test_demo_build_makes_the_behaviour_case_ready_to_index(tmp_path: Path) -> None:
    from evaluation.behaviour_case import TASKS, TINY_CASE, row_labels

    out = tmp_path / "behaviours"
    result = runner.invoke(app, ["demo", "build", "--out", str(out), "--preset", "tiny-behaviours"])
    assert result.exit_code == 0, result.output
    assert f"{TINY_CASE.rows} rows, {len(TASKS) * 2 * TINY_CASE.demos} demonstrations" in result.output
    labels = row_labels(out)
    assert len(labels) == TINY_CASE.rows and {label["task"] for label in labels if label} == set(TASKS)
    result = runner.invoke(app, ["index", "build", "--model", str(out / "model"), "--data",
                                 str(out / "data" / "document"), "--out", str(out / "index"), "--k", "4"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["index", "verify", str(out / "index")]).exit_code == 0
    result = runner.invoke(app, ["demo", "build", "--out", str(out), "--preset", "tiny-behaviours", "--seed", "3"])
    assert result.exit_code == 2 and "built with other settings" in result.output  # a different case is refused
    result = runner.invoke(app, ["demo", "build", "--out", str(out), "--preset", "tiny-behaviours", "--people", "3"])
    assert result.exit_code == 2 and "takes --seed only" in result.output


def test_demo_build_refuses_bad_settings(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "build", "--out", str(tmp_path), "--steps", "0"])
    assert result.exit_code == 2 and "steps must be positive" in result.output
    result = runner.invoke(app, ["demo", "build", "--out", str(tmp_path), "--preset", "nope"])
    assert result.exit_code == 2 and "unknown demo preset" in result.output


def test_serve_refuses_a_default_method_that_is_no_method(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--index", str(tmp_path), "--default-method", "influence"])
    assert result.exit_code == 2
    assert "--default-method" in result.output and "must be one of auto, gradient" in result.output


def test_serve_on_a_busy_port_says_so_before_anything_else(tiny_index: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--index", str(tiny_index), "--port", str(port), "--api-key", "k"])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "another --port" in result.output
    assert "curl" not in result.output and "serving" not in result.output


def test_demo_build_logs_progress_when_output_is_no_terminal(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run([str(Path(sys.executable).parent / "headwater"), "demo", "build", "--preset", "tiny",
                           "--out", str(tmp_path / "demo"), "--steps", "40"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "training: step" in line]
    assert len(lines) == 20 and "step 40/40" in lines[-1] and "to go" in lines[0]


def test_help_shows_every_option_whole_at_80_columns() -> None:
    import typer.main

    result = runner.invoke(app, ["index", "build", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    command = typer.main.get_command(app).commands["index"].commands["build"]
    flags = [opt for param in command.params for opt in param.opts if opt.startswith("--")]
    assert len(flags) > 30 and all(flag in result.output for flag in flags), flags
    assert "…" not in result.output and max(len(line) for line in result.output.splitlines()) <= 80


def test_help_loads_no_model_library() -> None:
    """``--help`` (and a typo) answer without importing torch or transformers (seconds each on a small machine)."""
    import subprocess
    import sys

    code = "import sys, headwater.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_serve_with_a_bad_setting_in_the_environment_says_which(tiny_index: Path) -> None:
    result = runner.invoke(app, ["serve", "--index", str(tiny_index), "--api-key", "k"],
                           env={"HEADWATER_BODY_TIMEOUT_S": "-1"})
    assert result.exit_code == 2 and "HEADWATER_BODY_TIMEOUT_S" in result.output and "Traceback" not in result.output


def test_ablate_leaves_out_the_given_selection_by_default() -> None:
    """``given`` needs each target's example ids, which the demo's facts do not have: by default it would only add a
    'not run' line per target."""
    result = runner.invoke(app, ["ablate", "--help"], terminal_width=200)
    default = re.search(r"--methods <str>.*?\[default:\s*([^\]]*)\]", result.output, re.S)
    assert default, result.output
    methods = re.sub(r"\s+", "", default.group(1)).split(",")
    assert "given" not in methods and {"gradient", "random", "bm25", "oracle"} <= set(methods)


def test_index_build_flags_fill_the_record_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting flag of ``index build`` lands in the record field whose docstring is its help: the config the
    command builds equals the one its flat names give (``IndexConfig.create``)."""
    from indexer import build
    from indexer.config import IndexConfig, differing_fields

    built: list[IndexConfig] = []
    monkeypatch.setattr(build, "build_index", lambda config, *args, **kwargs: built.append(config))
    flags = {"tokenizer": "tok", "steps": "2:5", "rows_per_step": "16", "k": "4", "seed": "3", "window": "8",
             "mode": "inner_product", "curvature": "kfac", "damping": "0.5", "curvature_sample": "123",
             "fisher": "sampled", "curvature_rows": "77", "factor_limit": "999", "embedding_model": "emb",
             "store": "memmap", "faiss_factory": "IVF4,Flat", "nprobe": "3", "rerank": "7", "train_sample": "99",
             "lexical": "tantivy", "modules": "embed", "max_tokens": "64", "shard_size": "32"}
    argv = ["index", "build", "--model", "some/model", "--data", "some/data", "--out", "unused", "--include-head",
            "--revision", "step1", "--revision", "step2", "--revision-weights", "1,3"]
    for name, value in flags.items():
        argv += [f"--{name.replace('_', '-')}", value]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    expected = IndexConfig.create(
        "some/model", "some/data", tokenizer="tok", steps="2:5", batch_rows=16, k=4, seed=3, window=8,
        mode="inner_product", curvature="kfac", damping=0.5, curvature_sample=123, fisher="sampled",
        curvature_rows=77, factor_limit=999, embedding_model="emb", store="memmap", faiss_factory="IVF4,Flat",
        nprobe=3, rerank=7, train_sample=99, lexical="tantivy", groups=("embed",), include_head=True,
        max_tokens=64, shard_size=32, revisions=("step1", "step2"), revision_weights=(1.0, 3.0))
    assert built == [expected]
    moved = differing_fields(IndexConfig("some/model", "some/data"), expected)
    assert len(moved) == len(flags) + 2  # each flag moved a field of its own off its default (+ revisions, weights)
    assert runner.invoke(app, argv[:8]).exit_code == 0  # no setting flag: the record's defaults
    assert built[1] == IndexConfig("some/model", "some/data")
