"""Statistics of the unlearning report: per-method summaries with bootstrap intervals, paired
Wilcoxon tests against each baseline with Holm correction, win rates, per-target p-values vs random,
the related ratio net of random, the budget calibration and the cross-target matrix summary.

(The evidence checklist built on these numbers, and the verdict, are ``evaluation.ablation_checks``.)"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import wilcoxon

from evaluation.selections import Selection
from evaluation.targets import Target

METRICS = ("d_target", "d_paraphrases", "d_related", "d_unrelated", "d_general", "excess", "paraphrase_excess",
           "specificity_z")
"""Per-target metrics summarised as a mean over targets (the related ratio is a ratio of means instead)."""
BASELINES = (Selection.RANDOM, Selection.BM25, Selection.EMBEDDING, Selection.BOTTOM, Selection.ORACLE)
"""What the tested selections are compared with, in the order the report lists them."""
TESTED = (Selection.GRADIENT, Selection.GRADIENT_CONTRASTIVE, Selection.UNLEARNING, Selection.GIVEN)
"""Selections under test: compared with every baseline and checked against the evidence criteria."""
CALIBRATION_BAND = (0.01, 0.2)
"""Δ general loss (nats) that random selections should cost at a well-chosen budget (docs/EVALUATION.md §3)."""


def bootstrap_ci(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(reps, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    finite = sorted((p, name) for name, p in pvalues.items() if not np.isnan(p))
    adjusted, running = {}, 0.0
    for i, (p, name) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - i) * p))
        adjusted[name] = running
    return {name: adjusted.get(name, float("nan")) for name in pvalues}


def per_target(rows: list[dict], metric: str) -> dict[tuple[str, float], dict[int, float]]:
    """(method, budget) → target → mean of the metric over seeds and draws (NaN where every value is NaN)."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[(row["method"], row["budget"])][row["target"]].append(row[metric])
    return {key: {t: _nanmean(v) for t, v in by_target.items()} for key, by_target in groups.items()}


def _nanmean(values: list[float]) -> float:
    finite = np.asarray(values, dtype=float)
    finite = finite[~np.isnan(finite)]
    return float(finite.mean()) if len(finite) else float("nan")


def _random_pools(rows: list[dict], method: str, budget: float) -> list[tuple[float, np.ndarray]]:
    """Per target the method ran on: its mean excess and the excess of every measurable random draw."""
    method_excess = per_target([r for r in rows if r["method"] == method], "excess")
    draws: dict = defaultdict(list)
    for r in rows:
        if r["method"] == Selection.RANDOM and r["budget"] == budget:
            draws[r["target"]].append(r["excess"])
    out = []
    for target, value in method_excess.get((method, budget), {}).items():
        pool = np.array(draws.get(target, []), dtype=float)
        out.append((value, pool[~np.isnan(pool)]))
    return out


def random_pvalues(rows: list[dict], method: str, budget: float) -> list[float]:
    """Per target: share of random draws with at least the method's excess (+1 smoothing).

    One-sided; its smallest possible value is 1 / (draws + 1)."""
    out = []
    for value, pool in _random_pools(rows, method, budget):
        measurable = len(pool) and not np.isnan(value)  # a NaN excess beats no draw: not run, not p = 1/(n+1)
        out.append(float((1 + (pool >= value).sum()) / (1 + len(pool))) if measurable else float("nan"))
    return out


def random_draw_counts(rows: list[dict], method: str, budget: float) -> list[int]:
    """Per target (in :func:`random_pvalues`' order): how many measurable random draws its p-value rests on."""
    return [len(pool) for _, pool in _random_pools(rows, method, budget)]


@dataclass(frozen=True)
class RelatedRatio:
    """(mean Δrelated(method) − mean Δrelated(random)) / (mean Δtarget(method) − mean Δtarget(random)).

    Means over the targets both selections ran on (each target's random value is the mean of its draws), so
    what any selection costs the related prompts is subtracted, and a target whose own Δtarget is near zero
    cannot blow the ratio up. ``mean`` is None when it is not defined (the method does not hurt the target
    more than random) or not run (``targets`` is 0); ``ci95`` resamples targets (undefined resamples count as
    +∞, so the upper bound is None where they reach it).
    """

    mean: float | None
    ci95: tuple[float | None, float | None]
    targets: int
    note: str

    @property
    def defined(self) -> bool:
        return self.mean is not None


NOT_DEFINED = "not defined: the method does not hurt the target more than random"


def ratio_of_means(means: np.ndarray) -> np.ndarray:
    """``means``: (..., 2) mean net Δrelated, mean net Δtarget → their ratio, +∞ where Δtarget ≤ 0 (not defined)."""
    related, target = means[..., 0], means[..., 1]
    return np.where(target > 0, related / np.where(target > 0, target, 1.0), np.inf)


def net_related_ratio(tables: dict[str, dict], method: str, budget: float, reps: int = 2000,
                      seed: int = 0) -> RelatedRatio:
    """:class:`RelatedRatio` of one selection at one budget from :func:`per_target` tables of d_related and
    d_target."""
    if method == Selection.RANDOM:
        return RelatedRatio(None, (None, None), 0, "random is the reference the ratio subtracts")
    columns = [tables[metric].get((m, budget), {}) for metric in ("d_related", "d_target")
               for m in (method, Selection.RANDOM)]
    common = sorted(set.intersection(*(set(c) for c in columns)))
    values = np.array([[c[t] for c in columns] for t in common], dtype=float).reshape(-1, 4)
    values = values[np.isfinite(values).all(axis=1)]
    if not len(values):
        return RelatedRatio(None, (None, None), 0, "not run: needs related prompts and random draws")
    net = np.stack([values[:, 0] - values[:, 1], values[:, 2] - values[:, 3]], axis=1)
    value = float(ratio_of_means(net.mean(axis=0)))
    ci: tuple[float | None, float | None] = (None, None)
    if len(net) >= 2:
        picks = np.random.default_rng(seed).integers(0, len(net), size=(reps, len(net)))
        ratios = ratio_of_means(net[picks].mean(axis=1))
        low, high = np.quantile(ratios, [0.025, 0.975], method="inverted_cdf")
        ci = (_finite(low), _finite(high))
    if not np.isfinite(value):
        return RelatedRatio(None, ci, len(net), NOT_DEFINED)
    return RelatedRatio(value, ci, len(net), "ratio of means over targets, each net of random's mean")


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def summarize(rows: list[dict], settings) -> dict:
    """Per method and budget: metric means with 95 % intervals, the net related ratio; for the tested
    selections, tests vs baselines and per-target p-values vs their random draws."""
    tables = {metric: per_target(rows, metric) for metric in METRICS}
    summary: dict = {}
    for (method, budget), by_target in sorted(tables["excess"].items(), key=lambda kv: (kv[0][0], kv[0][1])):
        entry: dict = {"targets": len(by_target)}
        for metric in METRICS:
            values = np.array(list(tables[metric][(method, budget)].values()), dtype=float)
            entry[metric] = {"mean": _nanmean(values) if len(values) else float("nan"),
                             "ci95": bootstrap_ci(values)}
        entry["related_ratio"] = asdict(net_related_ratio(tables, method, budget))
        if method in TESTED:
            entry["vs"] = compare(tables["excess"], method, budget)
            entry["excess_vs"] = paired_differences(tables["excess"], method, budget)
            entry["random_p_values"] = random_pvalues(rows, method, budget)
            entry["random_draws"] = random_draw_counts(rows, method, budget)
        summary.setdefault(method, {})[str(budget)] = entry
    return summary


def paired_differences(excess: dict, method: str, budget: float) -> dict[str, dict]:
    """Per baseline: the mean of (method excess − baseline excess) over the targets both ran on, and how many."""
    ours, out = excess.get((method, budget), {}), {}
    for baseline in BASELINES:
        theirs = excess.get((baseline, budget), {})
        gaps = np.array([ours[t] - theirs[t] for t in sorted(set(ours) & set(theirs))], dtype=float)
        gaps = gaps[~np.isnan(gaps)]
        if len(gaps):
            out[baseline.value] = {"mean_difference": float(gaps.mean()), "targets": len(gaps)}
    return out


def compare(excess: dict, method: str, budget: float) -> dict:
    """Paired one-sided Wilcoxon (method excess > baseline excess over targets), Holm-corrected over the
    baselines compared, with win rates and the number of paired targets (``pairs``)."""
    ours = excess.get((method, budget), {})
    raw, wins, pairs = {}, {}, {}
    for baseline in BASELINES:
        theirs = excess.get((baseline, budget), {})
        common = sorted(set(ours) & set(theirs))
        if len(common) < 2:
            continue
        a, b = np.array([ours[t] for t in common]), np.array([theirs[t] for t in common])
        wins[baseline], pairs[baseline] = float((a > b).mean()), len(common)
        diff = a - b
        raw[baseline] = float(wilcoxon(diff, alternative="greater").pvalue) if np.any(diff != 0) else 1.0
    adjusted = holm(raw)
    return {b: {"win_rate": wins[b], "p_value": raw[b], "p_holm": adjusted[b], "pairs": pairs[b]} for b in raw}


def calibration(summary: dict, budgets) -> dict:
    """Random selections' Δ general loss per budget; the calibrated budget is the largest inside the band.

    With no budget inside the band, the one closest to it (in log scale) is chosen and flagged.
    """
    low, high = CALIBRATION_BAND
    per_budget = {}
    for budget in budgets:
        entry = summary.get(Selection.RANDOM, {}).get(str(budget))
        if entry is None:
            continue
        cost = entry["d_general"]["mean"]
        per_budget[str(budget)] = {"random_d_general": cost, "ci95": entry["d_general"]["ci95"],
                                   "in_band": bool(low <= cost <= high)}
    if not per_budget:
        return {"band": [low, high], "budgets": {}, "calibrated_budget": None,
                "note": "no random selections were run: the budgets are not calibrated"}
    inside = [float(b) for b, v in per_budget.items() if v["in_band"]]

    def distance(b: str) -> float:
        cost = max(per_budget[b]["random_d_general"], 1e-9)
        return 0.0 if low <= cost <= high else min(abs(np.log(cost / low)), abs(np.log(cost / high)))

    chosen = max(inside) if inside else float(min(per_budget, key=distance))
    note = ("largest budget whose random selections cost "
            f"{low}-{high} nats of general loss" if inside else
            f"no budget inside {low}-{high} nats: the closest was chosen; sweep other budgets")
    return {"band": [low, high], "budgets": per_budget, "calibrated_budget": chosen, "note": note}


def cross_target_summary(matrix: list[list[float]], targets: list[Target]) -> dict:
    """How much the diagonal dominates: row i ascends on target i's selection, column j is Δ on target j."""
    m = np.asarray(matrix, dtype=float)
    n = len(m)
    off = ~np.eye(n, dtype=bool)
    same = np.array([[targets[i].attribute is not None and targets[i].attribute == targets[j].attribute
                      for j in range(n)]
                     for i in range(n)]) & off
    return {"diagonal_mean": float(np.diag(m).mean()),
            "off_diagonal_mean": float(m[off].mean()),
            "same_relation_off_diagonal_mean": float(m[same].mean()) if same.any() else float("nan"),
            "diagonal_is_row_max": float((m.argmax(axis=1) == np.arange(n)).mean()),
            "diagonal_is_column_max": float((m.argmax(axis=0) == np.arange(n)).mean())}
