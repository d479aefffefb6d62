"""The unlearning report: for each target, ascend on each selection at each budget and compare.

Selections of ``k`` rows per target (docs/EVALUATION.md §3, ``evaluation.selections.Selection``): ``gradient``
(the attribution's top-k), ``gradient_contrastive`` (the same rows, ascended with the related prompts'
gradient directions projected out), ``bm25``, ``embedding``, ``unlearning`` (the reverse direction's top-k: the
rows most perplexed after an ascent on the target), ``bottom`` (lowest gradient scores),
``oracle`` (rows that state the fact, where ground truth exists), ``given`` (the rows a client
wants checked: a target's ``example_ids``, e.g. the result list on the web page) and ``random`` draws.
Demo rows all have the same length, so sizes and token counts match. The ascent mechanics
(fixed ‖Δθ‖, exact restore, losses) are the core's ``attribution.ascent``.

Every trial also measures every target's own prompt, so the report carries the cross-target
matrix (row: whose selection was ascended on; column: whose loss changed): the diagonal should
dominate (docs/EVALUATION.md §3). A selection that is empty for a target (``bm25`` sharing no word with it, say)
is reported as not run for that target while the rest completes (``evaluation.ablation_plan``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from attribution.ascent import (
    EmptySelectionError,
    LossMeter,
    Probe,
    apply_step,
    ascent_direction,
    flat_gradient,
    restored,
)
from attribution.batching import training_batch
from attribution.errors import ConfigError
from attribution.session import AttributionSession
from evaluation.ablation_plan import (
    AblationSettings,
    SkippedSelection,
    check_runnable,
    positions_by_id,
    ranked_selections,
    request_warnings,
    seeded_selections,
    skipped_of,
)
from evaluation.ablation_stats import calibration, cross_target_summary, summarize
from evaluation.ablation_verdict import judge
from evaluation.selections import MATRIX_SELECTIONS, Selection
from evaluation.targets import Target, check_targets, unrelated_prompts

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3
"""3: ``warnings``, ``not_run``, each target's ``status``, ``verdicts``, the related ratio net of random."""


def general_rows(session: AttributionSession, count: int) -> list[list[int]]:
    """Token ids of ``count`` evenly spaced indexed rows: the general-loss probe."""
    positions = list(range(0, len(session), max(1, len(session) // count)))[:count]
    tokenizer = session.encoder.tokenizer
    return [tokenizer.encode(session.texts[p], add_special_tokens=False) for p in positions]


class Ablator:
    """Runs trials on one model, restoring its weights after each."""

    def __init__(self, session: AttributionSession, settings: AblationSettings, general: list[list[int]]) -> None:
        self.session, self.settings = session, settings
        self.model = session.encoder.checkpoints[-1].model
        self.meter = LossMeter(self.model, session.encoder.tokenizer, session.encoder.max_length)
        self.general = training_batch(general)
        for p in self.model.parameters():
            p.requires_grad_(True)

    def rows_of(self, positions: list[int]) -> list[list[int]]:
        return [self.session.encoder.tokenizer.encode(self.session.texts[p], add_special_tokens=False)[
                : self.session.encoder.max_length + 1] for p in positions]

    def measure(self, probes) -> dict:
        return {"probes": self.meter.probe_losses(probes).tolist(), "general": self.meter.text_loss(self.general)}

    def trial(self, direction: torch.Tensor, probes, before: dict) -> dict:
        """Deltas of every probe group at every budget."""
        out = {}
        for budget in self.settings.budgets:
            with restored(self.model):
                apply_step(self.model, direction, budget)
                after = self.measure(probes)
            out[budget] = {"probes": (np.array(after["probes"]) - np.array(before["probes"])).tolist(),
                           "general": after["general"] - before["general"]}
        return out

    def trials(self, method: Selection, picked: list, avoid: torch.Tensor | None, probed: TargetProbes,
               cache: dict[tuple, dict]) -> list[tuple[list[int], dict]]:
        """(rows, deltas per budget) of every draw of one selection, cached by rows; EmptySelectionError when a
        draw has no rows or a zero gradient."""
        out = []
        for positions in picked if method == Selection.RANDOM else [picked]:
            key = (method, tuple(positions))
            if key not in cache:
                contrast = avoid if method == Selection.GRADIENT_CONTRASTIVE else None
                direction = ascent_direction(self.model, self.rows_of(positions), contrast)
                cache[key] = self.trial(direction, probed.batch, probed.before)
            out.append((positions, cache[key]))
        return out

    def control_gradients(self, related: list[Probe]) -> torch.Tensor:
        return torch.stack([flat_gradient(self.model, self.meter.probe_batch([p])) for p in related])


def probe_groups(target: Target, unrelated: list[Probe],
                 targets: Sequence[Target]) -> tuple[list[Probe], dict[str, slice]]:
    """Probes of one target's trials, grouped; ``cross`` holds every target's own prompt (matrix row)."""
    groups = {"target": target.instances,  # a task target: each instance, the mean their change
              "paraphrases": [Probe(p, target.completion) for p in target.paraphrases],
              "related": list(target.related),
              "unrelated": list(unrelated),
              "cross": [Probe(t.prompt, t.completion) for t in targets]}
    probes, slices, start = [], {}, 0
    for name, group in groups.items():
        probes += group
        slices[name] = slice(start, start + len(group))
        start += len(group)
    return probes, slices


def summarize_deltas(deltas: dict, slices: dict[str, slice]) -> dict:
    """Per-trial scores: group means, excess, specificity z, related ratio (this trial's Δrelated / Δtarget: kept
    in the rows; the summary and the checks use the ratio of means net of random, ``net_related_ratio``)."""
    values = np.array(deltas["probes"])
    mean = {name: float(values[s].mean()) if s.stop > s.start else float("nan") for name, s in slices.items()
            if name != "cross"}
    controls = np.concatenate([values[slices["related"]], values[slices["unrelated"]]])
    sd = float(controls.std(ddof=1)) if len(controls) > 1 else float("nan")
    target = mean["target"]
    return {**{f"d_{k}": v for k, v in mean.items()}, "d_general": deltas["general"],
            "excess": target - mean["unrelated"],
            "paraphrase_excess": mean["paraphrases"] - mean["unrelated"],
            "specificity_z": (target - float(controls.mean())) / sd if sd and sd > 0 else float("nan"),
            "related_ratio": mean["related"] / target if target else float("nan")}




@dataclass
class Outcome:
    """What the trials of every target gave."""

    rows: list[dict] = field(default_factory=list)
    matrix: dict = field(default_factory=dict)
    """method → budget → target position → Δ loss of every target (the cross-target matrix rows)."""
    skipped: list[SkippedSelection] = field(default_factory=list)


@dataclass(frozen=True)
class TargetProbes:
    """One target's probes, grouped (``probe_groups``), and their losses before any ascent."""

    index: int
    target: Target
    slices: dict[str, slice]
    batch: object
    before: dict


def ablate_target(ablator: Ablator, t_index: int, targets: Sequence[Target], pool: Sequence[Target],
                  position: dict[int, int], outcome: Outcome) -> None:
    """Every requested selection of one target × budget × seed; an empty selection, or one whose gradient is zero,
    is recorded in ``outcome.skipped`` instead of failing the job."""
    target, settings = targets[t_index], ablator.settings
    unrelated = unrelated_prompts(target, pool)
    if not unrelated:
        raise ConfigError(f"target {target.prompt!r} has no unrelated prompts to compare with: "
                          "give 'unrelated' prompts or more than one target")
    probes, slices = probe_groups(target, unrelated, targets)
    batch = ablator.meter.probe_batch(probes)
    probed = TargetProbes(t_index, target, slices, batch, ablator.measure(batch))
    ranked = ranked_selections(ablator.session, target, settings, position)
    related = probes[slices["related"]]
    avoid = ablator.control_gradients(related) if Selection.GRADIENT_CONTRASTIVE in ranked and related else None
    cache: dict[tuple, dict] = {}  # seed-independent selections are ascended once, reported per seed
    skipped: dict[Selection, SkippedSelection] = {}
    for seed in range(settings.seeds):
        chosen = {**ranked, **seeded_selections(ablator.session, target, settings, seed, position)}
        for empty in skipped_of(chosen, target, t_index, settings.methods):
            skipped.setdefault(empty.method, empty)
        for method in (m for m in settings.methods if m not in skipped):
            try:
                trials = ablator.trials(method, chosen[method], avoid, probed, cache)
            except EmptySelectionError as err:
                skipped[method] = SkippedSelection(t_index, target.prompt, method, str(err))
                continue
            record(outcome, ablator.session, probed, method, seed, trials)
    outcome.skipped += skipped.values()


def record(outcome: Outcome, session: AttributionSession, probed: TargetProbes, method: Selection, seed: int,
           trials: list[tuple[list[int], dict]]) -> None:
    """Report rows of one selection's trials (one per draw and budget) and, at seed 0, its cross-target rows."""
    for draw, (positions, by_budget) in enumerate(trials):
        for budget, deltas in by_budget.items():
            if seed == 0 and method in MATRIX_SELECTIONS:
                cross = deltas["probes"][probed.slices["cross"]]
                outcome.matrix.setdefault(method, {}).setdefault(str(budget), {})[probed.index] = cross
            outcome.rows.append({"target": probed.index, "prompt": probed.target.prompt, "method": method,
                                 "seed": seed, "draw": draw, "budget": budget,
                                 "example_ids": [int(session.ids[p]) for p in positions],
                                 **summarize_deltas(deltas, probed.slices)})


def run_ablation(session: AttributionSession, targets: Sequence[Target], settings: AblationSettings,
                 general: list[list[int]] | None = None, progress: Callable[[int], None] | None = None,
                 controls: Sequence[Target] | None = None) -> dict:
    """Every selection × budget × seed for every target; returns the versioned report.

    ``controls`` is a pool of targets (e.g. the demo's planted facts) to draw unrelated prompts from
    when a target brings none (default: the other targets). ``general`` defaults to evenly spaced rows.
    A selection that is empty for a target is reported under ``not_run`` (and in the target's entry) while the
    rest completes; :class:`NothingToAblateError` when nothing at all could be ascended on.
    """
    check_targets(session, targets)
    if settings.k > len(session):
        raise ConfigError(f"k={settings.k} is larger than the index ({len(session)} examples)")
    warnings = request_warnings(targets, settings)
    for warning in warnings:
        log.warning("ablation: %s", warning)
    ablator = Ablator(session, settings, general or general_rows(session, settings.general_rows))
    position, outcome = positions_by_id(session), Outcome()
    for t_index in range(len(targets)):
        ablate_target(ablator, t_index, targets, controls or targets, position, outcome)
        if progress:
            progress(t_index + 1)
    if not outcome.rows:
        check_runnable(outcome.skipped, targets, settings)
    log_skipped(outcome.skipped)
    return build_report(session, targets, settings, outcome, warnings)


def log_skipped(skipped: Sequence[SkippedSelection]) -> None:
    """One warning per selection and reason, with how many targets it concerns."""
    groups: dict[tuple[str, str], int] = defaultdict(int)
    for s in skipped:
        groups[(s.method.value, s.reason)] += 1
    for (method, reason), count in groups.items():
        log.warning("ablation: %s not run on %d target(s): %s", method, count, reason)


def build_report(session: AttributionSession, targets: Sequence[Target], settings: AblationSettings,
                 outcome: Outcome, warnings: list[str]) -> dict:
    """The versioned report: config, targets (with what did not run), rows, summary, calibration, the checklist
    (``evidence``) and the verdicts built from it, the cross-target matrices."""
    summary = summarize(outcome.rows, settings)
    verdicts = judge(summary, settings.budgets)
    not_run: dict[int, dict[str, str]] = defaultdict(dict)
    for s in outcome.skipped:
        not_run[s.target][s.method.value] = s.reason
    return {"schema_version": SCHEMA_VERSION,
            "config": {**asdict(settings), "targets": len(targets), "examples": len(session)},
            "warnings": warnings,
            "targets": [target_entry(t, not_run[i], settings) for i, t in enumerate(targets)],
            "not_run": [asdict(s) for s in outcome.skipped],
            "rows": outcome.rows, "summary": summary, "calibration": calibration(summary, settings.budgets),
            "evidence": {m: v.evidence() for m, v in verdicts.items()},
            "verdicts": {m: v.to_json() for m, v in verdicts.items()},
            "cross_target": cross_target(outcome.matrix, targets)}


def target_entry(target: Target, not_run: dict[str, str], settings: AblationSettings) -> dict:
    """A target in the report: ``status`` run / partly run / not run, and each selection not run with why."""
    status = "not run" if len(not_run) == len(settings.methods) else "partly run" if not_run else "run"
    return {"prompt": target.prompt, "completion": target.completion, "attribute": target.attribute,
            "status": status, "not_run": not_run}


def cross_target(matrix: dict, targets: Sequence[Target]) -> dict:
    """The cross-target summary of each selection that ran on every target (a missing row would leave a hole)."""
    out: dict = {}
    for method, by_budget in matrix.items() if len(targets) > 1 else ():
        for budget, by_target in by_budget.items():
            if len(by_target) == len(targets):
                values = [by_target[i] for i in range(len(targets))]
                out.setdefault(method, {})[budget] = {"matrix": values, **cross_target_summary(values, targets)}
    return out
