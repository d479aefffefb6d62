"""Removal and retrain (docs/EVALUATION.md §2b): does removing a method's top-k rows make the model forget the facts?

For a batch of queries (planted facts the full model gets right, phrased as in training), each method's top
``k`` rows for every query are removed at once, and the model is retrained from scratch with the demo's seed,
order and schedule on what is left (``evaluation.retrain.train_subset``). Beside the methods: ``random`` (k random
rows per query), ``gold`` (every row that states a query's fact whole: what a perfect tracer would remove) and
``none`` (every row kept: the baseline all differences are taken against, trained by the same code and thread
count, so float noise of the training run is not counted as an effect). With ``train_seeds`` > 1 every selection,
``none`` included, is retrained from that many initializations: one retrain's Δ moves by tenths of a nat with the
exact rows removed (two selections with the same gold share have measured 0.05 and 0.81), and the mean over seeds
is what a method is judged by.

Measured per selection, in nats of the completion's summed NLL, against ``none``: the queries' loss increase
(training-style prompt, and the mean over held-out paraphrases), the increase on control facts (known facts about
other people, outside the batch: their rows were not targeted), their ratio (related/target, specificity), and
the ratio to ``random``. A selection is a served method's name, or ``unlearning@newton[...]``: the served
``unlearning`` moved along the query's Newton direction, in field LDS's grammar (``evaluation.field_lds``).
Resumable: each retrain is ``OUT/removal/NAME/`` with its marker written last.
Outputs ``OUT/removal.json`` and ``OUT/removal.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from attribution.config import UnlearningConfig
from attribution.errors import ConfigError
from attribution.models import load_model, load_tokenizer
from attribution.retrievers import Method, Query
from attribution.session import AttributionSession
from evaluation.facts import fact_hits
from evaluation.field_lds import UNLEARNING_NEWTON, is_unlearning_newton, unlearning_settings
from evaluation.lds import completion_losses
from evaluation.lds_stats import bootstrap_ci
from evaluation.report_files import rows_digest, write_report_files
from evaluation.retrain import (
    GOLD,
    MARKER,
    NONE,
    RANDOM,
    demo_config,
    is_done,
    run_jobs,
    train_subset,
    training_rows,
    usable_cores,
)
from indexer.groundtruth import Fact, load_facts

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RemovalSettings:
    queries: int = 40
    """Known facts in the batch whose rows are removed."""
    controls: int = 40
    """Known facts outside the batch, measured for specificity."""
    k: int = 40
    """Rows removed per query and method."""
    methods: tuple[str, ...] = (Method.GRADIENT.value, Method.BM25.value, Method.EMBEDDING.value)
    """Selections by served method (``gradient``, ``bm25``, …) or ``unlearning@newton[@dD][@iN][@rN][@kfac|@ekfac]``."""
    seed: int = 0
    """Draws the random selection and the bootstrap."""
    workers: int = field(default_factory=usable_cores)
    bootstrap: int = 2000
    known_only: bool = True
    """Only facts the full model gets right (False: any fact with gold rows, for models that know none)."""
    train_seeds: int = 1
    """Retrains of every selection, each from another initialization (the demo's seed, then +1, +2, …): a
    selection's effect is the mean over seeds of its loss increase against the no-removal retrain of that seed."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        for name in ("queries", "controls", "k", "workers", "bootstrap", "train_seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        unknown = sorted(name for name in self.methods if not is_selection(name))
        if unknown or not self.methods:
            raise ConfigError(f"unknown or no methods {unknown}; choose from {[m.value for m in Method]} or "
                              f"{UNLEARNING_NEWTON}[@dD][@iN][@rN][@kfac|@ekfac]")
        parsed = [selection_method(name) for name in self.methods]
        twice = [name for i, name in enumerate(self.methods) if parsed[i] in parsed[:i]]
        if twice:
            raise ConfigError(f"methods named twice (or the same settings spelled twice): {twice}")


def selection_method(name: str, base: UnlearningConfig | None = None) -> tuple[Method, UnlearningConfig | None]:
    """The retriever a selection queries and the ``unlearning`` settings it asks for (None: the session's). A
    ``unlearning@newton`` selection changes only the direction and its solver's settings of ``base`` (the session's
    ``unlearning`` settings; default: the service's defaults)."""
    if is_unlearning_newton(name):
        return Method.UNLEARNING, unlearning_settings(name, base)
    return Method(name), None


def is_selection(name: str) -> bool:
    try:
        selection_method(name)
    except (ValueError, ConfigError):
        return False
    return True


def split_facts(session: AttributionSession, facts: list[Fact], settings: RemovalSettings) -> tuple[list, list]:
    """The query batch and the controls: known facts with gold rows, in facts.jsonl order, disjoint by person."""
    hits = fact_hits(session, facts) if settings.known_only else [True] * len(facts)
    known = [f for f, hit in zip(facts, hits, strict=True) if hit and f.gold_rows]
    queries = known[: settings.queries]
    people = {f.person for f in queries}
    controls = [f for f in known[settings.queries :] if f.person not in people][: settings.controls]
    if len(queries) < 2 or not controls:
        raise ConfigError(f"{len(known)} known facts: too few for {settings.queries} queries and controls; lower "
                          "--queries")
    return queries, controls


def selections(session: AttributionSession, queries: list[Fact], n_rows: int,
               settings: RemovalSettings) -> dict[str, list[int]]:
    """Row ids each selection removes (sorted): every method's top-k per query, random k per query, gold rows."""
    chosen: dict[str, set[int]] = {}
    for name in settings.methods:
        method, unlearning = selection_method(name, session.config.unlearning)
        rows: set[int] = set()
        for fact in queries:
            query = Query(fact.prompt, fact.completion, unlearning=unlearning)
            hits = session.retriever(method).search(query, settings.k)
            rows.update(int(session.ids[h.row]) for h in hits)
        chosen[name] = rows
    rng = np.random.default_rng([settings.seed, 17])
    chosen[RANDOM] = set(rng.choice(n_rows, settings.k * len(queries), replace=False).tolist())
    chosen[GOLD] = {r for f in queries for r in f.gold_rows}
    return {NONE: [], **{name: sorted(rows) for name, rows in chosen.items()}}


def selection_key(demo_dir: Path, removed: list[int], seed_offset: int = 0) -> dict:
    key = {"demo_model_key": demo_config(demo_dir).stage_key("model"), "removed": len(removed),
           "removed_sha256": rows_digest(removed)}
    return key if seed_offset == 0 else {**key, "seed_offset": seed_offset}  # seed 0's key as before seeds


def retrain_dir(out: Path, name: str, seed_offset: int = 0) -> Path:
    """Where selection ``name`` is retrained with initialization seed + ``seed_offset``."""
    return out / "removal" / name if seed_offset == 0 else out / "removal" / f"seed-{seed_offset}" / name


def retrain_selections(demo_dir: Path, out: Path, removed: dict[str, list[int]], workers: int,
                       on_done: Callable[[str], None] | None = None, seeds: int = 1) -> None:
    """Retrain every selection not yet trained, at each initialization seed (one torch thread each whenever
    ``workers`` > 1, a lone selection left by a rerun included)."""
    n_rows = training_rows(demo_dir)
    todo = []
    for offset in range(seeds):
        for name, rows in removed.items():
            directory, key = retrain_dir(out, name, offset), selection_key(demo_dir, rows, offset)
            if is_done(directory, key):
                log.info("removal %s (seed +%d): already trained, skipped", name, offset)
            else:
                dropped = set(rows)
                todo.append((demo_dir, directory, 0, [r for r in range(n_rows) if r not in dropped], key, offset))
    done = None if on_done is None else (lambda job: on_done(f"{job[1].name} (seed +{job[5]})"))
    run_jobs(train_subset, todo, workers, done, {"threads": 1})


def paraphrase_losses(model, tokenizer, facts: list[Fact]) -> np.ndarray:
    """Each fact's completion loss averaged over its held-out paraphrases."""
    asked = [replace(f, prompt=p) for f in facts for p in f.paraphrases]
    losses = completion_losses(model, tokenizer, asked)
    out, start = [], 0
    for f in facts:
        out.append(losses[start : start + len(f.paraphrases)].mean())
        start += len(f.paraphrases)
    return np.asarray(out)


def run_removal(demo_dir: Path, session: AttributionSession, out: Path, settings: RemovalSettings,
                on_done: Callable[[str], None] | None = None) -> dict:
    """Select, retrain and measure; writes ``removal.json`` / ``removal.md`` and returns the report."""
    n_rows = training_rows(demo_dir)
    indexed = set(session.ids.tolist())
    if len(indexed) < n_rows:
        raise ConfigError(f"the index holds {len(indexed)} of the demo's {n_rows} training rows; removal and retrain "
                          "removes rows from all of training, so index every row (index build without --steps)")
    queries, controls = split_facts(session, load_facts(demo_dir), settings)
    removed = selections(session, queries, n_rows, settings)
    retrain_selections(demo_dir, out, removed, settings.workers, on_done, settings.train_seeds)
    tokenizer = load_tokenizer(demo_dir / "tokenizer")
    deltas: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in removed if name != NONE}
    base_loss = []
    for offset in range(settings.train_seeds):
        measured: dict[str, dict[str, np.ndarray]] = {}
        for name in removed:
            model = load_model(retrain_dir(out, name, offset))
            measured[name] = {"target": completion_losses(model, tokenizer, queries),
                              "paraphrase": paraphrase_losses(model, tokenizer, queries),
                              "control": completion_losses(model, tokenizer, controls)}
        base = measured[NONE]  # every difference against the no-removal retrain of the same seed
        base_loss.append(float(base["target"].mean()))
        for name, m in measured.items():
            if name != NONE:
                for part in m:
                    deltas[name].setdefault(part, []).append(m[part] - base[part])
    rng = np.random.default_rng([settings.seed, 19])
    rows = {}
    for name, parts in deltas.items():
        per_seed = [float(d.mean()) for d in parts["target"]]
        delta = {part: np.mean(values, axis=0) for part, values in parts.items()}  # per fact, over seeds
        target = float(delta["target"].mean())
        rows[name] = {"removed": len(removed[name]),
                      "target": target, "target_ci95": bootstrap_ci(delta["target"], settings.bootstrap, rng),
                      "paraphrase": float(delta["paraphrase"].mean()),
                      "control": float(delta["control"].mean()),
                      "control_ci95": bootstrap_ci(delta["control"], settings.bootstrap, rng),
                      "related_ratio": float(delta["control"].mean() / target) if target > 0 else None,
                      "gold_recall": len(set(removed[name]) & set(removed[GOLD])) / max(1, len(removed[GOLD])),
                      "per_seed": per_seed, "per_query": delta["target"].tolist()}
    for name, r in rows.items():
        r["vs_random"] = r["target"] / rows[RANDOM]["target"] if rows[RANDOM]["target"] > 0 else None
        r["vs_bm25_paired"] = paired_difference(rows, name, "bm25", settings.bootstrap, rng)
    markers = {name: json.loads((retrain_dir(out, name) / MARKER).read_text()) for name in removed}
    report = {"schema_version": SCHEMA_VERSION, "settings": asdict(settings), "demo": str(demo_dir),
              "training_rows": n_rows, "queries": [f.fact_id for f in queries],
              "query_facts": [{"prompt": f.prompt, "completion": f.completion} for f in queries],
              "controls": [f.fact_id for f in controls], "baseline_loss": float(np.mean(base_loss)),
              "selections": rows, "retrains": markers}
    write_report_files(report, out, "removal", markdown)
    return report


def paired_difference(rows: dict[str, dict], name: str, other: str, draws: int,
                      rng: np.random.Generator) -> list[float] | None:
    """Mean over facts of ``name``'s Δ minus ``other``'s on the same fact, with its bootstrap interval (facts
    resampled together: tighter than comparing the two intervals); None for ``other`` itself or when absent."""
    if name == other or other not in rows:
        return None
    difference = np.asarray(rows[name]["per_query"]) - np.asarray(rows[other]["per_query"])
    return [float(difference.mean()), *bootstrap_ci(difference, draws, rng)]


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = ["# Removal and retrain", "",
             f"{len(report['queries'])} known facts; each method's top {s['k']} rows per fact removed at once from "
             f"the {report['training_rows']} training rows, the model retrained from scratch (same order and "
             "schedule); loss increase (nats, summed over the completion) against a retrain that removes nothing "
             f"(baseline target loss {report['baseline_loss']:.3f}). Controls: {len(report['controls'])} known "
             "facts about other people. gold: every row stating a query's fact; random: k random rows per fact.",
             f"Every selection retrained from {s.get('train_seeds', 1)} initialization(s); Δ is the mean over them "
             "(each against its own no-removal retrain), the interval over facts; 'per seed' lists each seed's Δ.",
             "",
             "'− BM25 (paired)': the selection's Δ minus BM25's on the same fact, mean and interval over facts.",
             "",
             "| selection | rows removed | gold rows among them | Δ target | 95 % CI | per seed | Δ paraphrase | "
             "Δ control | related/target | × random | − BM25 (paired) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["selections"].items():
        lo, hi = r["target_ci95"]
        ratio = "–" if r["related_ratio"] is None else f"{r['related_ratio']:.2f}"
        times = "–" if r["vs_random"] is None else f"{r['vs_random']:.1f}"
        seeds = " / ".join(f"{v:.2f}" for v in r.get("per_seed", [r["target"]]))
        lines.append(f"| {name} | {r['removed']} | {r['gold_recall']:.0%} | {r['target']:.3f} | [{lo:.3f}, {hi:.3f}] "
                     f"| {seeds} | {r['paraphrase']:.3f} | {r['control']:.3f} | {ratio} | {times} | "
                     f"{paired_cell(r.get('vs_bm25_paired'))} |")
    return "\n".join(lines) + "\n"


def paired_cell(paired: list[float] | None) -> str:
    return "–" if paired is None else f"{paired[0]:+.3f} [{paired[1]:+.3f}, {paired[2]:+.3f}]"
