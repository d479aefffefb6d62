"""The unlearning report: for each target, ascend on each selection at each budget and compare.

Selections of ``k`` rows per target (EVALUATION.md §3, ``evaluation.selections.Selection``): ``gradient``
(the attribution's top-k), ``gradient_contrastive`` (the same rows, ascended with the related prompts'
gradient directions projected out), ``bm25``, ``embedding``, ``unlearning`` (the reverse direction's top-k: the
rows most perplexed after an ascent on the target), ``bottom`` (lowest gradient scores),
``oracle`` (rows that state the fact, where ground truth exists), ``given`` (the rows a client
wants checked: a target's ``example_ids``, e.g. the result list on the web page) and ``random`` draws.
Demo rows all have the same length, so sizes and token counts match. The ascent mechanics
(fixed ‖Δθ‖, exact restore, losses) are the core's ``attribution.unlearn``.

Every trial also measures every target's own prompt, so the report carries the cross-target
matrix (row: whose selection was ascended on; column: whose loss changed): the diagonal should
dominate (EVALUATION.md §3).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from attribution.batching import training_batch
from attribution.errors import ConfigError
from attribution.retrievers import Query
from attribution.session import AttributionSession
from attribution.unlearn import LossMeter, Probe, apply_step, ascent_direction, flat_gradient, restored
from evaluation.ablation_stats import calibration, cross_target_summary, evidence, summarize
from evaluation.selections import MATRIX_SELECTIONS, Selection
from evaluation.targets import Target

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class AblationSettings:
    k: int = 10
    budgets: tuple[float, ...] = (0.5, 1.0, 2.0)
    """‖Δθ‖ (parameter L2 norm) of each ascent."""
    random_draws: int = 19
    seeds: int = 3
    methods: tuple[Selection, ...] = tuple(Selection)
    general_rows: int = 8
    """Evenly spaced indexed rows whose mean token loss measures general damage (the costliest measurement)."""

    def __post_init__(self) -> None:
        if self.k <= 0 or not self.budgets or any(b <= 0 for b in self.budgets):
            raise ConfigError("k must be positive and every budget > 0")
        if self.random_draws < 1 or self.seeds < 1 or self.general_rows < 1:
            raise ConfigError("random_draws, seeds and general_rows must be at least 1")
        unknown = set(self.methods) - set(Selection)
        if unknown:
            raise ConfigError(f"unknown ablation methods {sorted(unknown)}; choose from {[s.value for s in Selection]}")
        object.__setattr__(self, "methods", tuple(Selection(m) for m in self.methods))


@dataclass
class TargetResult:
    target: str
    completion: str
    rows: dict = field(default_factory=dict)
    """method → budget → deltas (random: lists over draws)."""


def ranked_selections(session: AttributionSession, target: Target, settings: AblationSettings,
                      position: dict[int, int]) -> dict[Selection, list[int]]:
    """Row positions of the selections that do not depend on a seed (top/bottom by score, lexical, embedding,
    the target's own ``example_ids``); ``position`` maps example ids to rows (``positions_by_id``)."""
    k = settings.k
    prompt, completion = target.prompt, target.completion
    order = np.argsort(-session.gradient.score_all(Query(prompt, completion)), kind="stable")
    chosen = {Selection.GRADIENT: order[:k].tolist(), Selection.GRADIENT_CONTRASTIVE: order[:k].tolist(),
              Selection.BOTTOM: order[::-1][:k].tolist()}
    for method in (Selection.BM25, Selection.EMBEDDING, Selection.UNLEARNING):
        if method in settings.methods:
            chosen[method] = [h.row for h in session.retriever(method).search(Query(prompt, completion), k)]
    if target.example_ids:
        chosen[Selection.GIVEN] = [position[int(i)] for i in target.example_ids]
    return {m: v for m, v in chosen.items() if m in settings.methods}


def positions_by_id(session: AttributionSession) -> dict[int, int]:
    """Example id → row position in the session."""
    return {int(i): p for p, i in enumerate(session.ids)}


def general_rows(session: AttributionSession, count: int) -> list[list[int]]:
    """Token ids of ``count`` evenly spaced indexed rows: the general-loss probe."""
    positions = list(range(0, len(session), max(1, len(session) // count)))[:count]
    tokenizer = session.encoder.tokenizer
    return [tokenizer.encode(session.texts[p], add_special_tokens=False) for p in positions]


def seeded_selections(session: AttributionSession, target: Target, settings: AblationSettings, seed: int,
                      position: dict[int, int]) -> dict[Selection, list]:
    """Row positions of the seeded selections: an oracle sample of gold rows and the random draws."""
    k, n = settings.k, len(session)
    chosen: dict[Selection, list] = {}
    gold = [position[g] for g in target.gold_rows if g in position]
    if gold:
        chosen[Selection.ORACLE] = random.Random(seed).sample(gold, min(k, len(gold)))
    rng = random.Random(f"random draws {seed} {target.prompt}")  # fresh draws per target, order-independent
    chosen[Selection.RANDOM] = [rng.sample(range(n), k) for _ in range(settings.random_draws)]
    return {m: v for m, v in chosen.items() if m in settings.methods}


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

    def control_gradients(self, related: list[Probe]) -> torch.Tensor:
        return torch.stack([flat_gradient(self.model, self.meter.probe_batch([p])) for p in related])


def probe_groups(target: Target, unrelated: list[Probe],
                 targets: Sequence[Target]) -> tuple[list[Probe], dict[str, slice]]:
    """Probes of one target's trials, grouped; ``cross`` holds every target's own prompt (matrix row)."""
    groups = {"target": [Probe(target.prompt, target.completion)],
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
    """Per-trial scores: group means, excess, specificity z, related ratio."""
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


def check_targets(session: AttributionSession, targets: Sequence[Target]) -> None:
    """Refuse targets that cannot be measured: a prompt, paraphrase, related or unrelated prompt (or its
    completion) with nothing to tokenize or too long for the model, rows not indexed.

    (Missing or mistyped fields are refused earlier, by ``Target.from_dict``.)"""
    if not targets:
        raise ConfigError("no ablation targets")
    known = positions_by_id(session)
    for number, target in enumerate(targets, 1):
        pairs = [("", Probe(target.prompt, target.completion))]
        pairs += [(f"paraphrase {i}", Probe(p, target.completion)) for i, p in enumerate(target.paraphrases, 1)]
        pairs += [(f"related prompt {i}", p) for i, p in enumerate(target.related, 1)]
        pairs += [(f"unrelated prompt {i}", p) for i, p in enumerate(target.unrelated, 1)]
        for what, probe in pairs:
            check_probe(session, probe, f"target {number}" + (f", {what}" if what else ""))
        missing = [i for i in target.example_ids if int(i) not in known]
        if missing:
            raise ConfigError(f"target {number}: example_ids {missing[:5]} are not in the index")


def check_probe(session: AttributionSession, probe: Probe, name: str) -> None:
    """A prompt and completion that each give a token and fit the model's context together, else ConfigError."""
    tokenizer, limit = session.encoder.tokenizer, session.encoder.max_length
    n_prompt = len(tokenizer.encode(probe.prompt, add_special_tokens=False))
    n_completion = len(tokenizer.encode(probe.completion, add_special_tokens=False))
    if n_prompt == 0 or n_completion == 0:
        raise ConfigError(f"{name} ({probe.prompt[:80]!r} → {probe.completion[:80]!r}): the prompt and the "
                          "completion must each give at least one token")
    if n_prompt + n_completion > limit:
        raise ConfigError(f"{name} is {n_prompt + n_completion} tokens; the model takes at most {limit}")


def unrelated_prompts(target: Target, pool: Sequence[Target], count: int = 4) -> list[Probe]:
    """Up to ``count`` prompts of another relation (else any other prompt) from ``pool``, or the target's own."""
    if target.unrelated:
        return list(target.unrelated)[:count]
    others = [t for t in pool if t.prompt != target.prompt]
    other_relation = [t for t in others if t.attribute is None or t.attribute != target.attribute]
    return [Probe(t.prompt, t.completion) for t in (other_relation or others)[:count]]


def run_ablation(session: AttributionSession, targets: Sequence[Target], settings: AblationSettings,
                 general: list[list[int]] | None = None, progress: Callable[[int], None] | None = None,
                 controls: Sequence[Target] | None = None) -> dict:
    """Every selection × budget × seed for every target; returns the versioned report.

    ``controls`` is a pool of targets (e.g. the demo's planted facts) to draw unrelated prompts from
    when a target brings none (default: the other targets). ``general`` defaults to evenly spaced rows.
    """
    check_targets(session, targets)
    if settings.k > len(session):
        raise ConfigError(f"k={settings.k} is larger than the index ({len(session)} examples)")
    general = general or general_rows(session, settings.general_rows)
    ablator = Ablator(session, settings, general)
    position = positions_by_id(session)
    rows, matrix = [], {}
    for t_index, target in enumerate(targets):
        unrelated = unrelated_prompts(target, controls or targets)
        if not unrelated:
            raise ConfigError(f"target {target.prompt!r} has no unrelated prompts to compare with: "
                              "give 'unrelated' prompts or more than one target")
        probes, slices = probe_groups(target, unrelated, targets)
        batch = ablator.meter.probe_batch(probes)
        before = ablator.measure(batch)
        ranked = ranked_selections(session, target, settings, position)
        related = probes[slices["related"]]
        avoid = ablator.control_gradients(related) if Selection.GRADIENT_CONTRASTIVE in ranked and related else None
        trials: dict[tuple, dict] = {}  # seed-independent selections are ascended once, reported per seed
        for seed in range(settings.seeds):
            chosen = {**ranked, **seeded_selections(session, target, settings, seed, position)}
            for method, picked in chosen.items():
                draws = picked if method == Selection.RANDOM else [picked]
                for draw, positions in enumerate(draws):
                    key = (method, tuple(positions))
                    if key not in trials:
                        contrast = avoid if method == Selection.GRADIENT_CONTRASTIVE else None
                        direction = ascent_direction(ablator.model, ablator.rows_of(positions), contrast)
                        trials[key] = ablator.trial(direction, batch, before)
                    for budget, deltas in trials[key].items():
                        if seed == 0 and method in MATRIX_SELECTIONS:
                            cross = deltas["probes"][slices["cross"]]
                            matrix.setdefault(method, {}).setdefault(str(budget), []).append(cross)
                        rows.append({"target": t_index, "prompt": target.prompt, "method": method,
                                     "seed": seed, "draw": draw, "budget": budget,
                                     "example_ids": [int(session.ids[p]) for p in positions],
                                     **summarize_deltas(deltas, slices)})
        if progress:
            progress(t_index + 1)
    summary = summarize(rows, settings)
    report = {"schema_version": SCHEMA_VERSION,
              "config": {**asdict(settings), "targets": len(targets), "examples": len(session)},
              "targets": [{"prompt": t.prompt, "completion": t.completion, "attribute": t.attribute}
                          for t in targets],
              "rows": rows, "summary": summary, "calibration": calibration(summary, settings.budgets)}
    report["evidence"] = evidence(summary, settings.budgets)
    report["cross_target"] = {method: {budget: {"matrix": values, **cross_target_summary(values, targets)}
                                       for budget, values in by_budget.items()}
                              for method, by_budget in matrix.items() if len(targets) > 1}
    return report
