"""The statistics of LDS: Spearman over subsets, bootstrap intervals over queries, a score-permutation null.

Predicted loss change: subset ``j`` keeps rows ``S_j``, so the attribution predicts
``g_j(z) = Σ_{i∈S_j} score_i(z)``; a higher score must mean a *lower* loss, hence
``LDS(z) = Spearman(f_j(z), −g_j(z))`` over subsets ``j``.

The null: permuting one query's scores across rows keeps their distribution and breaks any
link to the rows; because every subset has the same size, ``g_j`` and ``g_k`` are then exchangeable,
so the expected Spearman is exactly 0. Repeating it gives a null distribution of the mean LDS and a
one-sided permutation p-value for a method.

Two intervals: resampling queries alone treats them as independent, but every query's loss is measured on the same
retrains, so one retrain that moves every loss alike (a lucky init, a batch order) moves every query's Spearman
together and the mean over queries keeps that error however many queries there are. ``two_way_ci`` resamples the
retrains too (queries and retrains drawn with replacement, each draw's Spearman over the drawn retrains), the
interval to read when asking whether an estimator is above zero or above another: on the larger field-LDS case the
shuffled control read −0.065 with a query-only interval of [−0.102, −0.026]. It is conservative: each query's own
retrain-to-retrain noise is counted twice (in the spread over queries and again over retrains), so where the queries
share no retrain effect it is about 1.6× too wide (a review's synthetic check); it leans to "tie", never to "lead".
``two_way_draws`` gives several estimators' means on the same draws, for paired differences.

Top-k LDS: a planted fact is stated in a few dozen of the demo's 19,200 rows, and a half keeps about
half of those; summing a method's scores over *every* row of a half lets thousands of small scores on
rows that do not matter drown the few that do. ``top_k_only`` keeps each query's ``k`` highest scores
and zeroes the rest, so ``g_j`` sums only the rows the method would show a user. The same
permutation null applies (the ``k`` kept scores land on random rows).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation along the last axis (ties get average ranks); NaN where either side is constant."""
    ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
    ra, rb = np.broadcast_arrays(ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True))
    den = np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(-1) / den, np.nan)


def predicted(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``g`` ``(..., subsets)``: each subset's summed row scores (scores ``(..., rows)``, masks ``(subsets, rows)``)."""
    return scores.astype(np.float64) @ masks.T.astype(np.float64)


def lds_per_query(losses: np.ndarray, scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """LDS of each query from losses ``(queries, subsets)`` and scores ``(queries, rows)``."""
    return spearman(losses, -predicted(scores, masks))


def shuffle_rows(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each query's scores randomly permuted across rows (the shuffled-score control)."""
    return rng.permuted(scores, axis=-1)


def top_k_only(scores: np.ndarray, k: int) -> np.ndarray:
    """Each query's ``k`` highest scores kept, every other row's set to 0 (scores ``(queries, rows)``)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k >= scores.shape[-1]:
        return scores.astype(np.float64)
    top = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    kept = np.zeros(scores.shape, dtype=np.float64)
    np.put_along_axis(kept, top, np.take_along_axis(scores, top, axis=-1), axis=-1)
    return kept


def permutation_null(losses: np.ndarray, scores: np.ndarray, masks: np.ndarray, shuffles: int,
                     rng: np.random.Generator, block: int = 100) -> np.ndarray:
    """Mean LDS over queries under ``shuffles`` independent row permutations of every query's scores."""
    per_query = np.empty((len(losses), shuffles))
    for q in range(len(losses)):
        for start in range(0, shuffles, block):
            n = min(block, shuffles - start)
            permuted = rng.permuted(np.tile(scores[q], (n, 1)), axis=1)
            per_query[q, start : start + n] = spearman(losses[q][None], -predicted(permuted, masks))
    return np.nanmean(per_query, axis=0)


def bootstrap_ci(values: np.ndarray, draws: int, rng: np.random.Generator, level: float = 0.95) -> list[float]:
    """Percentile interval of the mean over queries (NaN-valued queries left out)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return [float("nan"), float("nan")]
    return percentile_interval(values[rng.integers(0, len(values), (draws, len(values)))].mean(axis=1), level)


def two_way_draws(losses: np.ndarray, predictions: list[np.ndarray], draws: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``(draws, len(predictions))``: the mean LDS over queries of each prediction ``g`` ``(queries, retrains)``
    when queries and retrains are both drawn with replacement (the same draw for every prediction: paired)."""
    queries, retrains = losses.shape
    out = np.full((draws, len(predictions)), np.nan)
    for d in range(draws):
        q = rng.integers(0, queries, queries)
        r = rng.integers(0, retrains, retrains)
        f = losses[np.ix_(q, r)]
        for i, g in enumerate(predictions):
            values = spearman(f, -g[np.ix_(q, r)])
            if np.isfinite(values).any():
                out[d, i] = np.nanmean(values)
    return out


def percentile_interval(means: np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` percentile interval of bootstrap means (NaN draws left out)."""
    means = means[np.isfinite(means)]
    if len(means) == 0:
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def two_way_ci(losses: np.ndarray, scores: np.ndarray, masks: np.ndarray, draws: int,
               rng: np.random.Generator) -> list[float]:
    """95 % interval of the mean LDS with queries and retrains resampled (see the module docstring)."""
    return percentile_interval(two_way_draws(losses, [predicted(scores, masks)], draws, rng)[:, 0])


def summarize(values: np.ndarray, null: np.ndarray, draws: int, rng: np.random.Generator,
              two_way: list[float] | None = None) -> dict:
    """Mean LDS, its bootstrap interval over queries (and ``two_way``, over queries and retrains, when given), the
    null's mean and sd, and the one-sided permutation p-value."""
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    return {
        "mean": mean,
        "ci95": bootstrap_ci(values, draws, rng),
        **({"ci95_two_way": two_way} if two_way is not None else {}),
        "queries": int(len(finite)),
        "null_mean": float(null.mean()),
        "null_sd": float(null.std(ddof=1)),
        "p_value": float((1 + np.sum(null >= mean)) / (1 + len(null))),
        "per_query": [float(v) if np.isfinite(v) else None for v in values],  # None: constant over subsets
    }
