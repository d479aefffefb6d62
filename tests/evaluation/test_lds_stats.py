"""LDS intervals: resampling retrains as well as queries, alone and paired."""

from __future__ import annotations

import numpy as np

from evaluation.lds_stats import bootstrap_ci, lds_per_query, percentile_interval, predicted, two_way_ci, two_way_draws


def shared_null(seed: int, queries: int = 20, retrains: int = 30, rows: int = 50) -> tuple[np.ndarray, ...]:
    """No estimator-loss link, but every query sees the same retrain effects: each query's losses are one shared
    per-retrain effect plus a little noise, and each query's scores one shared score vector plus a little noise."""
    rng = np.random.default_rng(seed)
    masks = rng.random((retrains, rows)) < 0.5
    losses = rng.normal(size=retrains)[None] + 0.05 * rng.normal(size=(queries, retrains))
    scores = rng.normal(size=rows)[None] + 0.05 * rng.normal(size=(queries, rows))
    return losses, scores, masks


def test_with_shared_retrain_effects_only_the_two_way_interval_covers_the_null() -> None:
    covered_queries = covered_both = 0
    widths = []
    trials = 40
    for seed in range(trials):
        losses, scores, masks = shared_null(seed)
        values = lds_per_query(losses, scores, masks)
        q_lo, q_hi = bootstrap_ci(values, 300, np.random.default_rng(seed))
        b_lo, b_hi = two_way_ci(losses, scores, masks, 300, np.random.default_rng(seed))
        covered_queries += q_lo <= 0 <= q_hi
        covered_both += b_lo <= 0 <= b_hi
        widths.append((b_hi - b_lo) / (q_hi - q_lo))
    assert covered_both / trials >= 0.8
    assert covered_queries / trials <= 0.5
    assert np.median(widths) > 3


def test_two_way_interval_is_wide_even_when_every_query_is_the_same() -> None:
    losses, scores, masks = shared_null(0)
    losses, scores = np.repeat(losses[:1], 20, axis=0), np.repeat(scores[:1], 20, axis=0)
    q_lo, q_hi = bootstrap_ci(lds_per_query(losses, scores, masks), 200, np.random.default_rng(1))
    b_lo, b_hi = two_way_ci(losses, scores, masks, 200, np.random.default_rng(1))
    assert q_hi - q_lo < 1e-12 < b_hi - b_lo


def test_paired_draws_give_zero_for_one_estimator_and_a_positive_lead_for_a_better_one() -> None:
    rng = np.random.default_rng(3)
    queries, retrains, rows = 20, 40, 60
    masks = rng.random((retrains, rows)) < 0.5
    truth = rng.normal(size=(queries, rows))
    losses = -(truth.astype(np.float64) @ masks.T) + 0.5 * rng.normal(size=(queries, retrains))
    noisy = truth + 3.0 * rng.normal(size=truth.shape)
    draws = two_way_draws(losses, [predicted(truth, masks), predicted(truth, masks), predicted(noisy, masks)], 200,
                          np.random.default_rng(4))
    assert percentile_interval(draws[:, 0] - draws[:, 1]) == [0.0, 0.0]
    lo, hi = percentile_interval(draws[:, 0] - draws[:, 2])
    assert 0 < lo < hi


def test_without_shared_effects_the_two_way_interval_is_wider_but_bounded() -> None:
    """Independent queries: the two-way interval is conservative (wider than the query-only one), not unbounded."""
    ratios = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        masks = rng.random((30, 50)) < 0.5
        losses, scores = rng.normal(size=(20, 30)), rng.normal(size=(20, 50))
        q_lo, q_hi = bootstrap_ci(lds_per_query(losses, scores, masks), 300, np.random.default_rng(seed))
        b_lo, b_hi = two_way_ci(losses, scores, masks, 300, np.random.default_rng(seed))
        ratios.append((b_hi - b_lo) / (q_hi - q_lo))
    assert 1.0 < np.median(ratios) < 2.5
