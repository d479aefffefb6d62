"""The evidence checklist of docs/EVALUATION.md §3 and the one verdict built from it.

Every check reads ``passed``, ``failed`` or ``not run``, each with its reason. A check whose test cannot reach
its threshold with this many targets, random draws or budgets is *not run* (with what it would need), never
*failed*: with 6 targets a one-sided paired test cannot give p < 1/64, so a method that won 6 of 6 must not read
as having lost. The verdict of a tested selection is ``supported`` only when every check passed at the same
≥ 2 budgets, ``not supported`` when a check failed, else ``inconclusive``. The web page, the API and
``headwater ablate`` all show this verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from evaluation.ablation_stats import BASELINES, TESTED, holm
from evaluation.selections import Selection
from evaluation.targets import Target

ALPHA = 0.01
"""Beats random: p below this (Holm-corrected)."""
WIN_RATE = 0.75
"""Beats random, paired test: the method's excess above random's on at least this share of targets."""
MIN_Z = 2.0
MAX_RELATED_RATIO = 0.5
MIN_BUDGETS = 2
"""Supported: every check passed at this many budgets."""

CAVEAT = ("One ascent step on a selection raises the target's loss by about η·∇L(target)·∇L(selection), itself a "
          "gradient-similarity score, so rows picked by gradient similarity hurt the target by construction: beating "
          "random alone proves little. Specificity, the related ratio (net of random) and the paraphrases are what "
          "make the check informative. It is a one-step unlearning check on this model, not removal and retraining.")
"""What a verdict does and does not show (docs/EVALUATION.md §3)."""


class CheckStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not run"


class Check(StrEnum):
    """The checklist, in the order it is reported."""

    BEATS_RANDOM = "beats_random"
    SPECIFICITY = "specificity_z_ge_2"
    RELATED_RATIO = "related_ratio_le_0_5"
    PARAPHRASES = "carries_to_paraphrases"
    RIVALS = "not_worse_than_bm25_embedding"
    BOTTOM = "bottom_no_worse_than_random"

    @property
    def label(self) -> str:
        """How the page and the markdown name it."""
        return LABELS[self]


LABELS = {Check.BEATS_RANDOM: "beats random", Check.SPECIFICITY: "specificity z ≥ 2",
          Check.RELATED_RATIO: "related ratio ≤ 0.5", Check.PARAPHRASES: "carries to paraphrases",
          Check.RIVALS: "not worse than BM25/embedding", Check.BOTTOM: "bottom no worse than random"}


class Verdict(StrEnum):
    SUPPORTED = "supported"
    NOT_SUPPORTED = "not supported"
    INCONCLUSIVE = "inconclusive"

    @property
    def legacy(self) -> str:
        """The name schema 2's ``evidence`` used."""
        return {"supported": "evidenced", "not supported": "not evidenced", "inconclusive": "incomplete"}[self]


@dataclass(frozen=True)
class CheckResult:
    """One check at one budget."""

    check: Check
    status: CheckStatus
    reason: str

    @property
    def ok(self) -> bool | None:
        """Schema 2's value: True passed, False failed, None not run."""
        return None if self.status is CheckStatus.NOT_RUN else self.status is CheckStatus.PASSED


def _result(check: Check, ok: bool, reason: str) -> CheckResult:
    return CheckResult(check, CheckStatus.PASSED if ok else CheckStatus.FAILED, reason)


def _not_run(check: Check, reason: str) -> CheckResult:
    return CheckResult(check, CheckStatus.NOT_RUN, reason)


def paired_targets_needed(comparisons: int, alpha: float = ALPHA) -> int:
    """Fewest targets at which the one-sided paired Wilcoxon, Holm-corrected over ``comparisons`` baselines, can
    give p < ``alpha``: its smallest p is 2⁻ⁿ (every target won), which Holm multiplies by ``comparisons``."""
    n = 1
    while max(comparisons, 1) / 2**n >= alpha:
        n += 1
    return n


def draws_needed(targets: int, alpha: float = ALPHA) -> int:
    """Fewest random draws per target at which each target's own test (the share of draws at least as damaging,
    +1 smoothing: smallest p 1/(draws+1)), Holm-corrected over ``targets``, can give p < ``alpha``."""
    draws = math.floor(targets / alpha)
    return draws if targets / (draws + 1) < alpha else draws + 1


def _mean(entry: dict | None, metric: str) -> float | None:
    value = entry[metric]["mean"] if entry else None
    return None if value is None or np.isnan(value) else float(value)


def beats_random(entry: dict, comparisons: int) -> CheckResult:
    """The paired test across targets where it can reach ``ALPHA``, else each target against its own random draws
    where those can, else not run with what either would need."""
    check = Check.BEATS_RANDOM
    versus = entry.get("vs", {}).get(Selection.RANDOM)
    p_values, draws = entry.get("random_p_values", []), entry.get("random_draws", [])
    if versus is None and not any(draws):
        return _not_run(check, "needs random draws")
    targets = versus["pairs"] if versus else len(p_values)
    needed = paired_targets_needed(comparisons)
    if versus is not None and targets >= needed:
        return _paired(versus)
    fewest = min(draws) if draws else 0
    if p_values and fewest >= draws_needed(len(p_values)):
        return _per_target(p_values, fewest)
    return _not_run(check, f"needs ≥ {needed} targets (one-sided paired Wilcoxon, Holm over {comparisons} "
                           f"baselines: smallest p = {comparisons}/2^targets) or ≥ {draws_needed(len(p_values) or 1)} "
                           f"random draws per target (smallest p = 1/(draws+1), Holm over the targets); this run has "
                           f"{targets} target(s) and {fewest} draws")


def _paired(versus: dict) -> CheckResult:
    p, win = versus["p_holm"], versus["win_rate"]
    if np.isnan(p):
        return _not_run(Check.BEATS_RANDOM, "the paired test could not be computed")
    return _result(Check.BEATS_RANDOM, p < ALPHA and win >= WIN_RATE,
                   f"paired Wilcoxon over {versus['pairs']} targets: Holm p = {p:.3g}, win rate {win:.2f}; needs "
                   f"p < {ALPHA} and win rate ≥ {WIN_RATE}")


def _per_target(p_values: Sequence[float], draws: int) -> CheckResult:
    if any(np.isnan(p) for p in p_values):
        return _not_run(Check.BEATS_RANDOM, "a target's excess could not be measured")
    worst = max(holm({str(i): p for i, p in enumerate(p_values)}).values())
    return _result(Check.BEATS_RANDOM, worst < ALPHA,
                   f"each of {len(p_values)} target(s) against ≥ {draws} random draws: largest Holm p = {worst:.3g} "
                   f"; needs < {ALPHA}")


def specificity(entry: dict) -> CheckResult:
    z = _mean(entry, "specificity_z")
    if z is None:
        return _not_run(Check.SPECIFICITY, "needs ≥ 2 related or unrelated prompts per target")
    return _result(Check.SPECIFICITY, z >= MIN_Z, f"mean z = {z:.2f}; needs ≥ {MIN_Z:g}")


def related_ratio(entry: dict) -> CheckResult:
    """The ratio of means net of random (``RelatedRatio``): undefined means the target was not hurt more than by
    random rows, a failure; no related prompts or no random draws, not run."""
    ratio = entry.get("related_ratio") or {}
    if not ratio.get("targets"):
        return _not_run(Check.RELATED_RATIO, ratio.get("note") or "needs related prompts and random draws")
    if ratio.get("mean") is None:
        return _result(Check.RELATED_RATIO, False, ratio["note"])
    return _result(Check.RELATED_RATIO, ratio["mean"] <= MAX_RELATED_RATIO,
                   f"related ratio net of random = {ratio['mean']:.2f} over {ratio['targets']} target(s); "
                   f"needs ≤ {MAX_RELATED_RATIO}")


def paraphrases(entry: dict) -> CheckResult:
    low = entry["paraphrase_excess"]["ci95"][0]
    if low is None or np.isnan(low):
        return _not_run(Check.PARAPHRASES, "needs paraphrases on ≥ 2 targets (a 95 % interval over targets)")
    return _result(Check.PARAPHRASES, low > 0, f"paraphrase excess 95 % interval starts at {low:.3f}; needs > 0")


def rivals(entry: dict) -> CheckResult:
    """Not worse than BM25 and embedding: the mean excess difference over the targets both ran on is ≥ 0 (a rival
    that found nothing for some targets is compared on the others)."""
    gaps = {m.value: entry.get("excess_vs", {}).get(m.value) for m in (Selection.BM25, Selection.EMBEDDING)}
    gaps = {m: g for m, g in gaps.items() if g}
    if not gaps:
        return _not_run(Check.RIVALS, "needs the bm25 or embedding selection")
    worst = min(gaps, key=lambda m: gaps[m]["mean_difference"])
    gap = gaps[worst]
    return _result(Check.RIVALS, gap["mean_difference"] >= 0,
                   f"mean excess minus {worst}'s = {gap['mean_difference']:.3f} over {gap['targets']} target(s); "
                   "needs ≥ 0")


def bottom(summary: dict, budget: str) -> CheckResult:
    ours = _mean(summary.get(Selection.BOTTOM, {}).get(budget), "d_target")
    random_ci = summary.get(Selection.RANDOM, {}).get(budget, {}).get("d_target", {}).get("ci95")
    high = None if random_ci is None else random_ci[1]
    if ours is None or high is None or np.isnan(high):
        return _not_run(Check.BOTTOM, "needs the bottom selection and random draws on ≥ 2 targets")
    return _result(Check.BOTTOM, ours <= high, f"bottom Δtarget {ours:.3f} vs random's 95 % interval up to {high:.3f}")


def checklist(summary: dict, method: str, budget: str) -> tuple[CheckResult, ...]:
    """One tested selection's checks at one budget, in :class:`Check` order."""
    entry = summary[method][budget]
    compared = len(entry.get("vs", {})) or sum(1 for b in BASELINES if budget in summary.get(b, {}))
    return (beats_random(entry, max(compared, 1)), specificity(entry), related_ratio(entry), paraphrases(entry),
            rivals(entry), bottom(summary, budget))


@dataclass(frozen=True)
class CheckPlan:
    """What a request will measure, known before any ascent: enough to say which checks cannot run."""

    targets: int
    draws: int
    """Random draws per target (seeds × draws per seed)."""
    budgets: int
    tested: tuple[Selection, ...]
    baselines: tuple[Selection, ...]
    with_paraphrases: int
    with_related: int

    @classmethod
    def of(cls, targets: Sequence[Target], methods: Sequence[Selection], budgets: int, draws: int) -> CheckPlan:
        """The plan of ``targets`` ascended on ``methods``: ``given`` counts where a target has example_ids,
        ``oracle`` where one has gold rows."""
        present = set(methods)
        if not any(t.example_ids for t in targets):
            present.discard(Selection.GIVEN)
        if not any(t.gold_rows for t in targets):
            present.discard(Selection.ORACLE)
        return cls(len(targets), draws if Selection.RANDOM in present else 0, budgets,
                   tuple(m for m in TESTED if m in present), tuple(m for m in BASELINES if m in present),
                   sum(1 for t in targets if t.paraphrases), sum(1 for t in targets if t.related))


def unrunnable(plan: CheckPlan) -> list[str]:
    """Why checks will read *not run* (and so the verdict at best *inconclusive*), said before the job starts."""
    if not plan.tested:
        return [f"no selection under test ({', '.join(TESTED)}) was asked for: the report will have measurements "
                "but no checklist or verdict"]
    out = []
    if plan.budgets < MIN_BUDGETS:
        out.append(f"supported needs every check passing at ≥ {MIN_BUDGETS} budgets; with {plan.budgets} the verdict "
                   "is at best inconclusive")
    out += _random_warnings(plan)
    if plan.with_paraphrases < 2:
        out.append(f"{Check.PARAPHRASES.label} will not run: needs paraphrases on ≥ 2 targets")
    if not plan.with_related:
        out.append(f"{Check.RELATED_RATIO.label} will not run: needs related prompts")
    if not {Selection.BM25, Selection.EMBEDDING} & set(plan.baselines):
        out.append(f"{Check.RIVALS.label} will not run: needs method bm25 or embedding")
    if Selection.BOTTOM not in plan.baselines or plan.targets < 2:
        out.append(f"{Check.BOTTOM.label} will not run: needs method bottom, random and ≥ 2 targets")
    return out


def _random_warnings(plan: CheckPlan) -> list[str]:
    if not plan.draws:
        return [f"{Check.BEATS_RANDOM.label}, {Check.RELATED_RATIO.label} and {Check.BOTTOM.label} will not run: "
                "needs method random"]
    comparisons = len(plan.baselines)
    needed, draws = paired_targets_needed(comparisons), draws_needed(plan.targets)
    if plan.targets >= needed or plan.draws >= draws:
        return []
    return [f"{Check.BEATS_RANDOM.label} will not run: with {plan.targets} target(s) the one-sided paired Wilcoxon, "
            f"Holm over {comparisons} baselines, cannot give p < {ALPHA} (needs ≥ {needed} targets), and "
            f"{plan.draws} random draws per target cannot either (needs ≥ {draws}: seeds × random_draws)"]
