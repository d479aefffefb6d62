"""The unlearning report's statistics and checklist without a model: the related ratio net of random (issue 24.2),
checks that cannot reach their threshold read "not run", never "failed" (24.3), and the one verdict (24.4)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.ablation_checks import (
    ALPHA,
    Check,
    CheckPlan,
    CheckStatus,
    beats_random,
    draws_needed,
    paired_targets_needed,
    related_ratio,
    rivals,
    unrunnable,
)
from evaluation.ablation_stats import NOT_DEFINED, compare, net_related_ratio
from evaluation.ablation_verdict import judge
from evaluation.selections import Selection
from evaluation.targets import Target

BUDGET = 1.0


def tables(rel_m, tgt_m, rel_r, tgt_r) -> dict:
    """per_target tables of d_related and d_target for ``gradient`` and ``random`` at one budget."""
    def by_target(values):
        return dict(enumerate(float(v) for v in values))

    return {"d_related": {("gradient", BUDGET): by_target(rel_m), ("random", BUDGET): by_target(rel_r)},
            "d_target": {("gradient", BUDGET): by_target(tgt_m), ("random", BUDGET): by_target(tgt_r)}}


def test_related_ratio_is_a_ratio_of_means_net_of_random() -> None:
    ratio = net_related_ratio(tables([1.0, 2.0, 3.0], [4.0, 6.0, 8.0], [0.5, 0.5, 0.5], [0.5, 1.0, 1.5]), "gradient",
                              BUDGET)
    assert ratio.mean == pytest.approx((2.0 - 0.5) / (6.0 - 1.0)) and ratio.targets == 3
    low, high = ratio.ci95
    assert low is not None and high is not None and low <= ratio.mean <= high
    assert net_related_ratio(tables([1.0], [4.0], [0.5], [0.5]), "gradient", BUDGET).ci95 == (None, None)  # 1 target
    missing = net_related_ratio({"d_related": {}, "d_target": {}}, "gradient", BUDGET)
    assert missing.mean is None and missing.targets == 0 and missing.note.startswith("not run")


deltas = st.lists(st.floats(-5, 5, allow_nan=False), min_size=4, max_size=4)


@settings(max_examples=60, deadline=None)
@given(rel_m=deltas, tgt_m=st.lists(st.floats(1, 10), min_size=4, max_size=4), rel_r=deltas,
       tgt_r=st.lists(st.floats(-0.5, 0.5), min_size=4, max_size=4), scale=st.floats(0.01, 100), shift=st.floats(-5, 5))
def test_related_ratio_ignores_units_and_what_every_selection_costs_the_related_prompts(
        rel_m, tgt_m, rel_r, tgt_r, scale, shift) -> None:
    base = net_related_ratio(tables(rel_m, tgt_m, rel_r, tgt_r), "gradient", BUDGET).mean
    assert base is not None  # the method hurts every target more than random does: defined
    scaled = net_related_ratio(tables(*(np.array(v) * scale for v in (rel_m, tgt_m, rel_r, tgt_r))), "gradient",
                               BUDGET).mean
    shifted = net_related_ratio(tables(np.array(rel_m) + shift, tgt_m, np.array(rel_r) + shift, tgt_r), "gradient",
                                BUDGET).mean
    assert scaled == pytest.approx(base, rel=1e-6, abs=1e-9)
    assert shifted == pytest.approx(base, rel=1e-6, abs=1e-9)


def test_a_target_barely_hurt_does_not_blow_the_ratio_up() -> None:
    rel_m, tgt_m = [0.4, 0.6, 0.5], [2.0, 3.0, 1e-9]
    ratio = net_related_ratio(tables(rel_m, tgt_m, [0.0] * 3, [0.0] * 3), "gradient", BUDGET)
    per_target_mean = np.mean(np.array(rel_m) / np.array(tgt_m))  # what the summary used to report
    assert per_target_mean > 1e7 and ratio.mean == pytest.approx(1.5 / 5.0)


def test_a_method_that_hurts_the_target_no_more_than_random_has_no_ratio_and_fails_the_check() -> None:
    ratio = net_related_ratio(tables([1.0, 1.0], [0.5, 0.4], [0.2, 0.2], [0.6, 0.5]), "gradient", BUDGET)
    assert ratio.mean is None and ratio.note == NOT_DEFINED and ratio.targets == 2
    entry = {"related_ratio": {"mean": None, "ci95": ratio.ci95, "targets": 2, "note": ratio.note}}
    result = related_ratio(entry)
    assert result.status is CheckStatus.FAILED and result.reason == NOT_DEFINED
    assert related_ratio({"related_ratio": {"mean": None, "targets": 0, "note": "not run: x"}}).status \
        is CheckStatus.NOT_RUN


def test_the_smallest_attainable_p_sets_how_many_targets_and_draws_a_check_needs() -> None:
    for comparisons in range(1, 6):
        needed = paired_targets_needed(comparisons)
        assert comparisons / 2**needed < ALPHA <= comparisons / 2 ** (needed - 1)  # Holm: m × 2⁻ⁿ
    assert [paired_targets_needed(m) for m in (1, 2, 4, 5)] == [7, 8, 9, 9]
    for targets in (1, 2, 3, 7):
        draws = draws_needed(targets)
        assert targets / (draws + 1) < ALPHA <= targets / draws  # per target 1/(draws+1), Holm over the targets
    assert draws_needed(1) == 100


def excess_tables(method: list[float], baselines: int) -> dict:
    """Excess per target of gradient and of ``baselines`` baselines that all lose to it by 1 to n."""
    out = {("gradient", BUDGET): dict(enumerate(method))}
    for b in (Selection.RANDOM, Selection.BM25, Selection.EMBEDDING, Selection.BOTTOM)[:baselines]:
        out[(b, BUDGET)] = {t: v - 1.0 - 0.1 * t for t, v in enumerate(method)}
    return out


def test_six_wins_out_of_six_are_not_run_not_failed() -> None:
    """Issue 24's case: 6 targets, the method won on all 6, compared with 4 baselines: Holm p = 4/64."""
    versus = compare(excess_tables([3.0] * 6, 4), "gradient", BUDGET)
    assert versus["random"]["p_value"] == pytest.approx(1 / 64) and versus["random"]["p_holm"] == pytest.approx(4 / 64)
    assert versus["random"]["win_rate"] == 1.0 and versus["random"]["pairs"] == 6
    result = beats_random({"vs": versus, "random_p_values": [0.05] * 6, "random_draws": [19] * 6}, len(versus))
    assert result.status is CheckStatus.NOT_RUN and result.ok is None
    assert "needs ≥ 9 targets" in result.reason and "≥ 600 random draws per target" in result.reason
    nine = compare(excess_tables([3.0] * 9, 4), "gradient", BUDGET)
    assert beats_random({"vs": nine}, len(nine)).status is CheckStatus.PASSED
    lost = compare(excess_tables([-3.0 + t for t in range(9)], 1) | {("random", BUDGET): dict.fromkeys(range(9), 9.0)},
                   "gradient", BUDGET)
    assert beats_random({"vs": lost}, len(lost)).status is CheckStatus.FAILED


def test_one_target_beats_random_on_its_own_draws_once_there_are_enough() -> None:
    assert beats_random({"vs": {}, "random_p_values": [1 / 101], "random_draws": [100]}, 3).status \
        is CheckStatus.PASSED
    assert beats_random({"vs": {}, "random_p_values": [30 / 101], "random_draws": [100]}, 3).status \
        is CheckStatus.FAILED
    short = beats_random({"vs": {}, "random_p_values": [1 / 20], "random_draws": [19]}, 3)
    assert short.status is CheckStatus.NOT_RUN and "≥ 100 random draws per target" in short.reason
    assert beats_random({"vs": {}, "random_p_values": [np.nan], "random_draws": [100]}, 1).status \
        is CheckStatus.NOT_RUN


def entry(z: float = 4.0, ratio: float | None = 0.2, para_low: float = 0.5, excess: float = 3.0,
          d_target: float = 3.0) -> dict:
    """A summary entry of a tested selection that beats random (20 paired targets)."""
    out = {m: {"mean": v, "ci95": (v - 1, v + 1)} for m, v in
           {"excess": excess, "specificity_z": z, "d_target": d_target}.items()}
    out["paraphrase_excess"] = {"mean": para_low + 1, "ci95": (para_low, para_low + 2)}
    out["related_ratio"] = {"mean": ratio, "ci95": (None, None), "targets": 20,
                            "note": NOT_DEFINED if ratio is None else "measured"}
    out["vs"] = {"random": {"win_rate": 1.0, "p_value": 1e-6, "p_holm": 1e-6, "pairs": 20}}
    out["excess_vs"] = {"bm25": {"mean_difference": excess - 1.0, "targets": 20}}
    return out


def summary(by_budget: dict[str, dict]) -> dict:
    return {"gradient": by_budget, "random": {b: entry(excess=0.0, d_target=0.1) for b in by_budget},
            "bm25": {b: entry(excess=1.0) for b in by_budget}, "bottom": {b: entry(d_target=-0.2) for b in by_budget}}


def statuses(verdict) -> dict[str, str]:
    return {c.check.value: c.status.value for c in verdict.checks}


def test_the_verdict_comes_from_every_check_at_two_budgets() -> None:
    supported = judge(summary({"1.0": entry(), "2.0": entry()}), (1.0, 2.0))["gradient"]
    assert supported.verdict == "supported" and supported.passing_budgets == ("1.0", "2.0")
    assert set(statuses(supported).values()) == {"passed"} and "by construction" in supported.explanation
    # a failure at one of three budgets still leaves two where everything passed
    mixed = judge(summary({"0.5": entry(z=1.0), "1.0": entry(), "2.0": entry()}), (0.5, 1.0, 2.0))["gradient"]
    assert mixed.verdict == "supported" and statuses(mixed)["specificity_z_ge_2"] == "passed"
    undefined = judge(summary({"1.0": entry(ratio=None), "2.0": entry(ratio=None)}), (1.0, 2.0))["gradient"]
    assert undefined.verdict == "not supported" and undefined.reason == "failed: related ratio ≤ 0.5"
    one = judge(summary({"1.0": entry()}), (1.0,))["gradient"]
    assert one.verdict == "inconclusive" and all("needs ≥ 2 budgets" in c.reason for c in one.checks)
    as_json = supported.to_json()
    assert as_json["verdict"] == "supported" and [c["name"] for c in as_json["checks"]] == [c.value for c in Check]
    assert {"label", "status", "reason", "budgets"} <= as_json["checks"][0].keys()


def test_a_request_hears_up_front_which_checks_cannot_run() -> None:
    fact = Target("p", " c", paraphrases=["q"], related=[], example_ids=[1])
    page = CheckPlan.of([fact], (Selection.GIVEN, Selection.ORACLE, Selection.BOTTOM, Selection.RANDOM), 1, 19)
    assert page.baselines == (Selection.RANDOM, Selection.BOTTOM)  # no gold rows: no oracle to compare with
    said = " | ".join(unrunnable(page))
    assert "≥ 2 budgets" in said and "needs ≥ 8 targets" in said and "needs ≥ 100" in said
    assert "carries to paraphrases will not run" in said and "related ratio ≤ 0.5 will not run" in said
    many = [Target(f"p{i}", " c", paraphrases=["q"], related=[fact.related]) for i in range(9)]
    full = CheckPlan.of(many, tuple(Selection), 2, 19)
    assert unrunnable(full) == []
    assert unrunnable(CheckPlan.of(many, (Selection.BM25,), 2, 19))[0].startswith("no selection under test")


def test_a_rival_that_found_nothing_for_some_targets_is_compared_on_the_others() -> None:
    versus = {"bm25": {"mean_difference": -0.2, "targets": 1}, "embedding": {"mean_difference": 0.5, "targets": 9}}
    result = rivals({"excess_vs": versus})
    assert result.status is CheckStatus.FAILED and "minus bm25's = -0.200 over 1 target(s)" in result.reason
    assert rivals({"excess_vs": {"embedding": versus["embedding"]}}).status is CheckStatus.PASSED
    assert rivals({"excess_vs": {}}).status is CheckStatus.NOT_RUN
