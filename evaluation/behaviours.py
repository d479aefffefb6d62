"""Which data teaches a behaviour: every method, as a task query and as single-instance queries, on the behaviour
case (:mod:`evaluation.behaviour_case`), and the unlearning check of each task.

Per task and method: precision@10 and @100 of the task's rows (either phrasing), the share of the top 10 that are
the *other* phrasing's rows (the query is written in the first: rows found there were found by what they teach,
not by shared words), the same for single-instance queries (the mean over the task's instances: what aggregation
buys), and, from an unlearning ablation with task targets (related = the other tasks' instances), the other
tasks' loss change over the target task's (``related/target``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from attribution.ascent import Probe
from attribution.config import AttributionConfig
from attribution.errors import ConfigError
from attribution.records import Example
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from evaluation.ablation import run_ablation
from evaluation.ablation_plan import AblationSettings
from evaluation.behaviour_case import (
    TASKS,
    BehaviourCase,
    Instance,
    build_behaviour_case,
    query_instances,
    row_labels,
    task_query,
    training_rows,
)
from evaluation.report_files import write_report_files
from evaluation.targets import Target
from evaluation.task_removal import TaskRemovalSettings, run_task_removal
from evaluation.task_removal import markdown_lines as removal_lines
from evaluation.training import completion_hits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BehaviourSettings:
    """How the case is measured."""

    queries: int = 8
    """Held-out instances a task query holds (first phrasing)."""
    methods: tuple[str, ...] = ("gradient", "unlearning", "bm25", "embedding")
    k: int = 16
    """Sketch dimension per module of the in-memory gradient index."""
    ablate: bool = True
    """Also run the unlearning check of each task (gradient, bm25 and random selections of 10 rows)."""
    budget: float = 1.0
    removal: TaskRemovalSettings | None = None
    """Also retrain without each method's top rows for each task (:mod:`evaluation.task_removal`; None: not run)."""


def behaviour_session(directory: Path, settings: BehaviourSettings) -> AttributionSession:
    """An in-memory session over the case's rows (every method)."""
    from attribution.models import load_tokenizer

    tokenizer = load_tokenizer(directory / "tokenizer")
    examples = [Example(i, ids, tokenizer.decode(ids.tolist()), {"source": "behaviours", "row": i})
                for i, ids in enumerate(training_rows(directory))]
    config = AttributionConfig(sketch=SketchConfig(k=settings.k))
    return AttributionSession.from_examples(directory / "model", examples, config, directory / "tokenizer")


def demonstrates(label: dict | None, task: str, phrasing: int | None = None,
                 avoiding: frozenset[str] = frozenset()) -> bool:
    """Whether a row (by its label) demonstrates ``task`` — in ``phrasing`` when given (0 the first, 1 the second) —
    on words none of which are in ``avoiding``."""
    return (label is not None and label["task"] == task and (phrasing is None or label["phrasing"] == phrasing)
            and not avoiding & set(label["words"]))


def shares(rows: list[int], labels: list[dict | None], task: str, words: frozenset[str]) -> dict[str, float]:
    """Precision@10 and @100 of ``task``'s rows, the other phrasing's share of the top 10, and that share counting
    only rows that share no word with the query's instances (``words``): a row reached through the instances'
    content (the same words doubled) is not reached through the skill."""
    def of(row: int, phrasing: int | None = None, unshared: bool = False) -> bool:
        return demonstrates(labels[row], task, phrasing, words if unshared else frozenset())

    top10, top100 = rows[:10], rows[:100]
    if not top10:
        return {name: float("nan") for name in ("precision_10", "precision_100", "other_phrasing_10",
                                                 "other_unshared_10")}
    return {"precision_10": float(np.mean([of(r) for r in top10])),
            "precision_100": float(np.mean([of(r) for r in top100])),
            "other_phrasing_10": float(np.mean([of(r, 1) for r in top10])),
            "other_unshared_10": float(np.mean([of(r, 1, unshared=True) for r in top10]))}


def row_positions(session: AttributionSession, results) -> list[int]:
    position = {int(i): p for p, i in enumerate(session.ids)}
    return [position[r.example_id] for r in results]


@torch.no_grad()
def token_accuracy(model: torch.nn.Module, tokenizer, prompt: str, completion: str) -> float:
    """The share of the answer's tokens the model predicts top-1, teacher-forced."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    target = tokenizer.encode(completion, add_special_tokens=False)
    logits = model(input_ids=torch.tensor([prompt_ids + target[:-1]])).logits[0, len(prompt_ids) - 1 :]
    return float((logits.argmax(-1) == torch.tensor(target)).float().mean())


def task_accuracy(session: AttributionSession, instances: list[Instance]) -> dict[str, dict[str, float]]:
    """Per task and phrasing, on held-out word sequences (teacher-forced, top-1): the share of whole answers right
    and the share of answer tokens right."""
    model, tokenizer = session.encoder.checkpoints[-1].model, session.encoder.tokenizer
    out: dict[str, dict[str, float]] = {}
    for task in TASKS:
        for phrasing in (0, 1):
            asked = [i for i in instances if i.task == task and i.phrasing == phrasing]
            whole = [completion_hits(model, tokenizer, " " + i.prompt, i.completion)[1] for i in asked]
            tokens = [token_accuracy(model, tokenizer, " " + i.prompt, i.completion) for i in asked]
            out.setdefault(task, {}).update({f"phrasing_{phrasing + 1}": float(np.mean(whole)) if whole else math.nan,
                                             f"tokens_{phrasing + 1}": float(np.mean(tokens)) if tokens else math.nan})
    return out


def first_phrasing(instances: list[Instance], task: str, count: int) -> list[Instance]:
    """The task's first ``count`` held-out instances of its first phrasing: what a task query holds."""
    return [i for i in instances if i.task == task and i.phrasing == 0][:count]


def query_words(instances: list[Instance]) -> frozenset[str]:
    """Every word a task query's instances hold (the content a row may share with the query)."""
    return frozenset(w for i in instances for w in i.words)


def measure(session: AttributionSession, labels: list[dict | None], instances: list[Instance],
            settings: BehaviourSettings) -> dict[str, dict[str, dict[str, float]]]:
    """Per task and method: the task query's shares and the mean of the single-instance queries' shares."""
    depth = min(100, len(session))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for task in TASKS:
        asked = first_phrasing(instances, task, settings.queries)
        for method in settings.methods:
            found = session.attribute_task(task_query(asked), k=depth, method=method)
            single = [shares(row_positions(session, session.attribute(" " + i.prompt, i.completion, k=depth,
                                                                      method=method)), labels, task,
                             frozenset(i.words)) for i in asked]
            entry = shares(row_positions(session, found), labels, task, query_words(asked))
            entry.update({f"instance_{name}": float(np.mean([s[name] for s in single])) for name in single[0]})
            table.setdefault(task, {})[method] = entry
            log.info("behaviours: %s by %s: %s", task, method, entry)
    return table


def task_targets(instances: list[Instance], settings: BehaviourSettings) -> list[Target]:
    """One task target per task (its first phrasing's instances), related = two instances of each other task."""
    targets = []
    for task in TASKS:
        mine = first_phrasing(instances, task, settings.queries)
        others = [Probe(" " + i.prompt, i.completion) for other in TASKS if other != task
                  for i in [x for x in instances if x.task == other and x.phrasing == 0][:2]]
        first, *more = mine
        targets.append(Target(" " + first.prompt, first.completion, related=others, attribute=task,
                              more=[Probe(" " + i.prompt, i.completion) for i in more]))
    return targets


def ablation_ratios(session: AttributionSession, instances: list[Instance], settings: BehaviourSettings,
                    ) -> dict[str, dict[str, float]]:
    """Per selection: the mean target-task and other-task loss changes over the tasks, and their ratio."""
    rows = [np.asarray(session.encoder.tokenizer.encode(session.texts[p], add_special_tokens=False)).tolist()
            for p in range(0, len(session), max(1, len(session) // 16))]
    ablation = AblationSettings(k=10, budgets=(settings.budget,), random_draws=4, seeds=1,
                                methods=("gradient", "bm25", "random", "unlearning", "unlearning_contrastive"))
    report = run_ablation(session, task_targets(instances, settings), ablation, rows)
    out: dict[str, dict[str, float]] = {}
    for method in ablation.methods:
        picked = [r for r in report["rows"] if r["method"] == method.value]
        if not picked:
            continue
        target = float(np.mean([r["d_target"] for r in picked]))
        related = float(np.mean([r["d_related"] for r in picked]))
        out[method.value] = {"d_target": target, "d_related": related,
                             "related_over_target": related / target if target else float("nan")}
    return out


def run_behaviours(out: Path, case: BehaviourCase, settings: BehaviourSettings) -> dict:
    """Build (or reuse) the case, measure every method, write ``OUT/behaviours.json`` and ``.md``."""
    directory = build_behaviour_case(out, case)
    session = behaviour_session(directory, settings)
    labels = row_labels(directory)
    instances = query_instances(case, directory, settings.queries)
    report = {"queries": settings.queries, "case": {"rows": case.rows, "demos_per_phrasing": case.demos, "tasks": {
                  name: list(task.phrasings) for name, task in TASKS.items()}},
              "accuracy": task_accuracy(session, instances),
              "retrieval": measure(session, labels, instances, settings)}
    if settings.ablate:
        report["ablation"] = ablation_ratios(session, instances, settings)
    if settings.removal is not None:
        asked = {task: first_phrasing(instances, task, settings.queries) for task in TASKS}
        report["removal"] = run_task_removal(out, case, directory, session, labels, instances, asked,
                                             settings.removal)
    write_report_files(report, out, "behaviours", markdown)
    return report


def run_behaviour_seeds(out: Path, case: BehaviourCase, settings: BehaviourSettings, seeds: int) -> dict:
    """:func:`run_behaviours` on ``seeds`` cases (seeds ``case.seed``, ``case.seed + 1``, ...; each its own text
    layout, demonstrations, queries and model) under ``OUT/seed-S``, and their summary in ``OUT/behaviours_seeds``:
    one case's ablation and removal ratios move a lot between trainings, so a claim rests on several."""
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")
    reports = {case.seed + s: run_behaviours(out / f"seed-{case.seed + s}", replace(case, seed=case.seed + s),
                                             settings) for s in range(seeds)}
    summary = {"seeds": list(reports), "ablation": across_seeds(reports, "ablation", "d_target", "d_related"),
               "removal": across_seeds(reports, "removal", "d_target", "d_other_tasks")}
    write_report_files(summary, out, "behaviours_seeds", seeds_markdown)
    return summary


def across_seeds(reports: dict[int, dict], part: str, target: str, other: str) -> dict[str, dict]:
    """Per selection of a report part (``ablation``, or ``removal``'s means): the target and other changes per
    seed, and their ratio of means (a mean of per-seed ratios is unstable when a target change is small)."""
    found: dict[str, dict] = {}
    for report in reports.values():
        entries = report.get(part) or {}
        for name, entry in (entries.get("mean", entries) if part == "removal" else entries).items():
            found.setdefault(name, {"target": [], "other": []})
            found[name]["target"].append(entry[target])
            found[name]["other"].append(entry[other])
    for entry in found.values():
        mean_target = float(np.mean(entry["target"]))
        entry["other_over_target"] = float(np.mean(entry["other"])) / mean_target if mean_target else float("nan")
    return found


def seeds_markdown(summary: dict) -> str:
    lines = [f"# Behaviours over {len(summary['seeds'])} case seeds ({', '.join(map(str, summary['seeds']))})", "",
             "Per selection: the target task's and the other tasks' loss change per seed (nats), and the ratio of "
             "their means (other / target; aim ≤ 0.33 for the unlearning check).", ""]
    for part, title in (("ablation", "Unlearning check"), ("removal", "Removal and retrain")):
        if not summary[part]:
            continue
        lines += [f"{title}:", "", "| selection | Δ target per seed | Δ other tasks per seed | other / target |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {' / '.join(f'{v:.3f}' for v in e['target'])} | "
                  f"{' / '.join(f'{v:.3f}' for v in e['other'])} | {e['other_over_target']:.2f} |"
                  for name, e in summary[part].items()]
        lines.append("")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    case = report["case"]
    lines = [f"# Which data teaches a behaviour ({case['rows']} rows, {case['demos_per_phrasing']} demonstrations "
             "of each task under each phrasing)", "",
             "Per-task accuracy on held-out words (teacher-forced, top-1; first / second phrasing): whole answers "
             + "; ".join(f"{task} {acc['phrasing_1']:.2f} / {acc['phrasing_2']:.2f}"
                         for task, acc in report["accuracy"].items())
             + "; answer tokens " + "; ".join(f"{task} {acc['tokens_1']:.2f} / {acc['tokens_2']:.2f}"
                                               for task, acc in report["accuracy"].items()) + ".", "",
             f"Task queries ({report['queries']} instances, first phrasing) against single-instance queries "
             "(mean): precision of the task's rows at 10 and 100, and the other phrasing's share of the top 10 (in "
             "brackets: counting only rows that share no word with the query's instances).", "",
             "| task | method | P@10 | P@100 | other phrasing @10 | single: P@10 | P@100 | other @10 |",
             "|---|---|---|---|---|---|---|---|"]
    for task, methods in report["retrieval"].items():
        for method, e in methods.items():
            nan = float("nan")  # reports before the unshared share was recorded
            lines.append(f"| {task} | {method} | {e['precision_10']:.2f} | {e['precision_100']:.2f} | "
                         f"{e['other_phrasing_10']:.2f} ({e.get('other_unshared_10', nan):.2f}) | "
                         f"{e['instance_precision_10']:.2f} | {e['instance_precision_100']:.2f} | "
                         f"{e['instance_other_phrasing_10']:.2f} ({e.get('instance_other_unshared_10', nan):.2f}) |")
    if "ablation" in report:
        lines += ["", "Unlearning check of each task (10 rows ascended on, mean over tasks): the other tasks' loss "
                  "change over the target task's (aim ≤ 0.33).", "",
                  "| selection | Δ target task | Δ other tasks | other / target |", "|---|---|---|---|"]
        for method, e in report["ablation"].items():
            lines.append(f"| {method} | {e['d_target']:.3f} | {e['d_related']:.3f} | "
                         f"{e['related_over_target']:.2f} |")
    if "removal" in report:
        lines += removal_lines(report["removal"])
    return "\n".join(lines) + "\n"
