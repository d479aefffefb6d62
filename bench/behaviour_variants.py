"""Why task-query ``unlearning`` misses the other phrasing: its variants on the behaviour case, over case seeds.

    python -m bench.behaviour_variants --out OUT [--seeds 0,1,2] [--variants default,exhaustive+budget=0.1,...]

Per case seed (each its own text layout, demonstrations, queries and model; built or reused under
``OUT/seed-S/case``; each variant's numbers saved beside it as measured, so a rerun goes on where a killed one
stopped), per ``unlearning`` variant (:data:`bench.unlearning.VARIANTS`) and per task: the task query
of the first phrasing's held-out instances (``evaluation.behaviours``' query), its precision@10 and @100 of the
task's rows, the other phrasing's share of the top 10, and that share counting only rows that share no word with
the query's instances; then each variant's mean over tasks and seeds, and on how
many seeds it met the issue's two retrieval aims together on every task (P@10 ≥ 0.9 and other phrasing ≥ 0.3).
Writes ``OUT/behaviour_variants.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from bench.unlearning import VARIANTS
from evaluation.behaviour_case import (
    TASKS,
    BehaviourCase,
    build_behaviour_case,
    query_instances,
    row_labels,
    task_query,
)
from evaluation.behaviours import (
    BehaviourSettings,
    behaviour_session,
    first_phrasing,
    query_words,
    row_positions,
    shares,
)
from evaluation.report_files import write_report_files, write_whole

log = logging.getLogger("bench.behaviour_variants")
DEFAULT_VARIANTS = ("default", "exhaustive", "exhaustive+budget=0.1", "newton+exhaustive", "newton")
"""The variants of the first diagnostic (docs/RESULTS.md, session 16): the served default, every row scored, a
smaller move, the Newton direction over every row and over the default pool."""
PRECISION_AIM, OTHER_AIM = 0.9, 0.3


SEED_FILE = "variants.json"
"""Each seed's measurements so far, beside its case build: a rerun measures only the variants not in it."""
SHARES = ("precision_10", "precision_100", "other_phrasing_10", "other_unshared_10")
"""What is measured of each task query (``evaluation.behaviours.shares``): a saved result lacking one is remeasured."""


def measure_seed(out: Path, case: BehaviourCase, variants: list[str], depth: int = 100) -> dict[str, dict]:
    """Per variant: per task, the task query's shares, and the seconds the three task queries took. Each variant's
    result is saved to ``OUT/variants.json`` as it is measured and reused on a rerun with the same case and settings."""
    settings = BehaviourSettings()
    directory = build_behaviour_case(out, case)
    saved_file, case_key = out / SEED_FILE, repr(case)
    saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
    kept: dict[str, dict] = saved.get("variants", {}) if saved.get("case") == case_key else {}
    session = None
    found: dict[str, dict] = {}
    for name in variants:
        unlearning = VARIANTS[name].settings
        saved_tasks = kept.get(name, {}).get("tasks", {}).values()
        if kept.get(name, {}).get("settings") == repr(unlearning) and all(set(SHARES) <= set(t) for t in saved_tasks):
            found[name] = kept[name]
            log.info("seed %d, %s: reused from %s", case.seed, name, saved_file)
            continue
        if session is None:
            session = behaviour_session(directory, settings)
            labels, instances = row_labels(directory), query_instances(case, directory, settings.queries)
        start, tasks = time.perf_counter(), {}
        for task in TASKS:
            asked = first_phrasing(instances, task, settings.queries)
            results = session.attribute_task(task_query(asked), k=min(depth, len(session)), method="unlearning",
                                             unlearning=unlearning)
            tasks[task] = shares(row_positions(session, results), labels, task, query_words(asked))
        found[name] = {"settings": repr(unlearning), "tasks": tasks, "seconds": time.perf_counter() - start}
        kept[name] = found[name]
        write_whole(saved_file, json.dumps({"case": case_key, "variants": kept}, indent=2))
        log.info("seed %d, %s: %s", case.seed, name, tasks)
    return found


def case_seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated distinct case seeds ≥ 0 (an argparse type: a bad list is a usage error)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers") from None
    if not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: distinct integers ≥ 0")
    return seeds


def meets_aims(tasks: dict[str, dict[str, float]]) -> bool:
    return all(t["precision_10"] >= PRECISION_AIM and t["other_phrasing_10"] >= OTHER_AIM for t in tasks.values())


def summary(seeds: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Per variant: each share's mean over tasks and seeds, and the seeds on which both aims held on every task."""
    names = next(iter(seeds.values())).keys()
    out = {}
    for name in names:
        per_task = [t for by_variant in seeds.values() for t in by_variant[name]["tasks"].values()]
        out[name] = {share: float(np.mean([t[share] for t in per_task]))
                     for share in SHARES}
        out[name]["seeds_meeting_aims"] = [s for s, by_variant in seeds.items()
                                           if meets_aims(by_variant[name]["tasks"])]
    return out


def markdown(report: dict) -> str:
    tasks = " / ".join(TASKS)
    lines = ["# `unlearning` variants on the behaviour case", "",
             f"Task queries of the first phrasing's {BehaviourSettings().queries} held-out instances, k = 100; each "
             f"cell lists {tasks}. Other, no shared word: the other phrasing's rows in the top 10 that share no word "
             "with the query's instances (reached through the skill, not the content).", "",
             "| seed | variant | P@10 | P@100 | other phrasing @10 | other, no shared word @10 | s (3 tasks) |",
             "|---|---|---|---|---|---|---|"]
    for seed, by_variant in report["seeds"].items():
        for name, entry in by_variant.items():
            cell = {share: " / ".join(f"{t[share]:.2f}" for t in entry["tasks"].values())
                    for share in SHARES}
            lines.append(f"| {seed} | {name} | {cell['precision_10']} | {cell['precision_100']} | "
                         f"{cell['other_phrasing_10']} | {cell['other_unshared_10']} | {entry['seconds']:.0f} |")
    lines += ["", f"Mean over tasks and seeds; the seeds on which a variant met both aims on every task (P@10 ≥ "
              f"{PRECISION_AIM}, other phrasing @10 ≥ {OTHER_AIM}):", "",
              "| variant | P@10 | P@100 | other phrasing @10 | other, no shared word @10 | seeds meeting both aims |",
              "|---|---|---|---|---|---|"]
    for name, entry in report["summary"].items():
        met = ", ".join(map(str, entry["seeds_meeting_aims"])) or "none"
        lines.append(f"| {name} | {entry['precision_10']:.2f} | {entry['precision_100']:.2f} | "
                     f"{entry['other_phrasing_10']:.2f} | {entry['other_unshared_10']:.2f} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="case builds and the report")
    parser.add_argument("--seeds", default=[0, 1, 2], type=case_seeds, help="comma-separated case seeds")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, of {sorted(n for n, v in VARIANTS.items() if not v.related)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    related = sorted(v for v in variants if v in VARIANTS and VARIANTS[v].related)
    if unknown or not variants:
        parser.error(f"unknown or no variants {unknown}; choose from {sorted(VARIANTS)}")
    if related:
        parser.error(f"variants {related} take a fact's related prompts as controls, which a task query has not")
    measured = {seed: measure_seed(args.out / f"seed-{seed}", BehaviourCase(seed=seed), variants)
                for seed in args.seeds}
    report = {"seeds": measured, "summary": summary(measured)}
    write_report_files(report, args.out, "behaviour_variants", markdown)
    print(markdown(report))


if __name__ == "__main__":
    main()
