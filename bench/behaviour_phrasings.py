"""Which phrasing's rows a task query finds when it names one phrasing, both, or neither (a third, unseen one).

    python -m bench.behaviour_phrasings --out OUT [--seeds 0,1,2] [--methods gradient,unlearning,bm25,embedding]

On the behaviour case (:mod:`evaluation.behaviour_case`; each seed built or reused under ``OUT/seed-S/case``, as
``bench.behaviour_variants`` lays them out) three task queries per task, each of 8 held-out instances:

- ``asked``: the first phrasing's instances (the query of ``headwater eval behaviours``);
- ``both``: 4 of the first phrasing and 4 of the second — a query that names both, so an answer for the behaviour
  holds both phrasings' rows;
- ``unseen``: the first phrasing's instances with a third instruction that no training row holds and that shares no
  word with either phrasing (:data:`UNSEEN`) — the instruction's words can match nothing, so a method finds the
  task's rows only through the answer's form or the instances' content words.

Per query and method: precision@10 and @100 of the task's rows (either phrasing), each phrasing's share of the top 10,
and the task's rows in the top 10 that share no word with the query's instances (found through the skill, not the
content). Also the model's answer-token accuracy (teacher-forced, top-1) under each instruction, since a query the
model cannot perform may have nothing of the skill to trace. Each seed's numbers are saved beside its case as
measured (``phrasings.json``), so a rerun goes on where a killed one stopped. Writes ``OUT/behaviour_phrasings.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attribution.tasks import Instance as TaskInstance
from bench.behaviour_variants import case_seeds
from evaluation.behaviour_case import (
    TASKS,
    BehaviourCase,
    Instance,
    build_behaviour_case,
    query_instances,
    row_labels,
    task_query,
)
from evaluation.behaviours import (
    BehaviourSettings,
    behaviour_session,
    demonstrates,
    first_phrasing,
    query_words,
    row_positions,
    token_accuracy,
)
from evaluation.report_files import write_report_files, write_whole

log = logging.getLogger("bench.behaviour_phrasings")

UNSEEN: dict[str, str] = {
    "double": "Echo them in pairs:",
    "spell": "Show its characters apart:",
    "reverse": "Flip this sequence around:",
}
"""A third instruction per task: in no training row, and sharing no word with the task's two phrasings."""
KINDS = ("asked", "both", "unseen")
"""The task queries measured, in table order."""
SHARES = ("precision_10", "precision_100", "phrasing_1_10", "phrasing_2_10", "unshared_10")
SEED_FILE = "phrasings.json"
DEPTH = 100


def instruction_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def check_unseen() -> None:
    """Each unseen instruction shares no word with its task's phrasings (a guard on :data:`UNSEEN`'s edits)."""
    for task, text in UNSEEN.items():
        shared = instruction_words(text) & set().union(*(instruction_words(p) for p in TASKS[task].phrasings))
        if shared:
            raise ValueError(f"the unseen instruction of {task} shares {sorted(shared)} with its phrasings")


@dataclass(frozen=True)
class PhrasingQuery:
    """One task query: its instances (as the case states them) and the prompts it sends."""

    kind: str
    task: str
    instances: list[Instance]
    prompts: list[TaskInstance]


def queries(instances: list[Instance], task: str, count: int) -> list[PhrasingQuery]:
    """The ``asked``, ``both`` and ``unseen`` task queries of ``task`` from the case's held-out instances."""
    first = first_phrasing(instances, task, count)
    second = [i for i in instances if i.task == task and i.phrasing == 1][:count]
    both = first[: count // 2] + second[: count - count // 2]
    unseen = [TaskInstance(f" {UNSEEN[task]} {' '.join(i.words)} =>", i.completion) for i in first]
    return [PhrasingQuery("asked", task, first, task_query(first)),
            PhrasingQuery("both", task, both, task_query(both)),
            PhrasingQuery("unseen", task, first, unseen)]


def phrasing_shares(rows: list[int], labels: list[dict | None], task: str, words: frozenset[str],
                    ) -> dict[str, float]:
    """Precision@10 and @100 of ``task``'s rows, each phrasing's share of the top 10, and the task's rows in the top
    10 that share no word with ``words`` (the query's instances' words)."""
    def of(row: int, phrasing: int | None = None, unshared: bool = False) -> bool:
        return demonstrates(labels[row], task, phrasing, words if unshared else frozenset())

    top10, top100 = rows[:10], rows[:DEPTH]
    if not top10:
        return {name: float("nan") for name in SHARES}
    return {"precision_10": float(np.mean([of(r) for r in top10])),
            "precision_100": float(np.mean([of(r) for r in top100])),
            "phrasing_1_10": float(np.mean([of(r, 0) for r in top10])),
            "phrasing_2_10": float(np.mean([of(r, 1) for r in top10])),
            "unshared_10": float(np.mean([of(r, unshared=True) for r in top10]))}


def measure_seed(out: Path, case: BehaviourCase, methods: list[str]) -> dict:
    """Per method, kind and task: the shares; per kind and task: the model's answer-token accuracy. Saved to
    ``OUT/phrasings.json`` and reused when the case, the methods and the unseen instructions are the same."""
    settings = BehaviourSettings()
    directory = build_behaviour_case(out, case)
    key = repr((case, methods, UNSEEN))
    saved_file = out / SEED_FILE
    if saved_file.exists():
        saved = json.loads(saved_file.read_text())
        if saved.get("key") == key:
            log.info("seed %d: reused from %s", case.seed, saved_file)
            return saved["result"]
    session = behaviour_session(directory, settings)
    labels, instances = row_labels(directory), query_instances(case, directory, settings.queries)
    model, tokenizer = session.encoder.checkpoints[-1].model, session.encoder.tokenizer
    result: dict = {"accuracy": {}, "methods": {}, "seconds": {}}
    by_task = {task: queries(instances, task, settings.queries) for task in TASKS}
    for task, asked in by_task.items():
        result["accuracy"][task] = {q.kind: float(np.mean([token_accuracy(model, tokenizer, p.prompt, p.completion)
                                                           for p in q.prompts])) for q in asked}
    for method in methods:
        start = time.perf_counter()
        for task, asked in by_task.items():
            for query in asked:
                found = session.attribute_task(query.prompts, k=min(DEPTH, len(session)), method=method)
                entry = phrasing_shares(row_positions(session, found), labels, task, query_words(query.instances))
                result["methods"].setdefault(method, {}).setdefault(query.kind, {})[task] = entry
                log.info("seed %d, %s, %s query of %s: %s", case.seed, method, query.kind, task, entry)
        result["seconds"][method] = time.perf_counter() - start
    write_whole(saved_file, json.dumps({"key": key, "result": result}, indent=2))
    return result


def summary(seeds: dict[int, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and kind: each share's mean over tasks and seeds."""
    methods = next(iter(seeds.values()))["methods"]
    return {method: {kind: {share: float(np.mean([t[share] for r in seeds.values()
                                                  for t in r["methods"][method][kind].values()]))
                            for share in SHARES} for kind in KINDS} for method in methods}


def markdown(report: dict) -> str:
    tasks = " / ".join(TASKS)
    lines = ["# Task queries that name one phrasing, both, or neither", "",
             "8 held-out instances a query. asked: the first phrasing; both: 4 of each; unseen: the first phrasing's "
             f"instances under a third instruction no training row holds ({'; '.join(UNSEEN.values())}). Mean over "
             "the tasks and the seeds; phrasing 1 / 2: each phrasing's rows in the top 10; no shared word: the "
             "task's rows in the top 10 that share no word with the query's instances.", "",
             "| method | query | P@10 | P@100 | phrasing 1 @10 | phrasing 2 @10 | no shared word @10 |",
             "|---|---|---|---|---|---|---|"]
    for method, by_kind in report["summary"].items():
        for kind, entry in by_kind.items():
            lines.append(f"| {method} | {kind} | {entry['precision_10']:.2f} | {entry['precision_100']:.2f} | "
                         f"{entry['phrasing_1_10']:.2f} | {entry['phrasing_2_10']:.2f} | {entry['unshared_10']:.2f} |")
    lines += ["", f"Per seed, cells {tasks}: P@10 (phrasing 1 @10, phrasing 2 @10):", "",
              "| seed | method | asked | both | unseen |", "|---|---|---|---|---|"]
    for seed, result in report["seeds"].items():
        for method, by_kind in result["methods"].items():
            cells = [" / ".join(f"{t['precision_10']:.1f} ({t['phrasing_1_10']:.1f}, {t['phrasing_2_10']:.1f})"
                                for t in by_kind[kind].values()) for kind in KINDS]
            lines.append(f"| {seed} | {method} | " + " | ".join(cells) + " |")
    lines += ["", f"The model's answer-token accuracy (teacher-forced, top-1), cells {tasks}:", "",
              "| seed | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for seed, result in report["seeds"].items():
        cells = [" / ".join(f"{result['accuracy'][task][kind]:.2f}" for task in TASKS) for kind in KINDS]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="case builds (OUT/seed-S/case) and the report")
    parser.add_argument("--seeds", default=[0, 1, 2], type=case_seeds, help="comma-separated case seeds")
    parser.add_argument("--methods", default=",".join(BehaviourSettings().methods),
                        help="comma-separated task-query methods")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    check_unseen()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = BehaviourSettings().methods
    if not methods or set(methods) - set(known):
        parser.error(f"--methods {args.methods!r}: choose from {list(known)}")
    measured = {seed: measure_seed(args.out / f"seed-{seed}", BehaviourCase(seed=seed), methods)
                for seed in args.seeds}
    report = {"seeds": measured, "summary": summary(measured)}
    write_report_files(report, args.out, "behaviour_phrasings", markdown)
    print(markdown(report))


if __name__ == "__main__":
    main()
