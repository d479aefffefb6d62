"""LDS end to end on the tiny demo: subset retraining (resumable), all-row scores, the report and its control."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from typer.testing import CliRunner

from attribution.models import load_tokenizer
from evaluation.demo_config import TINY
from evaluation.lds_stats import lds_per_query, spearman, top_k_only
from evaluation.retrain import draw_subset, retrain_subsets, subset_dir, subset_masks
from evaluation.training import settings_for, train
from headwater.cli import app

runner = CliRunner()
METHODS = {"gradient", "bm25", "embedding", "oracle", "shuffled"}



def test_training_on_every_row_in_order_is_the_demo_model(tiny_demo: Path, tmp_path: Path) -> None:
    """The row-subset path of train() with all rows reproduces the demo's own model bit for bit."""
    vocab = len(load_tokenizer(tiny_demo / "tokenizer"))
    train(settings_for(TINY, vocab), tiny_demo / "data" / "document", vocab, tmp_path, rows=list(range(192)),
          save_revisions=False)
    ours, demo = load_file(tmp_path / "model.safetensors"), load_file(tiny_demo / "model" / "model.safetensors")
    assert ours.keys() == demo.keys() and all((ours[k] == demo[k]).all() for k in ours)
    assert not (tmp_path / "revisions").exists() and not (tmp_path / "adam_state.safetensors").exists()


def test_subsets_are_exact_halves_in_order_and_reproducible() -> None:
    rows = draw_subset(192, 3, seed=7)
    assert len(rows) == 96 and len(set(rows.tolist())) == 96 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(rows, draw_subset(192, 3, seed=7))
    assert not np.array_equal(rows, draw_subset(192, 4, seed=7))
    assert not np.array_equal(rows, draw_subset(192, 3, seed=8))


def test_parallel_workers_train_the_same_subsets(tiny_demo: Path, tmp_path: Path) -> None:
    """Two single-threaded worker processes train the subsets that one process would (up to float summation order)."""
    markers = retrain_subsets(tiny_demo, tmp_path / "pool", 3, seed=0, workers=2)
    assert [m["index"] for m in markers] == [0, 1, 2]
    retrain_subsets(tiny_demo, tmp_path / "serial", 1, seed=0)
    pooled = load_file(subset_dir(tmp_path / "pool", 0) / "model.safetensors")
    serial = load_file(subset_dir(tmp_path / "serial", 0) / "model.safetensors")
    for name, tensor in serial.items():
        np.testing.assert_allclose(pooled[name].numpy(), tensor.numpy(), atol=1e-4, err_msg=name)


def test_spearman_matches_scipy() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 9)), rng.normal(size=(5, 9))
    b[0, :3] = b[0, 3]  # ties
    expected = [spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(spearman(a, b), expected)
    assert math.isnan(spearman(np.ones(4), np.arange(4.0)))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(1, 40))
def test_top_k_keeps_each_querys_k_highest_scores(seed: int, rows: int, k: int) -> None:
    scores = np.random.default_rng(seed).normal(size=(3, rows)).astype(np.float32)
    kept = top_k_only(scores, k)
    assert kept.shape == scores.shape
    for q in range(3):
        nonzero = np.flatnonzero(kept[q])
        assert len(nonzero) == min(k, rows)  # normal draws are never exactly 0
        np.testing.assert_array_equal(kept[q, nonzero], scores[q, nonzero])
        threshold = np.sort(scores[q])[::-1][min(k, rows) - 1]
        assert (scores[q, nonzero] >= threshold).all()


def test_top_k_finds_a_sparse_influence_that_summing_every_row_drowns() -> None:
    """The demo's situation in miniature: a query's loss depends only on how many of its 30 gold rows a
    half keeps; a method scores those rows high, and gives every other row a small, noisy score. Summing
    all 5,000 rows buries the gold rows under the noise; the top 30 rows recover them."""
    rng = np.random.default_rng(0)
    rows, queries, subsets = 5000, 40, 20
    masks = subset_masks(rows, subsets, seed=0).astype(np.float64)
    gold = np.stack([rng.choice(rows, 30, replace=False) for _ in range(queries)])
    kept_gold = np.stack([masks[:, g].sum(1) for g in gold])  # (queries, subsets)
    losses = -kept_gold + rng.normal(scale=0.5, size=kept_gold.shape)
    scores = np.abs(rng.normal(scale=0.5, size=(queries, rows)))
    for q in range(queries):
        scores[q, gold[q]] = 3.0
    every_row = np.nanmean(lds_per_query(losses, scores, masks))
    top = np.nanmean(lds_per_query(losses, top_k_only(scores, 30), masks))
    assert top > 0.9 and every_row < 0.6 and top > every_row + 0.3  # measured: 0.97 and 0.45


def test_lds_end_to_end_with_resume(tiny_demo: Path, tiny_index: Path, tmp_path: Path) -> None:
    out = tmp_path / "lds"
    # A first run that stopped after two subsets, and a third subset killed half-written.
    retrain_subsets(tiny_demo, out, 2, seed=0)
    first = {j: (subset_dir(out, j) / "done.json").stat().st_mtime_ns for j in (0, 1)}
    weights = {j: (subset_dir(out, j) / "model.safetensors").stat().st_mtime_ns for j in (0, 1)}
    subset_dir(out, 2).mkdir()
    (subset_dir(out, 2) / "model.safetensors").write_bytes(b"partial")

    args = ["eval", "lds", "--demo", str(tiny_demo), "--index", str(tiny_index), "--out", str(out),
            "--subsets", "4", "--all-facts", "--shuffles", "400"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| gradient |" in result.output and "| shuffled |" in result.output

    # Resume: finished subsets were skipped, the half-written one retrained.
    assert {j: (subset_dir(out, j) / "done.json").stat().st_mtime_ns for j in (0, 1)} == first
    assert {j: (subset_dir(out, j) / "model.safetensors").stat().st_mtime_ns for j in (0, 1)} == weights
    for j in range(4):
        marker = json.loads((subset_dir(out, j) / "done.json").read_text())
        assert marker["index"] == j and marker["steps"] == 24 and marker["key"]["rows"] == 96
    assert (subset_dir(out, 2) / "model.safetensors").stat().st_size > 1000

    report = json.loads((out / "lds.json").read_text())
    assert (out / "lds.md").read_text().startswith("# Linear datamodeling score")
    assert report["config"]["subsets"] == 4 and report["config"]["training_rows"] == 192
    queries = report["queries"]
    assert len(queries) == 32  # every planted fact of the tiny demo (--all-facts)
    assert all(len(z["subset_losses"]) == 4 and all(math.isfinite(v) and v > 0 for v in z["subset_losses"])
               for z in queries)
    assert set(report["methods"]) == set(report["methods_top_k"]) == METHODS
    assert report["config"]["top_k"] == 100 and "| top 100: LDS |" in result.output
    for name, summary in [*report["methods"].items(), *report["methods_top_k"].items()]:
        lo, hi = summary["ci95"]
        values = [v for v in summary["per_query"] if v is not None]  # None: the oracle's gold-row count tied
        assert len(summary["per_query"]) == 32 and summary["queries"] == len(values) >= 16, name
        assert all(-1 <= v <= 1 for v in values), name
        assert lo <= summary["mean"] <= hi and 0 < summary["p_value"] <= 1, name
        if name != "oracle":  # continuous scores never tie, so every query has a value
            assert summary["queries"] == 32, name
    for method in ("gradient", "bm25", "embedding"):
        scores = np.load(out / "scores" / f"{method}.npy")
        assert scores.shape == (32, 192) and np.isfinite(scores).all()

    # The control. With 4 subsets one query's Spearman takes only the values -1, -0.8, ..., 1 and has
    # sd sqrt(1/3) under the null, so the mean over Q = 32 queries has sd ~0.10: the single shuffled
    # control may sit up to 4 of those from 0. The permutation null (400 shufflings per method) averages
    # that away: its mean is exactly 0 in expectation (equal-size subsets make the predictions
    # exchangeable), so it must be within 5 of its standard errors, and its spread must be the
    # analytic sd of a mean of 32 null Spearmans (checked to 25 %: the subsets are not quite a
    # symmetric design; the oracle's 0/1 scores tie, which changes its spread). All of it is seeded,
    # so the test is deterministic as well.
    null_sd = math.sqrt(1 / 3 / 32)
    assert abs(report["methods"]["shuffled"]["mean"]) < 4 * null_sd
    for name, summary in report["methods"].items():
        assert abs(summary["null_mean"]) < 5 * summary["null_sd"] / math.sqrt(400), name
        if name != "oracle":
            assert 0.75 * null_sd < summary["null_sd"] < 1.25 * null_sd, name

    # A rerun finds every score cached and every subset trained, and reports the same numbers.
    cached = {m: (out / "scores" / f"{m}.npy").stat().st_mtime_ns for m in ("gradient", "bm25", "embedding")}
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {m: (out / "scores" / f"{m}.npy").stat().st_mtime_ns for m in cached} == cached
    rerun = json.loads((out / "lds.json").read_text())
    assert rerun["methods"] == report["methods"] and rerun["methods_top_k"] == report["methods_top_k"]


def test_missing_index_says_how_to_build_one(tiny_demo: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "lds", "--demo", str(tiny_demo), "--index", str(tmp_path / "none"),
                                 "--out", str(tmp_path / "out"), "--subsets", "4"])
    assert result.exit_code == 2
    assert "no index at" in result.output and "headwater index build" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--top-k", "0"], "top_k must be at least 1"),
    (["--subsets", "2"], "needs at least 3 subsets"),
    (["--workers", "0"], "workers must be at least 1"),
])
def test_cli_bad_settings(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["eval", "lds", "--demo", str(tmp_path), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
