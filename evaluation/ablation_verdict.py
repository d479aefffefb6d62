"""One verdict per tested selection, built from the evidence checklist at every budget.

``supported`` when every check passed at the same ≥ 2 budgets; ``not supported`` when a check failed (at enough
budgets that it cannot pass at 2); ``inconclusive`` when none failed but some could not run. The report carries it
as ``verdicts`` (with every check's status and reason and a short explanation of what the verdict does and does not
show) and, in schema 2's shape, as ``evidence``. The page, the API and ``headwater ablate`` read these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from evaluation.ablation_checks import CAVEAT, MIN_BUDGETS, Check, CheckResult, CheckStatus, Verdict, checklist
from evaluation.ablation_stats import TESTED

HEADLINES = {
    Verdict.SUPPORTED: f"Supported: every check passed at ≥ {MIN_BUDGETS} budgets: these rows hurt the target more "
                       "than random rows, specifically (not its related prompts), carrying over to paraphrases, no "
                       "less than BM25/embedding rows.",
    Verdict.NOT_SUPPORTED: "Not supported: at least one check failed.",
    Verdict.INCONCLUSIVE: "Inconclusive: no check failed, but some could not run with this many targets, random "
                          "draws, budgets or selections; this neither supports nor refutes the attribution.",
}


@dataclass(frozen=True)
class BudgetChecks:
    """The checklist of one tested selection at one budget."""

    budget: str
    results: tuple[CheckResult, ...]

    def named(self, status: CheckStatus) -> list[str]:
        return [r.check.value for r in self.results if r.status is status]

    @property
    def status(self) -> str:
        """``failed`` when a check failed, else ``incomplete`` when one did not run, else ``passed``."""
        return ("failed" if self.named(CheckStatus.FAILED) else "incomplete" if self.named(CheckStatus.NOT_RUN)
                else "passed")

    def to_json(self) -> dict:
        """Schema 2's budget entry (``checks``: True / False / None) plus each check's status and reason."""
        return {"checks": {r.check.value: r.ok for r in self.results}, "status": self.status,
                "passed": self.status == "passed", "failed": self.named(CheckStatus.FAILED),
                "not_run": self.named(CheckStatus.NOT_RUN),
                "reasons": {r.check.value: r.reason for r in self.results}}


@dataclass(frozen=True)
class CheckSummary:
    """One check over every budget: passed at ≥ MIN_BUDGETS budgets, else failed where it failed, else not run."""

    check: Check
    status: CheckStatus
    reason: str
    budgets: dict[str, CheckStatus]

    def to_json(self) -> dict:
        return {"name": self.check.value, "label": self.check.label, "status": self.status.value,
                "reason": self.reason, "budgets": {b: s.value for b, s in self.budgets.items()}}


def summarize_check(check: Check, by_budget: Iterable[BudgetChecks]) -> CheckSummary:
    results = {b.budget: next(r for r in b.results if r.check is check) for b in by_budget}
    at = {status: [b for b, r in results.items() if r.status is status] for status in CheckStatus}
    statuses = {b: r.status for b, r in results.items()}
    passed, failed, not_run = at[CheckStatus.PASSED], at[CheckStatus.FAILED], at[CheckStatus.NOT_RUN]
    if len(passed) >= MIN_BUDGETS:
        return CheckSummary(check, CheckStatus.PASSED, f"passed at budgets {', '.join(passed)}; at {passed[-1]}: "
                                                       f"{results[passed[-1]].reason}", statuses)
    if failed:
        return CheckSummary(check, CheckStatus.FAILED, f"failed at budget(s) {', '.join(failed)}; at {failed[0]}: "
                                                       f"{results[failed[0]].reason}", statuses)
    if not_run:
        return CheckSummary(check, CheckStatus.NOT_RUN, results[not_run[0]].reason, statuses)
    where = ", ".join(passed) or "no budget"
    return CheckSummary(check, CheckStatus.NOT_RUN, f"passed at {where} only; needs ≥ {MIN_BUDGETS} budgets",
                        statuses)


@dataclass(frozen=True)
class MethodVerdict:
    """The verdict on one tested selection, with the checks it rests on."""

    method: str
    verdict: Verdict
    reason: str
    checks: tuple[CheckSummary, ...]
    budgets: tuple[BudgetChecks, ...]
    passing_budgets: tuple[str, ...]

    @property
    def explanation(self) -> str:
        return f"{HEADLINES[self.verdict]} {CAVEAT}"

    def to_json(self) -> dict:
        return {"method": self.method, "verdict": self.verdict.value, "reason": self.reason,
                "explanation": self.explanation, "passing_budgets": list(self.passing_budgets),
                "checks": [c.to_json() for c in self.checks]}

    def evidence(self) -> dict:
        """Schema 2's ``evidence`` entry (``verdict``: evidenced / not evidenced / incomplete; ``not_run_needs``:
        what each check not run needs, read after the word "needs")."""
        not_run = [c for c in self.checks if c.status is CheckStatus.NOT_RUN]
        return {"budgets": {b.budget: b.to_json() for b in self.budgets}, "passing_budgets": list(self.passing_budgets),
                "evidence": self.verdict is Verdict.SUPPORTED, "verdict": self.verdict.legacy,
                "not_run": [c.check.value for c in not_run],
                "not_run_needs": {c.check.value: c.reason.removeprefix("needs ") for c in not_run}}


def judge_method(summary: dict, method: str, budgets: Iterable[str]) -> MethodVerdict:
    """The verdict on ``method`` from its checklist at each of ``budgets`` it ran at."""
    by_budget = tuple(BudgetChecks(b, checklist(summary, method, b)) for b in budgets if b in summary[method])
    checks = tuple(summarize_check(c, by_budget) for c in Check)
    passing = tuple(b.budget for b in by_budget if b.status == "passed")
    failed = [c for c in checks if c.status is CheckStatus.FAILED]
    not_run = [c for c in checks if c.status is CheckStatus.NOT_RUN]
    if len(passing) >= MIN_BUDGETS:
        verdict, reason = Verdict.SUPPORTED, f"every check passed at budgets {', '.join(passing)}"
    elif failed or not not_run:
        verdict = Verdict.NOT_SUPPORTED
        reason = ("failed: " + ", ".join(c.check.label for c in failed) if failed else
                  f"no {MIN_BUDGETS} budgets at which every check passed")
    else:
        verdict, reason = Verdict.INCONCLUSIVE, "not run: " + ", ".join(c.check.label for c in not_run)
    return MethodVerdict(method, verdict, reason, checks, by_budget, passing)


def judge(summary: dict, budgets: Iterable[float]) -> dict[str, MethodVerdict]:
    """Every tested selection of the summary, judged (docs/EVALUATION.md §3)."""
    names = [str(b) for b in budgets]
    return {m.value: judge_method(summary, m, names) for m in TESTED if m in summary}


def evidence(summary: dict, budgets: Iterable[float]) -> dict:
    """Schema 2's ``evidence`` section: per tested selection, each budget's checks and the legacy verdict."""
    return {method: verdict.evidence() for method, verdict in judge(summary, budgets).items()}
