"""The unlearning report: for each target, ascend on each selection at each budget and compare.

Selections of ``k`` rows per target (EVALUATION.md §3): ``gradient`` (the attribution's top-k),
``gradient_contrastive`` (the same rows, ascended with the related prompts' gradient
directions projected out), ``bm25``, ``embedding``, ``bottom`` (lowest gradient scores),
``oracle`` (rows that state the fact, where ground truth exists) and ``random`` draws.
Demo rows all have the same length, so sizes and token counts match.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from attribution.batching import training_batch
from attribution.errors import ConfigError
from attribution.retrievers import Query
from attribution.session import AttributionSession
from attribution.unlearn import LossMeter, Probe, apply_step, ascent_direction, flat_gradient, restored

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
METHODS = ("gradient", "gradient_contrastive", "bm25", "embedding", "bottom", "oracle", "random")


@dataclass(frozen=True)
class AblationSettings:
    k: int = 10
    budgets: tuple[float, ...] = (0.5, 1.0, 2.0)
    """‖Δθ‖ (parameter L2 norm) of each ascent."""
    random_draws: int = 19
    seeds: int = 3
    methods: tuple[str, ...] = METHODS
    general_rows: int = 16
    """Held-out-style rows whose mean token loss measures general damage."""

    def __post_init__(self) -> None:
        if self.k <= 0 or not self.budgets or any(b <= 0 for b in self.budgets):
            raise ConfigError("k must be positive and every budget > 0")
        if self.random_draws < 1 or self.seeds < 1:
            raise ConfigError("random_draws and seeds must be at least 1")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ConfigError(f"unknown ablation methods {sorted(unknown)}; choose from {list(METHODS)}")


@dataclass
class TargetResult:
    target: str
    completion: str
    rows: dict = field(default_factory=dict)
    """method → budget → deltas (random: lists over draws)."""


def gradient_scores(session: AttributionSession, prompt: str, completion: str) -> np.ndarray:
    """Gradient score of every indexed row (best window) for one query."""
    retriever = session.retriever("gradient")
    q = session.encoder.encode_query(prompt, completion).vector.numpy()
    scores = np.empty(retriever.n, dtype=np.float32)
    for start in range(0, retriever.n, 4096):
        block = np.asarray(retriever.vectors[start : start + 4096], dtype=np.float32)
        scores[start : start + 4096] = (block @ q).max(axis=1)
    return scores


def ranked_selections(session: AttributionSession, target: dict, settings: AblationSettings) -> dict:
    """Row positions of the selections that do not depend on a seed (top/bottom by score, lexical, embedding)."""
    k, n = settings.k, len(session)
    if k > n:
        raise ConfigError(f"k={k} is larger than the index ({n} examples)")
    prompt, completion = target["prompt"], target["completion"]
    order = np.argsort(-gradient_scores(session, prompt, completion), kind="stable")
    chosen: dict = {"gradient": order[:k].tolist(), "gradient_contrastive": order[:k].tolist(),
                    "bottom": order[::-1][:k].tolist()}
    for method in ("bm25", "embedding"):
        if method in settings.methods:
            chosen[method] = [h.row for h in session.retriever(method).search(Query(prompt, completion), k)]
    return {m: v for m, v in chosen.items() if m in settings.methods}


def seeded_selections(session: AttributionSession, target: dict, settings: AblationSettings, seed: int) -> dict:
    """Row positions of the seeded selections: an oracle sample of gold rows and the random draws."""
    k, n = settings.k, len(session)
    position = {int(i): p for p, i in enumerate(session.ids)}
    chosen: dict = {}
    gold = [position[g] for g in target.get("gold_rows", []) if g in position]
    if gold:
        chosen["oracle"] = random.Random(seed).sample(gold, min(k, len(gold)))
    rng = random.Random(seed * 7919 + 1)
    chosen["random"] = [rng.sample(range(n), k) for _ in range(settings.random_draws)]
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


def probe_groups(target: dict, unrelated: list[dict]) -> tuple[list[Probe], dict[str, slice]]:
    groups = {"target": [Probe(target["prompt"], target["completion"])],
              "paraphrases": [Probe(p, target["completion"]) for p in target.get("paraphrases", [])],
              "related": [Probe(r["prompt"], r["completion"]) for r in target.get("related", [])],
              "unrelated": [Probe(u["prompt"], u["completion"]) for u in unrelated]}
    probes, slices, start = [], {}, 0
    for name, group in groups.items():
        probes += group
        slices[name] = slice(start, start + len(group))
        start += len(group)
    return probes, slices


def summarize_deltas(deltas: dict, slices: dict[str, slice]) -> dict:
    """Per-trial scores: group means, excess, specificity z, related ratio."""
    values = np.array(deltas["probes"])
    mean = {name: float(values[s].mean()) if s.stop > s.start else float("nan") for name, s in slices.items()}
    controls = np.concatenate([values[slices["related"]], values[slices["unrelated"]]])
    sd = float(controls.std(ddof=1)) if len(controls) > 1 else float("nan")
    target = mean["target"]
    return {**{f"d_{k}": v for k, v in mean.items()}, "d_general": deltas["general"],
            "excess": target - mean["unrelated"],
            "specificity_z": (target - float(controls.mean())) / sd if sd and sd > 0 else float("nan"),
            "related_ratio": mean["related"] / target if target else float("nan")}


def run_ablation(session: AttributionSession, targets: list[dict], settings: AblationSettings,
                 general: list[list[int]], progress: Callable[[int], None] | None = None) -> dict:
    """Every selection × budget × seed for every target; returns the versioned report."""
    if not targets:
        raise ConfigError("no ablation targets")
    ablator = Ablator(session, settings, general)
    rows = []
    for t_index, target in enumerate(targets):
        unrelated = [t for t in targets if t.get("attribute") != target.get("attribute")][:4] or \
            [t for t in targets if t is not target][:4]
        probes, slices = probe_groups(target, unrelated)
        batch = ablator.meter.probe_batch(probes)
        before = ablator.measure(batch)
        ranked = ranked_selections(session, target, settings)
        related = probes[slices["related"]]
        avoid = ablator.control_gradients(related) if "gradient_contrastive" in ranked and related else None
        trials: dict[tuple, dict] = {}  # seed-independent selections are ascended once, reported per seed
        for seed in range(settings.seeds):
            chosen = {**ranked, **seeded_selections(session, target, settings, seed)}
            for method, picked in chosen.items():
                draws = picked if method == "random" else [picked]
                for draw, positions in enumerate(draws):
                    key = (method, tuple(positions))
                    if key not in trials:
                        contrast = avoid if method == "gradient_contrastive" else None
                        direction = ascent_direction(ablator.model, ablator.rows_of(positions), contrast)
                        trials[key] = ablator.trial(direction, batch, before)
                    for budget, deltas in trials[key].items():
                        rows.append({"target": t_index, "prompt": target["prompt"], "method": method,
                                     "seed": seed, "draw": draw, "budget": budget,
                                     "example_ids": [int(session.ids[p]) for p in positions],
                                     **summarize_deltas(deltas, slices)})
        if progress:
            progress(t_index + 1)
    from attribution.ablation_stats import summarize

    return {"schema_version": SCHEMA_VERSION, "config": {**asdict(settings), "targets": len(targets),
            "examples": len(session)}, "rows": rows, "summary": summarize(rows, settings)}
