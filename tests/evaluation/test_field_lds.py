"""LDS on the field's protocol at a tiny size: the text case, 1 % drops and halves, resumable retrains, the report."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attribution.astra import AstraSchedule
from attribution.batching import training_batch
from attribution.config import CurvatureConfig
from attribution.encoder import GradientEncoder, load_checkpoints
from attribution.errors import ConfigError
from attribution.factored_inverse import FactoredInverse
from attribution.kronecker import Fisher, KroneckerStatistics
from attribution.models import load_model
from attribution.newton import NewtonConfig, NewtonSolver, score_rows
from attribution.preconditioner import PreconditionMode
from attribution.scoring import ScoreMode
from attribution.session import fitted_vectors, sketch_all
from attribution.sketch import SketchConfig
from evaluation import field_lds
from evaluation.field_lds import (
    DROP,
    HALF,
    NEWTON_SAMPLE_ROWS,
    RESEEDED,
    SHUFFLED,
    TRACIN_CHECKPOINTS,
    ZEROED,
    FieldEstimator,
    FieldLDSSettings,
    Scorer,
    candidate_recall,
    dropped_rows,
    extra_key,
    groups_key,
    is_two_stage,
    kept_masks,
    lead_over_peers,
    newton_config,
    newton_estimator,
    parse_estimator,
    pooled,
    retrain_path,
    run_field_lds,
    sample_picks,
    staged,
    tracin_checkpoints,
    tracin_plan,
    two_stages_from,
    unlearning_settings,
)
from evaluation.finetune_case import FinetuneCase
from evaluation.lds_stats import lds_per_query
from evaluation.selections import FIELD_LDS_ESTIMATORS
from evaluation.text_case import TextCase, build_case, training_order
from evaluation.training import learning_rate, steps_for, train
from headwater.cli import app

CASE = TextCase(rows=40, queries=6, seq_len=16, vocab_size=300, hidden_size=16, num_layers=1, num_heads=2,
                batch_size=4, epochs=2, warmup_steps=2, chars_per_source=8000)
SETTINGS = FieldLDSSettings(retrains=4, removed=0.1, halves=4, reseeded=3, zeroed=3, k=4, workers=1, shuffles=50,
                            bootstrap=200,
                            estimators=(*FIELD_LDS_ESTIMATORS, "newton@c5", "newton@c6@bm25", "newton@sketch",
                                        "newton@c5@sketch", "newton@c6@bm25@sketch"))
"""Every default estimator, the Newton direction through the sketches, and two-stage ones (masked from ``newton``'s
and ``newton@sketch``'s scores in the run)."""


@pytest.fixture(scope="module")
def field_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("field-lds")
    return out, run_field_lds(out, CASE, SETTINGS)


def test_candidate_recall_is_reported_against_the_exact_stage(field_run: tuple[Path, dict]) -> None:
    out, report = field_run
    recall = report["candidate_recall"]
    stored = [e for e in SETTINGS.estimators if e.startswith(("gradient", "tracin")) or e == "newton@sketch"]
    two_stages = {name for name in SETTINGS.estimators if is_two_stage(name)}
    assert {"newton@c5", "newton@c6@bm25", "newton@c5@sketch", "newton@c6@bm25@sketch"} <= two_stages
    assert set(recall) == (set(SETTINGS.estimators) - {"newton"} - two_stages) | {f"{e} + bm25" for e in stored}
    for depths in recall.values():
        values = [depths[d] for d in ("30", "100", "300")]
        assert all(0 <= v <= 1 for v in values) and values == sorted(values)
        assert values[-1] == 1.0  # 300 ≥ the case's 40 rows: every row is a candidate
    assert "Candidate recall" in (out / "field_lds.md").read_text()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30))
def test_candidate_recall_bounds(seed: int, depth: int) -> None:
    rng = np.random.default_rng(seed)
    exact = rng.normal(size=(3, 40))
    assert candidate_recall(exact, exact, depth) == pytest.approx(min(depth, 10) / 10)
    assert candidate_recall(exact, -exact, depth) == pytest.approx(max(0, depth - 30) / 10)  # reversed: bottom first
    other = rng.normal(size=(3, 40))
    assert candidate_recall(exact, other, depth) <= candidate_recall(exact, other, depth + 1)
    assert candidate_recall(exact, other, 40) == 1.0
    pool = pooled(exact, other)
    assert candidate_recall(exact, pooled(exact, exact), depth) == candidate_recall(exact, exact, depth)
    tops = [set(np.argsort(-m[q])[:depth]) for m in (exact, other) for q in range(3)]
    found = [set(np.argsort(-pool[q])[: 2 * depth]) for q in range(3)]
    assert all(tops[q] <= found[q] and tops[3 + q] <= found[q] for q in range(3))  # 2N hold both top Ns


def test_report_has_every_estimator_and_the_control_on_both_columns(field_run: tuple[Path, dict]) -> None:
    out, report = field_run
    assert set(report["lds"]) == {DROP, HALF, RESEEDED, ZEROED}
    for column in report["lds"].values():
        assert set(column) == {*SETTINGS.estimators, SHUFFLED}
        for summary in column.values():
            assert summary["queries"] <= CASE.queries
            assert math.isnan(summary["mean"]) or -1 <= summary["mean"] <= 1
            assert 0 < summary["p_value"] <= 1
    lds_table, recall_table = (out / "field_lds.md").read_text().split("Candidate recall")
    assert lds_table.count("| gradient-ip/ekfac |") == recall_table.count("| gradient-ip/ekfac |") == 1
    assert json.loads((out / "field_lds.json").read_text())["schema_version"] == 1


def test_the_second_seed_column_drops_the_same_rows_from_another_seed(field_run: tuple[Path, dict]) -> None:
    """``drop-reseeded`` retrain j leaves out drop retrain j's rows but trains in another order from another init:
    its losses differ from both the drop retrain's and the full model's."""
    out, report = field_run
    assert (kept_masks(CASE, SETTINGS, RESEEDED, 3) == kept_masks(CASE, SETTINGS, DROP, 4)[:3]).all()
    dropped = dropped_rows(CASE, SETTINGS, DROP, 0)
    assert CASE.order(dropped, 1) != CASE.order(dropped) and sorted(CASE.order(dropped, 1)) == sorted(
        CASE.order(dropped))
    assert CASE.settings(10, 1).seed != CASE.settings(10).seed
    for j in range(SETTINGS.reseeded):
        same, other = (json.loads(retrain_path(out, kind, j).read_text()) for kind in (DROP, RESEEDED))
        assert other["key"]["train_seed"] == 1 and "train_seed" not in same["key"]
        assert other["key"]["dropped_sha256"] == same["key"]["dropped_sha256"]
        assert not np.allclose(other["losses"], same["losses"])
    assert "other seed: LDS" in (out / "field_lds.md").read_text()
    with pytest.raises(ConfigError, match="reseeded"):
        FieldLDSSettings(retrains=3, reseeded=4)


def test_the_zero_weight_column_keeps_the_dropped_rows_in_place_at_weight_zero(field_run: tuple[Path, dict]) -> None:
    """``drop-zeroed`` retrain j weighs drop retrain j's rows 0 in the full model's batches: as many steps as the full
    training (the drop retrain takes fewer), and losses unlike either."""
    out, report = field_run
    assert (kept_masks(CASE, SETTINGS, ZEROED, 3) == kept_masks(CASE, SETTINGS, DROP, 4)[:3]).all()
    full_steps = steps_for(CASE.rows * CASE.epochs, CASE.batch_size)
    for j in range(SETTINGS.zeroed):
        same, zeroed = (json.loads(retrain_path(out, kind, j).read_text()) for kind in (DROP, ZEROED))
        assert zeroed["key"]["zero_weight"] is True and "zero_weight" not in same["key"]
        assert zeroed["key"]["dropped_sha256"] == same["key"]["dropped_sha256"]
        assert zeroed["steps"] == full_steps > same["steps"]
        assert not np.allclose(zeroed["losses"], same["losses"])
        assert not np.isclose(np.mean(zeroed["losses"]), report["full_model_loss"], rtol=1e-6)
    assert "zero 10% in place: LDS" in (out / "field_lds.md").read_text()
    with pytest.raises(ConfigError, match="zeroed"):
        FieldLDSSettings(retrains=3, zeroed=4)


def test_shuffled_control_interval_holds_zero(field_run: tuple[Path, dict]) -> None:
    for column in field_run[1]["lds"].values():
        lo, hi = column[SHUFFLED]["ci95"]
        assert lo <= 0 <= hi
        wide_lo, wide_hi = column[SHUFFLED]["ci95_two_way"]  # queries and retrains resampled: never narrower here
        assert wide_lo <= 0 <= wide_hi and wide_hi - wide_lo >= hi - lo


def test_a_rerun_retrains_nothing_and_gives_the_same_report(field_run: tuple[Path, dict]) -> None:
    out, report = field_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "retrains").glob("*.json")}
    assert len(stamps) == SETTINGS.retrains + SETTINGS.halves + SETTINGS.reseeded + SETTINGS.zeroed
    again = run_field_lds(out, CASE, SETTINGS)
    assert {p: p.stat().st_mtime_ns for p in (out / "retrains").glob("*.json")} == stamps
    assert json.dumps(again["lds"]) == json.dumps(report["lds"])  # NaN-safe: a query can be constant


def test_another_case_in_the_same_directory_is_refused(field_run: tuple[Path, dict]) -> None:
    with pytest.raises(ConfigError, match="other settings"):
        build_case(field_run[0], TextCase(**{**CASE.__dict__, "seed": 1}))


def test_a_retrain_loses_what_it_drops_and_only_that(field_run: tuple[Path, dict]) -> None:
    out, _ = field_run
    record = json.loads(retrain_path(out, DROP, 0).read_text())
    dropped = dropped_rows(CASE, SETTINGS, DROP, 0)
    assert record["key"]["dropped"] == len(dropped) == 4
    assert record["steps"] == 18 and len(training_order(CASE, dropped)) == 72
    assert len(record["losses"]) == CASE.queries and all(math.isfinite(v) for v in record["losses"])


def test_drops_and_halves_have_their_sizes() -> None:
    assert kept_masks(CASE, SETTINGS, DROP, 3).sum(axis=1).tolist() == [36, 36, 36]
    assert kept_masks(CASE, SETTINGS, HALF, 3).sum(axis=1).tolist() == [20, 20, 20]
    assert not (kept_masks(CASE, SETTINGS, DROP, 2)[0] == kept_masks(CASE, SETTINGS, DROP, 2)[1]).all()


@given(st.lists(st.integers(0, CASE.rows - 1), min_size=4, max_size=4, unique=True))
@settings(max_examples=25, deadline=None)
def test_training_order_is_the_full_order_without_the_dropped_rows(dropped: list[int]) -> None:
    full = training_order(CASE)
    assert training_order(CASE, np.asarray(dropped)) == [r for r in full if r not in set(dropped)]
    assert sorted(full) == sorted(list(range(CASE.rows)) * CASE.epochs)


def test_true_effects_score_near_one_and_their_sign_matters() -> None:
    """The oracle of the statistic: losses made from known per-row effects (helpful rows lower the loss when
    trained on) give LDS ≈ 1 for those effects and ≈ -1 for their negation, on both kinds of retrain."""
    rng = np.random.default_rng(0)
    effects = rng.exponential(size=(5, CASE.rows))
    for kind in (DROP, HALF):
        masks = kept_masks(CASE, FieldLDSSettings(retrains=30, removed=0.1, halves=30), kind, 30)
        losses = 3.0 - effects @ masks.T + rng.normal(scale=1e-3, size=(5, 30))
        assert lds_per_query(losses, effects, masks).min() > 0.95
        assert lds_per_query(losses, -effects, masks).max() < -0.95


def test_tracin_sums_the_case_trainings_own_checkpoints_at_their_learning_rates(field_run: tuple[Path, dict]) -> None:
    out, report = field_run
    model_dir, plan = tracin_checkpoints(out, CASE)
    steps = steps_for(len(CASE.order()), CASE.batch_size)
    assert plan == tracin_plan(CASE) and plan.steps == steps
    assert len(plan.revisions) == TRACIN_CHECKPOINTS and plan.revisions[-1] is None
    at = [int(r.removeprefix("step")) if r else steps - 1 for r in plan.revisions]
    assert at == sorted(at) and at[0] > 0
    assert plan.weights == tuple(learning_rate(step, CASE.settings(steps)) for step in at)
    rerun, case = load_model(model_dir), load_model(out / "case" / "model")  # the same training, retraced
    for mine, theirs in zip(rerun.parameters(), case.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-3)
    marker = model_dir.parent / "tracin.json"
    assert json.loads(marker.read_text())["case"]["seed"] == CASE.seed
    stamp = marker.stat().st_mtime_ns
    assert tracin_checkpoints(out, CASE) == (model_dir, plan) and marker.stat().st_mtime_ns == stamp  # reused
    with pytest.raises(ConfigError, match="other settings"):  # another case never takes this rerun for its own
        tracin_checkpoints(out, replace(CASE, seed=CASE.seed + 1))
    for column in report["lds"].values():
        assert {"tracin-ip/block", "unlearning"} <= set(column)


def test_tracin_scores_are_each_checkpoints_scores_weighted_by_its_learning_rate(field_run: tuple[Path, dict]
                                                                                 ) -> None:
    """``tracin-ip/block`` = Σ_c lr_c · (block-preconditioned inner products at checkpoint c), each checkpoint scored
    on its own: the weights enter once, with their sign, and each checkpoint keeps its own curvature."""
    out, _ = field_run
    scorer = Scorer(out, CASE, SETTINGS)
    model_dir, plan = tracin_checkpoints(out, CASE)
    expected = np.zeros((CASE.queries, CASE.rows))
    for revision, weight in zip(plan.revisions, plan.weights, strict=True):
        checkpoints = load_checkpoints(model_dir, (revision,), SketchConfig(k=SETTINGS.k))
        statistics = [KroneckerStatistics(Fisher.EMPIRICAL, CurvatureConfig().factor_limit)]
        raw = sketch_all(GradientEncoder(checkpoints, scorer.tokenizer), scorer.rows, None, statistics=statistics)
        encoder, vectors = fitted_vectors(checkpoints, scorer.tokenizer, scorer.rows, raw,
                                          CurvatureConfig(kind=PreconditionMode.BLOCK), ScoreMode.INNER_PRODUCT,
                                          statistics=statistics)
        queries = np.stack([encoder.encode_query_ids(c[:1].tolist(), c[1:].tolist()).vector.numpy()
                            for c in scorer.queries])
        expected += weight * (queries.astype(np.float64) @ vectors.T.astype(np.float64))
    together = scorer.scores("tracin-ip/block")
    assert np.allclose(together, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="at least 3"):
        FieldLDSSettings(retrains=2)
    with pytest.raises(ConfigError, match="no retrains"):
        FieldLDSSettings(retrains=0, halves=0)
    with pytest.raises(ConfigError, match="unknown LDS estimator"):
        FieldLDSSettings(estimators=("gradient-ip/block@0",))
    for bad in ("gradient-ip/block@d0", "gradient-ip/block@dx", "gradient-ip/block@4@8", "gradient/none@q"):
        with pytest.raises(ConfigError, match="unknown LDS estimator"):
            FieldLDSSettings(estimators=(bad,))
    assert parse_estimator("gradient-ip/ekfac_basis@256@d0.001") == FieldEstimator(
        ScoreMode.INNER_PRODUCT, PreconditionMode.EKFAC_BASIS, 256, 0.001)
    assert parse_estimator("tracin-ip/block@8") == FieldEstimator(ScoreMode.INNER_PRODUCT, PreconditionMode.BLOCK, 8,
                                                               family="tracin")
    assert parse_estimator("tracin/block") == FieldEstimator(ScoreMode.COSINE, PreconditionMode.BLOCK, family="tracin")
    assert parse_estimator("unlearning").family == "unlearning"
    assert parse_estimator("unlearning@newton").family == "unlearning"
    assert parse_estimator("newton") == FieldEstimator(None, None, damping=100.0, family="newton")
    assert parse_estimator("newton@d10").damping == 10
    assert newton_config("newton@i50") == NewtonConfig(damping=100.0, max_iter=50)
    assert newton_config("newton@d1@i5") == NewtonConfig(damping=1.0, max_iter=5)
    assert newton_config("newton") == NewtonConfig(damping=100.0, max_iter=20)
    assert newton_config("newton@ekfac@warm") == NewtonConfig(damping=100.0, max_iter=20, factoring="ekfac",
                                                              warm_start=True)
    assert newton_config("newton@kfac").factoring == "kfac"
    assert newton_config("newton@ekfac@warm@i0@d0.1") == NewtonConfig(damping=0.1, max_iter=0, factoring="ekfac",
                                                                     warm_start=True)  # the factored inverse alone
    astra = newton_estimator("newton@astra@ekfac@i100@r200@lr0.05")
    assert astra.sample_rows == 200
    assert astra.config.solver == "astra" and astra.config.astra == AstraSchedule(steps=100, lr=0.05)
    served = unlearning_settings("unlearning@newton@d100@ekfac@r64")
    assert (served.newton_damping, served.newton_factoring, served.newton_rows) == (100.0, "ekfac", 64)
    assert parse_estimator("unlearning@newton@d100").family == "unlearning"
    assert newton_estimator("newton@c100@d10") == newton_estimator("newton@d10@c100")
    assert newton_estimator("newton@c100").candidates == 100 and newton_estimator("newton").candidates is None
    assert newton_estimator("newton@sketch").sketched and not newton_estimator("newton@c100").sketched
    assert newton_estimator("newton@sketch@c30@bm25") == newton_estimator("newton@c30@bm25@sketch")
    assert newton_config("newton@head@blocks").groups == ("blocks", "head") and newton_config("newton").groups is None
    assert "groups" not in extra_key("newton", CASE, SETTINGS)["newton"]  # every parameter: the key it always had
    assert extra_key("newton@blocks", CASE, SETTINGS)["newton"]["groups"] == ("blocks",)
    for bad in ("unlearning@newton@astra", "unlearning@newton@ekfac@warm", "unlearning@newton@d0",
                "unlearning@newton@c30", "unlearning@newton@bm25", "unlearning@newton@sketch",
                "unlearning@newton@blocks"):
        with pytest.raises(ConfigError, match="unknown LDS estimator"):
            FieldLDSSettings(estimators=(bad,))
    for bad in ("newton@warm", "newton@kfac@ekfac", "newton@ekfac@ekfac", "newton@lr0.1", "newton@r0",
                "newton@r2.5", "newton@astra@lr0", "newton@blocks@ekfac", "newton@head@astra", "newton@i0",
                "newton@ekfac@i0", "newton@ekfac@warm@astra@i0"):
        with pytest.raises(ConfigError, match="unknown LDS estimator"):
            FieldLDSSettings(estimators=(bad,))
    for bad in ("newton@d0", "newton@dx", "newton@d-1", "newton@dinf", "newton@i-1", "newton@i2.5", "newton@x1",
                "newton@d1@d2", "newton@", "newton@c0", "newton@c2.5", "newton@c10@c20", "newton@bm25",
                "newton@c10@bm25@bm25", "newton@c1e2", "newton@c100.0", "newton@c+5", "newton@sketch@sketch",
                "newton@sketch@bm25", "newton@sketches", "newton@blocks@blocks", "newton@tail"):
        with pytest.raises(ConfigError, match="newton takes @dD"):
            FieldLDSSettings(estimators=(bad,))
    with pytest.raises(ConfigError, match="pretrained on"):
        FinetuneCase(source="bible")
    with pytest.raises(ConfigError, match="share"):
        FieldLDSSettings(removed=1.5)
    with pytest.raises(ConfigError, match="unknown LDS estimator"):
        FieldLDSSettings(estimators=("gradient-ip/bogus",))
    with pytest.raises(ConfigError, match="multiple"):
        TextCase(hidden_size=10, num_heads=3)
    with pytest.raises(ConfigError, match="rows must be at least 1"):
        TextCase(rows=0)
    with pytest.raises(ConfigError, match="groups must be among"):
        FieldLDSSettings(groups=("blocks", "bogus"))
    with pytest.raises(ConfigError, match="at least one parameter group"):
        FieldLDSSettings(groups=())
    assert FieldLDSSettings(groups=("head", "blocks", "head")).groups == ("head", "blocks")


def test_the_sketched_groups_enter_the_key_of_the_estimators_that_read_sketches_only() -> None:
    """The default groups add nothing to any key (scores cached before the setting stay valid); others are in the
    keys of the estimators that read sketches (the gradient family, TracIn-CP, newton's sketch and two stages)."""
    wider = FieldLDSSettings(groups=("blocks", "embed", "head"))
    for name in ("gradient-ip/none", "tracin-ip/block", "newton@sketch", "newton@c30", "newton@c30@bm25@sketch"):
        assert groups_key(name, FieldLDSSettings()) == {}
        assert groups_key(name, wider) == {"groups": ["blocks", "embed", "head"]}
    for name in ("newton", "bm25", "unlearning", "unlearning@newton", "magic"):
        assert groups_key(name, wider) == {}


def test_cli_refuses_a_bad_flag_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "field-lds", "--out", str(tmp_path), "--removed", "2"])
    assert result.exit_code != 0 and "share" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "case").exists()
    result = CliRunner().invoke(app, ["eval", "field-lds", "--out", str(tmp_path), "--modules", "blocks,tail"])
    assert result.exit_code == 2 and "groups must be among" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "case").exists()


def test_external_scores_join_the_table_and_wrong_shapes_are_refused(field_run: tuple[Path, dict],
                                                                     tmp_path: Path) -> None:
    """A peer's (queries, rows) matrix in OUT/external (bench/peers_lds.py writes them) is scored like ours."""
    out = tmp_path / "copy"
    shutil.copytree(field_run[0], out)
    (out / "external").mkdir()
    planted = np.random.default_rng(0).normal(size=(CASE.queries, CASE.rows)).astype(np.float32)
    np.save(out / "external" / "peer-x.npy", planted)
    report = run_field_lds(out, CASE, SETTINGS)
    assert "peer-x" in report["lds"][DROP] and "| peer-x |" in (out / "field_lds.md").read_text()
    lead = report["lead"][DROP]  # headwater's best (BM25 is not ours) against the best peer, paired
    column = report["lds"][DROP]
    ours = [n for n in SETTINGS.estimators if n != "bm25"]
    assert lead["peer"] == "peer-x" and lead["ours"] == max(ours, key=lambda n: column[n]["mean"])
    assert "against the best peer, peer-x" in (out / "field_lds.md").read_text()
    np.save(out / "external" / "peer-y.npy", planted[:, :-1])
    with pytest.raises(ConfigError, match="shape"):
        run_field_lds(out, CASE, SETTINGS)


FINETUNE = FinetuneCase(base=CASE, rows=24, queries=5, epochs=2, batch_size=4, warmup_steps=2, chars_per_source=6000)


def test_finetuning_variant_starts_every_retrain_from_the_pretrained_model(field_run: tuple[Path, dict],
                                                                        tmp_path: Path) -> None:
    """The fine-tuning case reuses the pretraining case (same directory), fine-tunes it on another source, and
    each half retrain fine-tunes the same pretrained weights: the report's columns and the control hold."""
    out = tmp_path / "finetune"
    shutil.copytree(field_run[0] / "case", out / "case")  # the pretraining case, reused as built
    settings_ = FieldLDSSettings(retrains=0, halves=4, k=4, workers=1, shuffles=50, bootstrap=200,
                                 estimators=("gradient-ip/ekfac_basis", "gradient-ip/block@6", "bm25", "magic"))
    report = run_field_lds(out, FINETUNE, settings_)  # magic's replay starts from the pretrained weights, checked
    assert set(report["lds"]) == {HALF} and set(report["lds"][HALF]) == {*settings_.estimators, SHUFFLED}
    lo, hi = report["lds"][HALF][SHUFFLED]["ci95"]
    assert lo <= 0 <= hi
    assert json.loads((out / "finetune" / "finetune.json").read_text())["case"]["source"] == "stdlib"
    assert "fine-tuning variant" in (out / "field_lds.md").read_text()
    marker = "case.json"  # the pretraining case was reused, not rebuilt
    assert (out / "case" / marker).stat().st_mtime_ns == (field_run[0] / "case" / marker).stat().st_mtime_ns
    # fine-tuning starts from the pretrained weights: at a vanishing learning rate it ends where it began
    still = replace(FINETUNE, learning_rate=1e-30)
    order = still.order()
    model, _ = train(still.settings(steps_for(len(order), still.batch_size)), out / "finetune" / "data" / "document",
                     CASE.vocab_size, tmp_path / "still", rows=order, save_revisions=False,
                     init=still.init_model(out))
    pretrained = load_model(out / "case" / "model")
    for (name, mine), theirs in zip(model.state_dict().items(), pretrained.state_dict().values(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6), name
    with pytest.raises(ConfigError, match="other settings"):
        FinetuneCase(**{**FINETUNE.__dict__, "rows": 20}).build(out)


def test_cli_refuses_a_negative_finetune_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "field-lds", "--out", str(tmp_path), "--finetune", "-1"])
    assert result.exit_code != 0 and "--finetune" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "case").exists()


def test_a_sketch_size_that_cannot_fit_is_refused_before_the_pass() -> None:
    from attribution.errors import OutOfMemoryError
    from evaluation.field_lds import available_bytes, check_sketch_memory

    check_sketch_memory(16, 1000, 4096, available=2**30)  # 62.5 MiB of 1 GiB
    with pytest.raises(OutOfMemoryError, match=r"k=256 hold 2,000 rows × 786,432 numbers: about 23.4 GiB"):
        check_sketch_memory(256, 2000, 786_432, available=8 * 2**30)
    assert available_bytes() is None or available_bytes() > 0


def test_text_case_presets_are_named_and_checked(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from evaluation.text_case import LARGER, PRESETS, preset_case
    from headwater.cli import app

    assert preset_case("small") == TextCase() and preset_case("larger") == LARGER == PRESETS["larger"]
    assert preset_case("larger", rows=300, seed=2) == TextCase(**{**LARGER.__dict__, "rows": 300, "seed": 2})
    assert LARGER.num_layers * LARGER.hidden_size > TextCase().num_layers * TextCase().hidden_size
    result = CliRunner().invoke(app, ["eval", "field-lds", "--out", str(tmp_path / "r"), "--case", "huge"])
    assert result.exit_code == 2 and "unknown text case 'huge'; choose from small, larger" in result.output
    assert not (tmp_path / "r").exists()  # refused before anything is built


def test_magic_replays_the_case_and_its_check_can_fail(field_run: tuple[Path, dict],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The ceiling row: every row's −∂L_q/∂w_i through an exact replay of the case's training, after checking the
    replay reproduces the saved model's query losses (a tolerance below any real difference makes the check fire)."""
    out, _ = field_run
    scores = Scorer(out, CASE, SETTINGS).scores("magic")
    assert scores.shape == (CASE.queries, CASE.rows) and np.all(np.isfinite(scores)) and np.abs(scores).max() > 0
    monkeypatch.setattr(field_lds, "REPLAY_TOLERANCE", -1.0)
    with pytest.raises(ConfigError, match="does not reproduce"):
        Scorer(out, CASE, SETTINGS).scores("magic")


@pytest.mark.parametrize("bad", ["magic@", "magic@s0", "magic@s-1", "magic@2", "magic@sx", "magic@s2@s3"])
def test_magic_names_are_checked(bad: str) -> None:
    assert parse_estimator("magic@s20").family == "magic"
    with pytest.raises(ConfigError, match="magic takes @sN"):
        parse_estimator(bad)


def test_the_lead_leaves_the_replay_ceiling_out() -> None:
    """MAGIC replays training once a query: however high it scores, headwater's best is a method one can serve."""
    column = {"magic": {"mean": 0.9}, "magic@s100": {"mean": 0.8}, "newton": {"mean": 0.3}, "bm25": {"mean": 0.5},
              "peer": {"mean": 0.2}}
    draws = {name: np.full(50, v["mean"]) + np.random.default_rng(i).normal(0, 0.01, 50)
             for i, (name, v) in enumerate(column.items())}
    lead = lead_over_peers(column, draws, {"peer"})
    assert lead["ours"] == "newton" and lead["peer"] == "peer"
    assert lead["ratio"] == pytest.approx(1.5) and 0.05 < lead["difference_ci95"][0] < lead["difference_ci95"][1]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 45))
def test_two_stages_keep_the_exact_scores_of_the_recalled_rows_only(seed: int, depth: int) -> None:
    rng = np.random.default_rng(seed)
    exact, recall = rng.normal(size=(3, 40)), rng.normal(size=(3, 40))
    out = staged(exact, recall, depth)
    for q in range(3):
        picked = set(np.argsort(-recall[q])[:depth].tolist())
        assert all(out[q, i] == (exact[q, i] if i in picked else 0.0) for i in range(40))
    assert np.array_equal(staged(exact, recall, 40), exact)  # every row recalled: the exact stage alone


def test_two_stage_newton_scores_only_the_index_defaults_candidates(field_run: tuple[Path, dict]) -> None:
    """``newton@cN`` scores the index default's top N rows exactly, as the full ``newton`` does, and the rest 0: solved
    again (the scorer alone) or masked from the run's own ``newton`` (the run)."""
    out, report = field_run
    full, recall = (np.load(out / "scores" / f"{name}.npy") for name in ("newton", "gradient__block"))
    bm25 = np.load(out / "scores" / "bm25.npy")
    np.testing.assert_array_equal(np.load(out / "scores" / "newton@c5.npy"), staged(full, recall, 5))
    np.testing.assert_array_equal(np.load(out / "scores" / "newton@c6@bm25.npy"), staged(full, pooled(recall, bm25), 6))
    assert {"newton@c5", "newton@c6@bm25"} <= set(report["lds"][DROP])
    scorer = Scorer(out, CASE, SETTINGS)
    two = scorer.scores("newton@c5")
    assert np.count_nonzero(two, axis=1).max() <= 5
    np.testing.assert_allclose(two, staged(full, recall, 5), rtol=1e-4, atol=1e-6)
    with_bm25 = scorer.newton_scores("newton@c6@bm25", pooled(recall, bm25))
    np.testing.assert_allclose(with_bm25, staged(full, pooled(recall, bm25), 6), rtol=1e-4, atol=1e-6)


def test_two_stages_are_masked_from_the_runs_own_newton_when_it_has_one() -> None:
    rng = np.random.default_rng(0)
    scores = {"newton@d10": rng.normal(size=(2, 9)), "gradient/block": rng.normal(size=(2, 9))}
    derived = two_stages_from("newton@c3@d10", scores)
    assert derived is not None
    np.testing.assert_array_equal(derived, staged(scores["newton@d10"], scores["gradient/block"], 3))
    assert two_stages_from("newton@c3", scores) is None  # its twin, plain newton (d100), is not in this run
    np.testing.assert_array_equal(two_stages_from("newton@i20@c3@d10", scores), derived)  # the same solver settings
    assert two_stages_from("newton@c3@d10@bm25", scores) is None  # no BM25 scores in this run
    scores["bm25"] = rng.normal(size=(2, 9))
    np.testing.assert_array_equal(two_stages_from("newton@c3@d10@bm25", scores),
                                  staged(scores["newton@d10"], pooled(scores["gradient/block"], scores["bm25"]), 3))
    assert two_stages_from("newton@d10", scores) is None  # one stage: nothing to mask
    assert two_stages_from("bm25", scores) is None
    assert two_stages_from("newton@c3@d10@sketch", scores) is None  # its recall stage, newton@d10@sketch, is not here
    scores["newton@sketch@d10"] = rng.normal(size=(2, 9))
    np.testing.assert_array_equal(two_stages_from("newton@c3@d10@sketch", scores),
                                  staged(scores["newton@d10"], scores["newton@sketch@d10"], 3))
    np.testing.assert_array_equal(two_stages_from("newton@c3@d10@bm25@sketch", scores),
                                  staged(scores["newton@d10"], pooled(scores["newton@sketch@d10"], scores["bm25"]), 3))


def test_the_newton_direction_through_the_sketches(field_run: tuple[Path, dict]) -> None:
    """``newton@sketch`` scores each row's stored sketch against the projection of the query's Newton direction, from
    the same solve as ``newton``; ``newton@cN@sketch`` scores exactly the N rows that ranking recalls (masked from the
    run's own two in the run, solved in one pass by the scorer alone, with and without BM25 in the pool)."""
    out, report = field_run
    full, through, bm25 = (np.load(out / "scores" / f"{name}.npy") for name in ("newton", "newton@sketch", "bm25"))
    np.testing.assert_array_equal(np.load(out / "scores" / "newton@c5@sketch.npy"), staged(full, through, 5))
    np.testing.assert_array_equal(np.load(out / "scores" / "newton@c6@bm25@sketch.npy"),
                                  staged(full, pooled(through, bm25), 6))
    scorer = Scorer(out, CASE, SETTINGS)
    model = load_model(CASE.directory(out) / "model")
    rows = [scorer.rows[i] for i in sample_picks(len(scorer.rows), NEWTON_SAMPLE_ROWS)]  # newton_scores' sample
    solver = NewtonSolver(model, training_batch(rows), newton_config("newton"))
    x = solver.direction(training_batch([scorer.queries[0].tolist()])).x
    np.testing.assert_allclose(through[0], scorer.through_sketches(model, x), rtol=1e-4, atol=1e-6)
    wider = Scorer(out, CASE, replace(SETTINGS, groups=("blocks", "embed", "head")))  # + the embedding and the head
    modules = scorer.sketched(SETTINGS.k)[0][0].sketcher.modules
    assert wider.sketched(SETTINGS.k)[2][0].shape == (CASE.rows, (len(modules) + 2) * SETTINGS.k**2)
    assert wider.through_sketches(model, x).shape == (CASE.rows,)
    assert not np.allclose(through[0], scorer.through_sketches(model, torch.flip(x, (0,))))  # x itself matters
    one_pass = scorer.scores("newton@c5@sketch")
    assert np.count_nonzero(one_pass, axis=1).max() <= 5
    np.testing.assert_allclose(one_pass, staged(full, through, 5), rtol=1e-4, atol=1e-6)
    assert {"newton@sketch", "newton@c5@sketch"} <= set(report["lds"][DROP])
    assert "newton@sketch + bm25" in report["candidate_recall"]


def test_the_factored_inverse_alone_scores_rows_along_its_direction(field_run: tuple[Path, dict]) -> None:
    """``newton@ekfac@warm@i0@rN``: EK-FAC fitted on N evenly spaced rows (here every row) at the relative damping, no
    conjugate-gradient step; each row scored exactly along ``P⁻¹ g``, and the solver summary says one product (the
    residual's) and how far that ``x`` is from the damped system."""
    out, _ = field_run
    name = f"newton@ekfac@warm@i0@r{CASE.rows}@d0.1"
    scorer = Scorer(out, CASE, SETTINGS)
    scores = scorer.newton_scores(name)
    model = load_model(CASE.directory(out) / "model")
    solver = NewtonSolver(model, training_batch(scorer.rows), newton_config(name))
    found = solver.direction(training_batch([scorer.queries[0].tolist()]))
    inverse = FactoredInverse.fit(model, training_batch(scorer.rows), found.damping, "ekfac")
    torch.testing.assert_close(found.x, inverse(found.gradient))
    np.testing.assert_allclose(scores[0], score_rows(model, scorer.rows, found.x).numpy(), rtol=1e-4, atol=1e-6)
    summary = json.loads((out / "scores" / f"{name}.solver.json").read_text())
    assert summary["sample_rows"] == CASE.rows and summary["products"] == 1 and summary["residual_median"] > 0


def test_newton_along_the_checkpoints_is_the_mean_of_each_checkpoints_scores(field_run: tuple[Path, dict]) -> None:
    """``@cp``: each TracIn-CP checkpoint of the case's training solves its own direction over its own sample
    curvature and scores every row exactly; the estimator is the mean of those scores."""
    out, _ = field_run
    name = "newton@i5@cp"
    scorer = Scorer(out, CASE, SETTINGS)
    scores = scorer.newton_scores(name)
    model_dir, plan = tracin_checkpoints(out, CASE)
    sample = training_batch([scorer.rows[i] for i in sample_picks(len(scorer.rows), NEWTON_SAMPLE_ROWS)])
    query = training_batch([scorer.queries[0].tolist()])
    each = []
    for revision in plan.revisions:
        model = load_model(model_dir, revision=revision)
        x = NewtonSolver(model, sample, newton_config(name)).direction(query).x
        each.append(score_rows(model, scorer.rows, x).numpy())
    assert len(each) == TRACIN_CHECKPOINTS and not np.allclose(each[0], each[-1])  # the checkpoints differ
    np.testing.assert_allclose(scores[0], np.mean(each, axis=0), rtol=1e-4, atol=1e-6)
    assert extra_key(name, CASE, SETTINGS)["newton"]["revisions"] == list(plan.revisions)
    assert "revisions" not in extra_key("newton@i5", CASE, SETTINGS)["newton"]
    for bad in ("newton@cp@cp", "newton@cp@c5", "newton@cp@sketch", "unlearning@newton@cp"):
        with pytest.raises(ConfigError, match="unknown LDS estimator"):
            FieldLDSSettings(estimators=(bad,))
