"""Statistics of the unlearning report: per-method summaries with bootstrap intervals, paired
Wilcoxon tests against each baseline with Holm correction, win rates, per-target p-values vs random."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.stats import wilcoxon

METRICS = ("d_target", "d_paraphrases", "d_related", "d_unrelated", "d_general", "excess", "specificity_z",
           "related_ratio")
BASELINES = ("random", "bm25", "embedding", "bottom", "oracle")


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
    """(method, budget) → target → mean of the metric over seeds and draws."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[(row["method"], row["budget"])][row["target"]].append(row[metric])
    return {key: {t: float(np.nanmean(v)) for t, v in by_target.items()} for key, by_target in groups.items()}


def random_pvalues(rows: list[dict], method: str, budget: float) -> list[float]:
    """Per target: share of random draws with at least the method's excess (+1 smoothing)."""
    method_excess = per_target([r for r in rows if r["method"] == method], "excess")
    draws: dict = defaultdict(list)
    for r in rows:
        if r["method"] == "random" and r["budget"] == budget:
            draws[r["target"]].append(r["excess"])
    out = []
    for target, value in method_excess.get((method, budget), {}).items():
        pool = np.array(draws.get(target, []))
        out.append(float((1 + (pool >= value).sum()) / (1 + len(pool))) if len(pool) else float("nan"))
    return out


def summarize(rows: list[dict], settings) -> dict:
    """Per method and budget: metric means with 95 % intervals; for gradient methods, tests vs baselines."""
    tables = {metric: per_target(rows, metric) for metric in METRICS}
    summary: dict = {}
    for (method, budget), by_target in sorted(tables["excess"].items(), key=lambda kv: (kv[0][0], kv[0][1])):
        entry = {"targets": len(by_target)}
        for metric in METRICS:
            values = np.array(list(tables[metric][(method, budget)].values()), dtype=float)
            entry[metric] = {"mean": float(np.nanmean(values)) if len(values) else float("nan"),
                             "ci95": bootstrap_ci(values)}
        if method.startswith("gradient"):
            entry["vs"] = compare(tables["excess"], method, budget)
            entry["random_p_values"] = random_pvalues(rows, method, budget)
        summary.setdefault(method, {})[str(budget)] = entry
    return summary


def compare(excess: dict, method: str, budget: float) -> dict:
    """Paired Wilcoxon (method excess vs baseline excess over targets), Holm-corrected, and win rates."""
    ours = excess.get((method, budget), {})
    raw, wins = {}, {}
    for baseline in BASELINES:
        theirs = excess.get((baseline, budget), {})
        common = sorted(set(ours) & set(theirs))
        if len(common) < 2:
            continue
        a, b = np.array([ours[t] for t in common]), np.array([theirs[t] for t in common])
        wins[baseline] = float((a > b).mean())
        diff = a - b
        raw[baseline] = float(wilcoxon(diff, alternative="greater").pvalue) if np.any(diff != 0) else 1.0
    adjusted = holm(raw)
    return {b: {"win_rate": wins[b], "p_value": raw[b], "p_holm": adjusted[b]} for b in raw}
