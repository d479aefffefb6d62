"""Fact tracing against the demo's planted facts (docs/EVALUATION.md §1): recall@k and MRR per retriever.

A query is a planted fact's prompt and completion; it is a hit at k if a training row that
states the fact whole (a *gold row*) is in the top k. Queries are asked with the prompt phrased
as in training and with held-out paraphrases, and only for facts the model gets right (every
completion token top-1, teacher-forced) whose gold rows are in the index; that accuracy and the
number of usable facts are reported with the table. ``gradient+contrastive`` asks the gradient
retriever with the fact's related prompts (same attribute, other people) as controls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from attribution.errors import ConfigError
from attribution.retrievers import Method, Query
from attribution.session import AttributionSession
from evaluation.metrics import first_gold_rank, mean_reciprocal_rank, recall_at
from evaluation.report_files import write_report_files
from evaluation.training import completion_hits
from indexer.groundtruth import Fact, facts_file, load_facts

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
CONTRASTIVE = "gradient+contrastive"
"""The report's row for the gradient retriever asked with the fact's related prompts as controls."""
DEPTH = 100
"""Results asked per query: recall@100 is the deepest cut reported."""


class Prompts(StrEnum):
    """How a fact is asked: phrased as in training, or as its held-out paraphrases."""

    TRAIN = "train"
    HELDOUT = "heldout"


def demo_dir(session: AttributionSession, demo: Path | None = None) -> Path:
    """The demo directory holding ``facts.jsonl``: ``demo``, or the folder of the facts file the index records."""
    if demo is None:
        if session.manifest is None:
            raise ConfigError("give --demo: the session was not opened from an index")
        facts = facts_file(session.manifest)
        if facts is None:
            raise ConfigError("the index records no facts file (it was not built from the demo, nor with --facts); "
                              "give --demo DIR, the demo directory whose facts.jsonl to use")
        demo = facts.parent
    elif not (demo / "facts.jsonl").is_file():
        raise ConfigError(f"--demo {demo}: no facts.jsonl there; give the directory 'headwater demo build' wrote")
    return demo


def fact_hits(session: AttributionSession, facts: Sequence[Fact]) -> list[bool]:
    """Whether the final model gets each fact right: every completion token top-1, teacher-forced."""
    model = session.encoder.checkpoints[-1].model
    return [completion_hits(model, session.encoder.tokenizer, f.prompt, f.completion)[1] for f in facts]


def known_facts(session: AttributionSession, facts: list[Fact], rows: set[int]) -> tuple[list[Fact], float]:
    """Facts the model gets right with a gold row among ``rows``, and the model's accuracy on all ``facts``."""
    hits = fact_hits(session, facts)
    usable = [f for f, hit in zip(facts, hits, strict=True) if hit and rows.intersection(f.gold_rows)]
    return usable, sum(hits) / len(facts)


@dataclass
class FactSelection:
    """The facts to query and how they were chosen."""

    facts: list[Fact]
    total: int
    right: int
    known_only: bool

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else float("nan")

    def summary(self) -> dict:
        return {"facts": self.total, "right": self.right, "accuracy_whole_completion": self.accuracy,
                "usable": len(self.facts), "known_only": self.known_only}


def select_facts(session: AttributionSession, facts: list[Fact], known_only: bool = True) -> FactSelection:
    """Facts with a gold row inside the index (and, with ``known_only``, that the model gets right)."""
    if not facts:
        raise ConfigError("the demo has no planted facts")
    indexed = set(session.ids.tolist())
    hits = fact_hits(session, facts)
    usable = [f for f, hit in zip(facts, hits, strict=True)
              if (hit or not known_only) and indexed.intersection(f.gold_rows)]
    return FactSelection(usable, len(facts), sum(hits), known_only)


def ranked_ids(session: AttributionSession, query: Query, method: str, depth: int) -> list[int]:
    """Example ids of a method's top ``depth`` (the retriever directly: no texts fetched)."""
    return [int(session.ids[hit.row]) for hit in session.retriever(method).search(query, depth)]


def evaluate(session: AttributionSession, facts: list[Fact], methods, depth: int = DEPTH, limit: int | None = None,
             contrastive: bool = False) -> dict:
    """(method, 'train' | 'heldout') → recall@1/10/100, MRR and the number of queries."""
    results = {}
    for method in methods:
        for split in Prompts:
            ranks = []
            for fact in facts[:limit]:
                prompts = [fact.prompt] if split == Prompts.TRAIN else fact.paraphrases
                controls = [(r.prompt, r.completion) for r in fact.related] if contrastive else []
                for prompt in prompts:
                    ranked = ranked_ids(session, Query(prompt, fact.completion, controls), method, depth)
                    ranks.append(first_gold_rank(ranked, fact.gold_rows))
            results[(method, split)] = {"recall@1": recall_at(ranks, 1), "recall@10": recall_at(ranks, 10),
                                        "recall@100": recall_at(ranks, 100), "mrr": mean_reciprocal_rank(ranks),
                                        "queries": len(ranks)}
    return results


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods, stripped and validated (a clear error names the unknown ones)."""
    chosen = [m.strip() for m in methods if m.strip()]
    unknown = sorted(set(chosen) - set(Method))
    if unknown or not chosen:
        raise ConfigError(f"unknown or no methods {unknown}; choose from {[m.value for m in Method]}")
    return chosen


def trace_facts(session: AttributionSession, selection: FactSelection, methods: Sequence[str],
                contrastive: bool = True, limit: int | None = None) -> dict:
    """The fact-tracing report: one row per method and prompt kind, with the selection's accuracy."""
    methods = check_methods(methods)
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be positive, got {limit}")
    if not selection.facts:
        raise ConfigError(f"no usable facts: of {selection.total} facts the model gets {selection.right} right, and "
                          "none of those has a gold row in the index (index more steps, or query all facts)")
    started = time.perf_counter()
    results = evaluate(session, selection.facts, methods, limit=limit)
    if contrastive:
        for (_, split), entry in evaluate(session, selection.facts, [Method.GRADIENT], limit=limit,
                                          contrastive=True).items():
            results[(CONTRASTIVE, split)] = entry
    rows = [{"method": method, "prompts": split, **entry} for (method, split), entry in results.items()]
    return {"schema_version": SCHEMA_VERSION, "examples": len(session),
            "config": {"methods": methods, "contrastive": contrastive, "limit": limit, "depth": DEPTH},
            "selection": selection.summary(), "queried_facts": len(selection.facts[:limit]), "rows": rows,
            "seconds": round(time.perf_counter() - started, 1)}


def markdown(report: dict) -> str:
    """The report as a markdown table with a line saying which facts were asked."""
    sel = report["selection"]
    which = "right and with a gold row in the index" if sel["known_only"] else "with a gold row in the index"
    lines = [f"# Fact tracing (schema {report['schema_version']})", "",
             f"Model accuracy on the {sel['facts']} planted facts (whole completion, teacher-forced): "
             f"{sel['accuracy_whole_completion']:.1%} ({sel['right']} right). Usable facts ({which}): "
             f"{sel['usable']}; queried: {report['queried_facts']}. {report['examples']} indexed examples; "
             f"{report['seconds']:.0f} s.", "",
             "| method | prompts | recall@1 | recall@10 | recall@100 | MRR | queries |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['prompts']} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | "
                     f"{r['recall@100']:.3f} | {r['mrr']:.3f} | {r['queries']} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    """``OUT/facts.json`` and ``OUT/facts.md``."""
    write_report_files(report, out, "facts", markdown)


def load_demo_facts(session: AttributionSession, demo: Path | None = None) -> list[Fact]:
    """The planted facts (with gold rows) of the demo behind an index, or of ``demo``."""
    return load_facts(demo_dir(session, demo))
