"""Statistics of the unlearning report: per-method summaries with bootstrap intervals, paired
Wilcoxon tests against each baseline with Holm correction, win rates, per-target p-values vs random,
the budget calibration, the evidence checklist of EVALUATION.md §3 and the cross-target matrix summary."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.stats import wilcoxon

from evaluation.selections import Selection
from evaluation.targets import Target

METRICS = ("d_target", "d_paraphrases", "d_related", "d_unrelated", "d_general", "excess", "paraphrase_excess",
           "specificity_z", "related_ratio")
BASELINES = (Selection.RANDOM, Selection.BM25, Selection.EMBEDDING, Selection.BOTTOM, Selection.ORACLE)
"""What the tested selections are compared with, in the order the report lists them."""
TESTED = (Selection.GRADIENT, Selection.GRADIENT_CONTRASTIVE, Selection.UNLEARNING, Selection.GIVEN)
"""Selections under test: compared with every baseline and checked against the evidence criteria."""
CALIBRATION_BAND = (0.01, 0.2)
"""Δ general loss (nats) that random selections should cost at a well-chosen budget (EVALUATION.md §3)."""


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
        if r["method"] == Selection.RANDOM and r["budget"] == budget:
            draws[r["target"]].append(r["excess"])
    out = []
    for target, value in method_excess.get((method, budget), {}).items():
        pool = np.array(draws.get(target, []), dtype=float)
        pool = pool[~np.isnan(pool)]
        measurable = len(pool) and not np.isnan(value)  # a NaN excess beats no draw: not run, not p = 1/(n+1)
        out.append(float((1 + (pool >= value).sum()) / (1 + len(pool))) if measurable else float("nan"))
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
        if method in TESTED:
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


def _mean(summary: dict, method: str, budget: str, metric: str) -> float | None:
    entry = summary.get(method, {}).get(budget)
    value = entry[metric]["mean"] if entry else None
    return None if value is None or np.isnan(value) else value


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


CHECKS: dict[str, str] = {
    "beats_random": "random draws and ≥ 2 targets (a paired test across targets)",
    "specificity_z_ge_2": "≥ 2 related or unrelated prompts per target",
    "related_ratio_le_0_5": "related prompts",
    "carries_to_paraphrases": "paraphrases on ≥ 2 targets (a 95 % interval)",
    "not_worse_than_bm25_embedding": "the bm25 or embedding selection",
    "bottom_no_worse_than_random": "the bottom selection and random draws on ≥ 2 targets",
}
"""The evidence checklist (EVALUATION.md §3): each check's name and what it needs to be run at all."""


def _checks(summary: dict, method: str, budget: str) -> dict[str, bool | None]:
    """One tested method's checks at one budget: True passed, False failed, None not run (not measurable)."""
    entry = summary[method][budget]
    versus = entry.get("vs", {}).get(Selection.RANDOM)
    z, ratio = _mean(summary, method, budget, "specificity_z"), _mean(summary, method, budget, "related_ratio")
    para_low = entry["paraphrase_excess"]["ci95"][0]
    excess = _mean(summary, method, budget, "excess")
    rivals = [_mean(summary, m, budget, "excess") for m in (Selection.BM25, Selection.EMBEDDING)]
    rivals = [r for r in rivals if r is not None]
    bottom = _mean(summary, Selection.BOTTOM, budget, "d_target")
    random_ci = summary.get(Selection.RANDOM, {}).get(budget, {}).get("d_target", {}).get("ci95")
    beats = None if versus is None or np.isnan(versus["p_holm"]) else bool(
        versus["p_holm"] < 0.01 and versus["win_rate"] >= 0.75)
    return {
        "beats_random": beats,
        "specificity_z_ge_2": None if z is None else bool(z >= 2),
        "related_ratio_le_0_5": None if ratio is None else bool(ratio <= 0.5),
        "carries_to_paraphrases": None if para_low is None or np.isnan(para_low) else bool(para_low > 0),
        "not_worse_than_bm25_embedding": None if excess is None or not rivals else bool(excess >= max(rivals)),
        "bottom_no_worse_than_random": None if bottom is None or random_ci is None or random_ci[1] is None
        or np.isnan(random_ci[1]) else bool(bottom <= random_ci[1]),
    }


def budget_status(checks: dict[str, bool | None]) -> dict:
    """A budget's checks judged: ``passed`` only when every check ran and passed; a check that could not be
    run is listed in ``not_run`` and is never counted as passed."""
    failed = [name for name, ok in checks.items() if ok is False]
    not_run = [name for name, ok in checks.items() if ok is None]
    status = "failed" if failed else "incomplete" if not_run else "passed"
    return {"checks": checks, "status": status, "passed": status == "passed", "failed": failed,
            "not_run": not_run}


def evidence(summary: dict, budgets) -> dict:
    """EVALUATION.md §3's criteria per tested method and budget (:data:`CHECKS`).

    Beats random (Holm p < 0.01, win rate ≥ 0.75), specificity z ≥ 2, related ratio ≤ 0.5,
    carries over to the paraphrases (paraphrase excess 95 % CI above 0), not worse than BM25 and
    embedding (mean excess), and ``bottom`` no worse than random (mean Δtarget within random's CI).
    A check that cannot be computed here (too few targets, a selection not run) is *not run*: it makes
    its budget ``incomplete``, never ``passed``. A method is ``evidenced`` when every check ran and
    passed at ≥ 2 budgets; else ``not evidenced`` when a check failed, ``incomplete`` when none failed.
    """
    out = {}
    for method in TESTED:
        if method not in summary:
            continue
        by_budget = {budget: budget_status(_checks(summary, method, budget))
                     for budget in (str(b) for b in budgets) if budget in summary[method]}
        passing = [b for b, v in by_budget.items() if v["passed"]]
        not_run = sorted({name for v in by_budget.values() for name in v["not_run"]}, key=list(CHECKS).index)
        failed = any(v["failed"] for v in by_budget.values())
        verdict = "evidenced" if len(passing) >= 2 else "not evidenced" if failed or not not_run else "incomplete"
        out[method] = {"budgets": by_budget, "passing_budgets": passing, "evidence": verdict == "evidenced",
                       "verdict": verdict, "not_run": not_run, "not_run_needs": {n: CHECKS[n] for n in not_run}}
    return out


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
