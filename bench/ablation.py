"""Time the unlearning report end to end on the demo and print its headline table.

    python -m bench.ablation --index demo-data/index [--targets 20] [--seeds 3] [--out ablation-report]

Runs exactly what ``headwater ablate`` runs (every selection, ≥ 19 random draws per seed, three
budgets) and reports wall time split into loading and the ablation itself, the number of ascent
trials and their rate, then the per-method table at the calibrated budget for the methods the
issue asks about (gradient, its contrastive variant, BM25, embedding, random, bottom, oracle),
the evidence checklist verdicts and the cross-target summary. The full report is written to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from evaluation.ablation import AblationSettings, run_ablation
from evaluation.ablation_report import fmt, write_report
from evaluation.selections import Selection
from evaluation.targets import Target
from indexer.groundtruth import facts_file, load_facts
from indexer.store import open_index

HEADLINE = (Selection.GRADIENT, Selection.GRADIENT_CONTRASTIVE, Selection.UNLEARNING, Selection.BM25,
            Selection.EMBEDDING, Selection.ORACLE, Selection.RANDOM, Selection.BOTTOM)
"""The selections the issue asks about, in the table's order."""


def headline(report: dict, budget: str) -> list[str]:
    lines = ["| method | Δtarget | Δparaphrases | Δrelated | Δunrelated | Δgeneral | excess [95% CI] | z "
             "| related ratio | vs random: win, p (Holm) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method in HEADLINE:
        entry = report["summary"].get(method, {}).get(budget)
        if entry is None:
            continue
        ci = entry["excess"]["ci95"]
        versus = entry.get("vs", {}).get(Selection.RANDOM)
        vs = f"{versus['win_rate']:.2f}, {versus['p_holm']:.2g}" if versus else "—"
        lines.append(f"| {method} | {fmt(entry['d_target']['mean'])} | {fmt(entry['d_paraphrases']['mean'])} | "
                     f"{fmt(entry['d_related']['mean'])} | {fmt(entry['d_unrelated']['mean'])} | "
                     f"{fmt(entry['d_general']['mean'])} | {fmt(entry['excess']['mean'])} [{fmt(ci[0])}, {fmt(ci[1])}] "
                     f"| {fmt(entry['specificity_z']['mean'])} | {fmt(entry['related_ratio']['mean'])} | {vs} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=Path("demo-data/index"))
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--random-draws", type=int, default=19)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--budgets", default="0.5,1,2")
    parser.add_argument("--out", type=Path, default=Path("ablation-report"))
    parser.add_argument("--json", type=Path, default=None, help="also write the timings and tables here")
    args = parser.parse_args()

    start = time.perf_counter()
    session = open_index(args.index)
    demo = facts_file(session.manifest)
    if demo is None:
        raise SystemExit(f"{args.index} records no facts file (not built from the demo): no planted facts to ablate")
    facts = [Target.from_fact(f) for f in load_facts(demo) if f.gold_rows]
    facts = facts[: args.targets]
    loaded = time.perf_counter()
    settings = AblationSettings(k=args.k, budgets=tuple(float(b) for b in args.budgets.split(",")), seeds=args.seeds,
                                random_draws=args.random_draws)
    def progress(done: int) -> None:
        print(f"  {done}/{len(facts)} targets after {time.perf_counter() - loaded:.0f} s", file=sys.stderr, flush=True)

    report = run_ablation(session, facts, settings, progress=progress)
    ablated = time.perf_counter()
    write_report(report, args.out)
    trials = len({(r["target"], r["method"], tuple(r["example_ids"])) for r in report["rows"]})
    budget = str(report["calibration"]["calibrated_budget"])
    seconds = ablated - loaded
    lines = [f"Unlearning report on {len(session)} indexed rows: {len(facts)} targets × {args.seeds} seeds, "
             f"k={args.k}, budgets {settings.budgets}, {args.random_draws} random draws per seed; "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads.", "",
             "| stage | seconds |", "|---|---|", f"| load index + model | {loaded - start:.1f} |",
             f"| ablation ({trials} distinct ascents × {len(settings.budgets)} budgets) | {seconds:.1f} |",
             f"| per target | {seconds / len(facts):.1f} |", f"| per ascent (all budgets measured) | "
             f"{seconds / trials:.3f} |", "",
             f"Calibrated budget {budget}: {report['calibration']['note']}.", ""]
    lines += headline(report, budget)
    lines += ["", "| method | evidence checklist passes at budgets | evidenced |", "|---|---|---|"]
    lines += [f"| {m} | {', '.join(e['passing_budgets']) or 'none'} | {'yes' if e['evidence'] else 'no'} |"
              for m, e in report["evidence"].items()]
    cross = report["cross_target"].get(Selection.GRADIENT, {}).get(budget)
    if cross:
        lines += ["", f"Cross-target (gradient, budget {budget}): diagonal {fmt(cross['diagonal_mean'])}, "
                  f"off-diagonal {fmt(cross['off_diagonal_mean'])}, same relation "
                  f"{fmt(cross['same_relation_off_diagonal_mean'])}; own target hurt most in "
                  f"{cross['diagonal_is_row_max']:.0%} of rows."]
    text = "\n".join(lines)
    print(text)
    print(f"\nfull report: {args.out}/report.md")
    if args.json:
        args.json.write_text(json.dumps({"load_s": loaded - start, "ablation_s": seconds, "trials": trials,
                                         "targets": len(facts), "seeds": args.seeds, "markdown": text}, indent=2))


if __name__ == "__main__":
    main()
