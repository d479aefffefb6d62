"""Write the unlearning report: ``report.json`` (versioned), ``report.md`` and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from evaluation.ablation_checks import CAVEAT, Check
from evaluation.removal_column import removal_lines


def fmt(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def pvalue(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3g}"


def markdown(report: dict) -> str:
    """The report as markdown: what ran, the summary table, calibration, the checklist and the verdicts."""
    config = report["config"]
    lines = [f"# Unlearning report (schema {report['schema_version']})", "",
             f"{config['targets']} targets, {config['examples']} indexed examples, k={config['k']}, "
             f"budgets {config['budgets']}, {config['seeds']} seeds, {config['random_draws']} random draws per seed.",
             "", "One-step check: each selection is ascended on once to a fixed ‖Δθ‖, no retraining (the "
             "counterfactual removal-and-retrain column follows when a removal report was given).",
             "", "Deltas are in nats (completion NLL; general: mean token NLL). excess = Δtarget − mean Δunrelated; "
             "z = (Δtarget − mean Δcontrols) / sd(Δcontrols); related ratio = (mean Δrelated − random's) / "
             "(mean Δtarget − random's), over targets (— where the target is not hurt more than by random rows).", "",
             "| method | budget | Δtarget | Δparaphrases | Δrelated | Δunrelated | Δgeneral | excess [95% CI] | z | "
             "related ratio [95% CI] | vs random: win rate, p (Holm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, budgets in report["summary"].items():
        lines += [summary_line(method, budget, entry) for budget, entry in budgets.items()]
    return "\n".join(lines[:2] + warning_lines(report) + lines[2:] + not_run_lines(report) + removal_lines(report)
                     + calibration_lines(report) + evidence_lines(report) + verdict_lines(report)
                     + cross_target_lines(report)) + "\n"


def summary_line(method: str, budget: str, entry: dict) -> str:
    ci, ratio = entry["excess"]["ci95"], entry["related_ratio"]
    versus = entry.get("vs", {}).get("random")
    vs = f"{fmt(versus['win_rate'])}, {pvalue(versus['p_holm'])}" if versus else "—"
    return (f"| {method} | {budget} | {fmt(entry['d_target']['mean'])} | {fmt(entry['d_paraphrases']['mean'])} | "
            f"{fmt(entry['d_related']['mean'])} | {fmt(entry['d_unrelated']['mean'])} | "
            f"{fmt(entry['d_general']['mean'])} | {fmt(entry['excess']['mean'])} [{fmt(ci[0])}, {fmt(ci[1])}] | "
            f"{fmt(entry['specificity_z']['mean'])} | {fmt(ratio['mean'])} [{fmt(ratio['ci95'][0])}, "
            f"{fmt(ratio['ci95'][1])}] | {vs} |")


def warning_lines(report: dict) -> list[str]:
    """What the request could not measure, said before the numbers."""
    warnings = report.get("warnings") or []
    return ["## Warnings", "", *(f"- {w}" for w in warnings), ""] if warnings else []


def not_run_lines(report: dict) -> list[str]:
    """Selections that were empty for some targets (and so not ascended on there), and why."""
    groups: dict[tuple[str, str], list[str]] = {}
    for s in report.get("not_run") or []:
        groups.setdefault((s["method"], s["reason"]), []).append(str(s["target"] + 1))
    if not groups:
        return []
    lines = ["", "## Selections not run", "", "| method | reason | targets |", "|---|---|---|"]
    return lines + [f"| {method} | {reason} | {', '.join(targets)} |" for (method, reason), targets in groups.items()]


def calibration_lines(report: dict) -> list[str]:
    cal = report.get("calibration") or {}
    if not cal.get("budgets"):
        return ["", "## Budget calibration", "", cal.get("note", "not calibrated")]
    low, high = cal["band"]
    lines = ["", "## Budget calibration", "",
             f"Random selections should cost {low}-{high} nats of general loss. Calibrated budget: "
             f"**{cal['calibrated_budget']}** ({cal['note']}).", "",
             "| budget | random Δgeneral [95% CI] | in band |", "|---|---|---|"]
    for budget, entry in cal["budgets"].items():
        ci = entry["ci95"]
        lines.append(f"| {budget} | {fmt(entry['random_d_general'])} [{fmt(ci[0])}, {fmt(ci[1])}] | "
                     f"{'yes' if entry['in_band'] else 'no'} |")
    return lines


def evidence_lines(report: dict) -> list[str]:
    """The checklist table per budget: a check that could not be computed reads "not run" (never "pass");
    the verdict section below says why."""
    found = report.get("evidence") or {}
    if not found:
        return []
    names = [c.value for c in Check]
    mark = {True: "pass", False: "FAIL", None: "not run"}
    lines = ["", "## Evidence checklist (docs/EVALUATION.md §3)", "",
             "An attribution counts as evidenced when every check ran and passed at ≥ 2 budgets; a check that "
             "could not be computed here, or whose test cannot reach its threshold with this many targets or "
             "draws, is *not run*, which is never a pass nor a failure.", "",
             "| method | budget | " + " | ".join(Check(n).label for n in names) + " | result |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for method, entry in found.items():
        for budget, result in entry["budgets"].items():
            lines.append(f"| {method} | {budget} | " + " | ".join(mark[result["checks"].get(n)] for n in names)
                         + f" | {result['status']} |")
    return lines


def verdict_lines(report: dict) -> list[str]:
    """The verdict on each tested selection (what the page and the API show), each check with its reason."""
    verdicts = report.get("verdicts") or {}
    if not verdicts:
        return []
    lines = ["", "## Verdict", ""]
    for method, verdict in verdicts.items():
        lines.append(f"- **{method}: {verdict['verdict']}** — {verdict['reason']}")
        lines += [f"  - {c['label']}: {c['status']} — {c['reason']}" for c in verdict["checks"]]
    return lines + ["", f"What this does and does not show: {CAVEAT}"]


def cross_target_lines(report: dict) -> list[str]:
    cross = report.get("cross_target") or {}
    if not cross:
        return []
    lines = ["", "## Cross-target matrix", "",
             "Row i ascends on target i's selection; column j is the Δ loss of target j. The diagonal should dominate.",
             "", "| method | budget | diagonal mean | off-diagonal mean | same-relation off-diagonal | "
             "own target hurt most | target hurt most by its own selection |", "|---|---|---|---|---|---|---|"]
    for method, by_budget in cross.items():
        for budget, entry in by_budget.items():
            lines.append(f"| {method} | {budget} | {fmt(entry['diagonal_mean'])} | {fmt(entry['off_diagonal_mean'])} | "
                         f"{fmt(entry['same_relation_off_diagonal_mean'])} | {fmt(entry['diagonal_is_row_max'])} | "
                         f"{fmt(entry['diagonal_is_column_max'])} |")
    return lines


def plots(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, budgets in report["summary"].items():
        xs = sorted(float(b) for b in budgets)
        ax.plot(xs, [budgets[str(x)]["d_target"]["mean"] for x in xs], marker="o", label=method)
    ax.set_xlabel("‖Δθ‖ budget")
    ax.set_ylabel("Δ target loss (nats)")
    ax.set_title("Dose-response per selection method")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dose_response.png", dpi=120)
    plt.close(fig)
    written.append("dose_response.png")

    fig, ax = plt.subplots(figsize=(6, 5))
    top = str(max(report["config"]["budgets"]))
    for method in report["summary"]:
        rows = [r for r in report["rows"] if r["method"] == method and str(r["budget"]) == top]
        ax.scatter([r["d_related"] for r in rows], [r["d_target"] for r in rows], s=12, label=method, alpha=0.7)
    lims = ax.get_xlim()
    ax.plot(lims, lims, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("Δ related prompts (nats)")
    ax.set_ylabel("Δ target (nats)")
    ax.set_title(f"Target vs related damage at budget {top}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "target_vs_related.png", dpi=120)
    plt.close(fig)
    written.append("target_vs_related.png")
    if report.get("cross_target"):
        written.append(heat_map(report, out, plt))
    return written


def heat_map(report: dict, out: Path, plt) -> str:
    """Cross-target matrices at the calibrated budget (else the largest), one panel per method."""
    cross = report["cross_target"]
    budgets = next(iter(cross.values()))
    budget = str((report.get("calibration") or {}).get("calibrated_budget") or max(report["config"]["budgets"]))
    budget = budget if budget in budgets else max(budgets, key=float)
    methods = [m for m in cross if budget in cross[m]]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        matrix = np.asarray(cross[method][budget]["matrix"])
        limit = float(np.abs(matrix).max()) or 1.0
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{method}\ndiag {cross[method][budget]['diagonal_mean']:.2f} / "
                     f"off {cross[method][budget]['off_diagonal_mean']:.2f}", fontsize=9)
        ax.set_xlabel("Δ loss of target j")
        ax.set_ylabel("selection of target i")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"Cross-target damage at budget {budget} (nats)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "cross_target.png", dpi=110)
    plt.close(fig)
    return "cross_target.png"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_plain))
    (out / "report.md").write_text(markdown(report))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value)}")
