"""Write the unlearning report: ``report.json`` (versioned), ``report.md`` and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def fmt(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def markdown(report: dict) -> str:
    config = report["config"]
    lines = [f"# Unlearning report (schema {report['schema_version']})", "",
             f"{config['targets']} targets, {config['examples']} indexed examples, k={config['k']}, "
             f"budgets {config['budgets']}, {config['seeds']} seeds, {config['random_draws']} random draws per seed.",
             "", "Deltas are in nats (completion NLL; general: mean token NLL). excess = Δtarget − mean Δunrelated; "
             "z = (Δtarget − mean Δcontrols) / sd(Δcontrols); related ratio = Δrelated / Δtarget.", "",
             "| method | budget | Δtarget | Δparaphrases | Δrelated | Δunrelated | Δgeneral | excess [95% CI] | z | "
             "related ratio | vs random: win rate, p (Holm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, budgets in report["summary"].items():
        for budget, entry in budgets.items():
            ci = entry["excess"]["ci95"]
            versus = entry.get("vs", {}).get("random")
            vs = f"{versus['win_rate']:.2f}, {versus['p_holm']:.3g}" if versus else "—"
            lines.append(
                f"| {method} | {budget} | {fmt(entry['d_target']['mean'])} | {fmt(entry['d_paraphrases']['mean'])} | "
                f"{fmt(entry['d_related']['mean'])} | {fmt(entry['d_unrelated']['mean'])} | "
                f"{fmt(entry['d_general']['mean'])} | {fmt(entry['excess']['mean'])} [{fmt(ci[0])}, {fmt(ci[1])}] | "
                f"{fmt(entry['specificity_z']['mean'])} | {fmt(entry['related_ratio']['mean'])} | {vs} |")
    return "\n".join(lines) + "\n"


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
    return written


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_plain))
    (out / "report.md").write_text(markdown(report))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value)}")
