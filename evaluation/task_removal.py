"""Removal and retrain with task targets, on the behaviour case: which rows *taught* a task?

The unlearning check (ascent on a method's top rows) rewards rows aligned with the task's gradient by construction;
retraining without them asks the counterfactual question directly. For each task, each selection's rows are
removed and the model retrained from scratch with the case's seed, order and schedule over what is left:

- a method's top ``k`` rows for the task query (the same held-out instances of the first phrasing the behaviour
  table asks with; ``k`` defaults to the task's demonstration rows, both phrasings);
- ``gold``: the task's demonstration rows (both phrasings; the first ``k`` by row when ``k`` is smaller);
- with ``by_phrasing``, ``gold_asked`` and ``gold_other``: the task's rows of the query's phrasing alone and of the
  other phrasing alone (every such row, whatever ``k``) — does the other phrasing's data teach the asked one, i.e.
  should a query in one phrasing rank the other's rows high at all?
- ``random``: ``k`` rows drawn by seed;
- ``none``: nothing removed, the baseline every difference is taken against (trained by the same code and thread
  count, so the training run's float noise is not counted as an effect).

Measured after each retrain: every task's mean completion loss (summed NLL, nats) on its held-out instances, per
phrasing. Per selection and task: Δ target task on the query's phrasing and on the other phrasing (which the query
never named), Δ of the other tasks (both phrasings), their ratio (other/target: ≤ 0.2 is the fact cases' bar) and
the target's Δ over ``random``'s. Resumable: each retrain's losses are ``OUT/removal/TASK-SELECTION.json`` (the
model itself is deleted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from attribution.ascent import LossMeter, Probe
from attribution.errors import ConfigError
from attribution.models import load_tokenizer
from attribution.session import AttributionSession
from evaluation.behaviour_case import TASKS, BehaviourCase, Instance, case_order, task_query
from evaluation.report_files import as_json, rows_digest, write_whole
from evaluation.retrain import GOLD, NONE, RANDOM, run_jobs, usable_cores
from evaluation.training import steps_for, train

log = logging.getLogger(__name__)
GOLD_ASKED, GOLD_OTHER = "gold_asked", "gold_other"


@dataclass(frozen=True)
class TaskRemovalSettings:
    methods: tuple[str, ...] = ("gradient", "unlearning", "bm25")
    """Served methods whose top rows for each task query are removed."""
    k: int = 0
    """Rows removed per task and selection (0: the task's demonstration rows, both phrasings)."""
    seed: int = 0
    """Draws the random selection."""
    by_phrasing: bool = False
    """Also remove each phrasing's demonstration rows alone (``gold_asked``, ``gold_other``): two retrains a task."""
    workers: int = field(default_factory=usable_cores)

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ConfigError(f"task removal: k must be 0 (the task's rows) or positive, got {self.k}")
        if self.workers < 1:
            raise ConfigError(f"task removal: workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class RemovalJob:
    """One retrain: the case without ``dropped`` rows; its losses go to ``path``."""

    path: Path
    dropped: tuple[int, ...]
    key: dict


def task_rows(labels: list[dict | None], task: str, phrasing: int | None = None) -> list[int]:
    """The rows demonstrating ``task`` (either phrasing, or only ``phrasing``: 0 the query's, 1 the other), in row
    order."""
    return [r for r, label in enumerate(labels)
            if label and label["task"] == task and (phrasing is None or label["phrasing"] == phrasing)]


def selections(session: AttributionSession, labels: list[dict | None], asked: dict[str, list[Instance]],
               settings: TaskRemovalSettings) -> dict[str, dict[str, list[int]]]:
    """Rows removed per task and selection (row positions; the session's example ids are row numbers)."""
    rng = np.random.default_rng([settings.seed, 17])
    chosen: dict[str, dict[str, list[int]]] = {}
    for task in TASKS:
        gold = task_rows(labels, task)
        k = min(settings.k or len(gold), len(session))
        picked = {GOLD: gold[:k], RANDOM: sorted(int(r) for r in rng.choice(len(session), k, replace=False))}
        if settings.by_phrasing:
            picked |= {GOLD_ASKED: task_rows(labels, task, 0), GOLD_OTHER: task_rows(labels, task, 1)}
        query = task_query(asked[task])
        for method in settings.methods:
            results = session.attribute_task(query, k=k, method=method)
            picked[method] = sorted(int(r.example_id) for r in results)
        chosen[task] = picked
    return chosen


def held_out(instances: list[Instance]) -> dict[str, dict[int, list[Probe]]]:
    """Each task's held-out instances per phrasing, as probes."""
    probes: dict[str, dict[int, list[Probe]]] = {task: {0: [], 1: []} for task in TASKS}
    for i in instances:
        probes[i.task][i.phrasing].append(Probe(" " + i.prompt, i.completion))
    return probes


def task_losses(model: torch.nn.Module, tokenizer, probes: dict[str, dict[int, list[Probe]]]) -> dict[str, list[float]]:
    """Every task's mean completion loss (summed NLL, nats) on its held-out instances, per phrasing."""
    meter = LossMeter(model.eval(), tokenizer, model.config.max_position_embeddings)
    return {task: [float(meter.probe_losses(meter.probe_batch(by_phrasing[p])).mean()) for p in (0, 1)]
            for task, by_phrasing in probes.items()}


def retrain_without(directory: Path, case: BehaviourCase, job: RemovalJob, probes: dict) -> float:
    """Retrain the case without ``job.dropped`` (one torch thread), record every task's losses, delete the model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    scratch = job.path.with_name("." + job.path.stem)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        started = time.perf_counter()
        order = case_order(case, np.asarray(job.dropped, dtype=np.int64))
        tokenizer = load_tokenizer(directory / "tokenizer")
        model, _ = train(case.settings(steps_for(len(order), case.batch_size)), directory / "data" / "document",
                         len(tokenizer), scratch, rows=order, save_revisions=False)
        losses = task_losses(model, tokenizer, probes)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        torch.set_num_threads(threads)
    record = {"key": job.key, "losses": losses, "seconds": round(seconds, 2),
              "load_average": round(os.getloadavg()[0], 2)}
    write_whole(job.path, json.dumps(record))
    return seconds


def removal_key(case: BehaviourCase, dropped: list[int], probes: dict) -> dict:
    """What a retrain's losses depend on: the case, the rows dropped and the instances measured."""
    asked = hashlib.sha256(json.dumps({t: {p: [asdict(x) for x in v] for p, v in by.items()}
                                       for t, by in probes.items()}, sort_keys=True).encode()).hexdigest()[:16]
    return as_json({"case": asdict(case), "dropped_sha256": rows_digest(dropped), "dropped": len(dropped),
                    "instances_sha256": asked})


def run_task_removal(out: Path, case: BehaviourCase, directory: Path, session: AttributionSession,
                     labels: list[dict | None], instances: list[Instance], asked: dict[str, list[Instance]],
                     settings: TaskRemovalSettings, on_done: Callable[[str], None] | None = None) -> dict:
    """Every missing retrain, then the table (see the module docstring)."""
    probes = held_out(instances)
    chosen = selections(session, labels, asked, settings)
    (out / "removal").mkdir(parents=True, exist_ok=True)
    plan = {NONE: []} | {f"{task}-{name}": rows for task, picked in chosen.items() for name, rows in picked.items()}
    jobs = []
    for name, dropped in plan.items():
        job = RemovalJob(out / "removal" / f"{name}.json", tuple(dropped), removal_key(case, dropped, probes))
        if job.path.is_file() and json.loads(job.path.read_text())["key"] == job.key:
            continue
        jobs.append((directory, case, job, probes))
    log.info("task removal: %d of %d retrains to train", len(jobs), len(plan))
    run_jobs(retrain_without, jobs, settings.workers, None if on_done is None else lambda j: on_done(j[2].path.stem))
    losses = {name: json.loads((out / "removal" / f"{name}.json").read_text())["losses"] for name in plan}
    return removal_table(losses, chosen, labels)


def removal_table(losses: dict[str, dict[str, list[float]]], chosen: dict[str, dict[str, list[int]]],
                  labels: list[dict | None]) -> dict:
    """Per selection: the Δ per task and their means over tasks (see the module docstring)."""
    base = losses[NONE]
    table: dict[str, dict] = {}
    for task, picked in chosen.items():
        gold, asked = set(task_rows(labels, task)), set(task_rows(labels, task, 0))
        for name, rows in picked.items():
            after = losses[f"{task}-{name}"]
            others = [after[t][p] - base[t][p] for t in TASKS if t != task for p in (0, 1)]
            entry = {"d_target": after[task][0] - base[task][0],
                     "d_target_other_phrasing": after[task][1] - base[task][1],
                     "d_other_tasks": float(np.mean(others)), "gold_share": len(gold & set(rows)) / max(len(rows), 1),
                     "asked_phrasing_share": len(asked & set(rows)) / max(len(rows), 1),
                     "rows": len(rows)}
            table.setdefault(name, {})[task] = entry
    summary = {}
    for name, per_task in table.items():
        mean = {key: float(np.mean([e[key] for e in per_task.values()]))
                for key in ("d_target", "d_target_other_phrasing", "d_other_tasks", "gold_share",
                            "asked_phrasing_share", "rows")}
        mean["other_over_target"] = mean["d_other_tasks"] / mean["d_target"] if mean["d_target"] else float("nan")
        summary[name] = mean
    random_target, random_rows = summary[RANDOM]["d_target"], summary[RANDOM]["rows"]
    for mean in summary.values():  # against random only where as many rows were removed (not by_phrasing's halves)
        same_size = mean["rows"] == random_rows
        mean["times_random"] = mean["d_target"] / random_target if random_target > 0 and same_size else float("nan")
    return {"baseline": base, "per_task": table, "mean": summary}


def markdown_lines(report: dict) -> list[str]:
    """The removal table of the behaviours report."""
    lines = ["", "Removal and retrain of each task (each selection's rows removed, the model retrained from scratch; "
             "Δ mean completion loss in nats against a retrain that removes nothing, mean over tasks): the "
             "target task on the query's phrasing and on the other phrasing, the other tasks, their ratio "
             "(other/target) and the target's Δ over random's (— where a selection removed another number of rows). "
             "Rows of the task: the share of the removed rows that demonstrate it (in brackets: on the query's "
             "phrasing).", "",
             "| selection | rows of the task | Δ target | Δ target, other phrasing | Δ other tasks | other / target | "
             "× random |", "|---|---|---|---|---|---|---|"]
    for name, e in report["mean"].items():
        asked = e.get("asked_phrasing_share", float("nan"))  # reports before it was recorded
        lines.append(f"| {name} | {e['gold_share']:.2f} ({asked:.2f}) | {e['d_target']:.3f} | "
                     f"{e['d_target_other_phrasing']:.3f} | "
                     f"{e['d_other_tasks']:.3f} | {e['other_over_target']:.2f} | "
                     f"{'—' if math.isnan(e['times_random']) else format(e['times_random'], '.1f')} |")
    return lines
