"""What an ablation will ascend on, known before any ascent: its settings, each target's selections, which of them
are empty (and why), and which checks of the checklist cannot run with these targets and settings.

The service validates a request with these before it queues a job; ``evaluation.ablation`` runs the plan.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from attribution.errors import ConfigError
from attribution.session import AttributionSession
from evaluation.ablation_checks import CheckPlan, unrunnable
from evaluation.selections import Selection
from evaluation.targets import Target


@dataclass(frozen=True)
class AblationSettings:
    """How an ablation runs (docs/EVALUATION.md §3)."""

    k: int = 10
    """Rows per selection."""
    budgets: tuple[float, ...] = (0.5, 1.0, 2.0)
    """‖Δθ‖ (parameter L2 norm) of each ascent."""
    random_draws: int = 19
    """Random selections per seed (a target's p-value against random rests on seeds × random_draws)."""
    seeds: int = 3
    methods: tuple[Selection, ...] = tuple(s for s in Selection if s is not Selection.UNLEARNING_CONTRASTIVE)
    """Selections to ascend on (every one but the opt-in contrastive unlearning one; ``given`` runs only for targets
    with example_ids)."""
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


def ranked_selections(session: AttributionSession, target: Target, settings: AblationSettings,
                      position: dict[int, int]) -> dict[Selection, list[int]]:
    """Row positions of the selections that do not depend on a seed (top/bottom by score, lexical, embedding,
    the target's own ``example_ids``); ``position`` maps example ids to rows (``positions_by_id``)."""
    k = settings.k
    order = np.argsort(-session.gradient.score_all(target.query()), kind="stable")
    chosen = {Selection.GRADIENT: order[:k].tolist(), Selection.GRADIENT_CONTRASTIVE: order[:k].tolist(),
              Selection.BOTTOM: order[::-1][:k].tolist()}
    for method in (Selection.BM25, Selection.EMBEDDING, Selection.UNLEARNING):
        if method in settings.methods:
            chosen[method] = [h.row for h in session.retriever(method).search(target.query(), k)]
    if Selection.UNLEARNING_CONTRASTIVE in settings.methods and target.related:
        retriever = session.retriever(Selection.UNLEARNING)
        contrastive = replace(session.config.unlearning, contrastive=True)
        query = replace(target.query(), controls=[(p.prompt, p.completion) for p in target.related],
                        unlearning=contrastive)
        chosen[Selection.UNLEARNING_CONTRASTIVE] = [h.row for h in retriever.search(query, k)]
    if target.example_ids:
        chosen[Selection.GIVEN] = [position[int(i)] for i in target.example_ids]
    return {m: v for m, v in chosen.items() if m in settings.methods}


def positions_by_id(session: AttributionSession) -> dict[int, int]:
    """Example id → row position in the session."""
    return {int(i): p for p, i in enumerate(session.ids)}


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


@dataclass(frozen=True)
class SkippedSelection:
    """A selection of one target that was not ascended on, and why (it is empty, or its gradient is zero)."""

    target: int
    """The target's position in the request."""
    prompt: str
    method: Selection
    reason: str


class NothingToAblateError(ConfigError):
    """Every selection of every target was empty: nothing could be ascended on."""


EMPTY_REASONS = {
    Selection.GIVEN: "the target has no example_ids",
    Selection.ORACLE: "the target has no gold rows in the index",
    Selection.BM25: "bm25 found no indexed row sharing a word with the prompt and completion",
    Selection.UNLEARNING_CONTRASTIVE: "the target has no related prompts to contrast with",
}


def skipped_of(chosen: dict[Selection, list], target: Target, t_index: int,
               methods: Sequence[Selection]) -> list[SkippedSelection]:
    """The requested ``methods`` that ``chosen`` has no rows for."""
    return [SkippedSelection(t_index, target.prompt, m, EMPTY_REASONS.get(m, f"the {m.value} selection is empty"))
            for m in methods if not chosen.get(m)]


def known_empty(session: AttributionSession, targets: Sequence[Target],
                settings: AblationSettings) -> list[SkippedSelection]:
    """Selections known to be empty before any ascent, found cheaply (no gradient): ``given`` without example_ids,
    ``oracle`` without gold rows in the index, ``bm25`` sharing no word with the target."""
    position = positions_by_id(session)
    methods = [m for m in (Selection.BM25, Selection.GIVEN, Selection.ORACLE) if m in settings.methods]
    out = []
    for t_index, target in enumerate(targets):
        chosen = {Selection.GIVEN: target.example_ids, Selection.ORACLE: [g for g in target.gold_rows if g in position]}
        if Selection.BM25 in methods:
            chosen[Selection.BM25] = session.retriever(Selection.BM25).search(target.query(), settings.k)
        out += skipped_of(chosen, target, t_index, methods)
    return out


def check_runnable(skipped: Sequence[SkippedSelection], targets: Sequence[Target], settings: AblationSettings) -> None:
    """:class:`NothingToAblateError` when every requested selection of every target is in ``skipped``."""
    missing = {(s.target, s.method) for s in skipped}
    if all((t, m) in missing for t in range(len(targets)) for m in settings.methods):
        raise NothingToAblateError(
            "nothing to ablate: every selection of every target is empty ("
            + "; ".join(f"target {s.target + 1}, {s.method.value}: {s.reason}" for s in skipped[:5])
            + "); ask for another method as well, e.g. gradient or random")


def request_warnings(targets: Sequence[Target], settings: AblationSettings) -> list[str]:
    """Checks that cannot run with these targets and settings (and so cannot support a verdict), said up front."""
    plan = CheckPlan.of(targets, settings.methods, len(settings.budgets), settings.seeds * settings.random_draws)
    return unrunnable(plan)
