"""Fact tracing with the ``unlearning`` retriever's variants, and its time per query, on a published index.

    python -m bench.unlearning --index demo-data/index [--limit 60] [--variants default,none,related,...]
    python -m bench.unlearning --demo second-data --steps 0:200 [--baselines gradient,bm25,embedding]

Same queries and metrics as ``headwater eval facts`` (evaluation/facts.py: facts the model gets right,
training-style prompts and held-out paraphrases, recall@10 and MRR of the first gold row), one row per
variant of the settings — the control correction (generic probes, none, the fact's related prompts),
contrastive ascent, budget and steps, exhaustive scoring, the Newton-step direction — with seconds per
query: wall clock, and the process's CPU time (mean, median and the first query, whose candidates are not
cached yet), which a machine shared with other jobs inflates less (run it with one torch thread). ``--demo``
builds the session in memory instead (k=8, 16-token windows, as the demo's index); ``--baselines`` adds other
methods' rows through the same loop. ``--pools 30,100,300`` adds the recall stage's table: on the facts of the
exhaustive variants (training-style prompts), the share of exhaustive scoring's top 10 rows, and of the facts with a
gold row anywhere in the pool, that the candidate pool holds at each ``candidates`` setting, with the pool's size.
Prints markdown tables; not a test.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from attribution.config import AttributionConfig, Correction, Direction, RowScore, UnlearningConfig
from attribution.retrievers import Method, Query
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from evaluation.demo_rows import load_layout
from evaluation.demo_session import demo_session
from evaluation.facts import Prompts, load_demo_facts, select_facts
from evaluation.metrics import first_gold_rank, mean_reciprocal_rank, recall_at
from indexer.groundtruth import Fact
from indexer.store import open_index
from indexer.training_rows import parse_range, rows_for_steps


@dataclass(frozen=True)
class Variant:
    """One setting of the retriever, and whether the fact's related prompts go along as controls."""

    settings: UnlearningConfig
    related: bool = False


BASE = UnlearningConfig()
VARIANTS = {
    "default": Variant(BASE),
    "none": Variant(replace(BASE, correction=Correction.NONE)),
    "related": Variant(BASE, related=True),
    "related+contrastive": Variant(replace(BASE, contrastive=True), related=True),
    "budget=1": Variant(replace(BASE, budget=1.0)),
    "budget=0.25": Variant(replace(BASE, budget=0.25)),
    "steps=1": Variant(replace(BASE, steps=1)),
    "candidates=10": Variant(replace(BASE, candidates=10)),
    "candidates=20": Variant(replace(BASE, candidates=20)),
    "candidates=50": Variant(replace(BASE, candidates=50)),
    "candidates=100": Variant(replace(BASE, candidates=100)),
    "window": Variant(replace(BASE, score=RowScore.WINDOW)),
    "window+none": Variant(replace(BASE, score=RowScore.WINDOW, correction=Correction.NONE)),
    "exhaustive": Variant(replace(BASE, exhaustive_rows=10**9)),
    "exhaustive+none": Variant(replace(BASE, exhaustive_rows=10**9, correction=Correction.NONE)),
    "exhaustive+budget=0.1": Variant(replace(BASE, exhaustive_rows=10**9, budget=0.1)),
    "newton": Variant(replace(BASE, direction=Direction.NEWTON)),
    "newton+related": Variant(replace(BASE, direction=Direction.NEWTON), related=True),
    "newton+exhaustive": Variant(replace(BASE, direction=Direction.NEWTON, exhaustive_rows=10**9)),
    "newton+budget=0.1": Variant(replace(BASE, direction=Direction.NEWTON, budget=0.1)),
}


def run_variant(session: AttributionSession, facts: list[Fact], variant: Variant, depth: int,
                method: Method = Method.UNLEARNING) -> list[dict]:
    """recall@1/10, MRR (ranks past ``depth`` count 0), seconds per query and per stage, per kind of prompt."""
    retriever = session.retriever(method)
    rows = []
    for split in Prompts:
        ranks, seconds, cpu, stages = [], [], [], []
        for fact in facts:
            controls = [(r.prompt, r.completion) for r in fact.related] if variant.related else []
            for prompt in [fact.prompt] if split == Prompts.TRAIN else fact.paraphrases:
                started, started_cpu = time.perf_counter(), time.process_time()
                hits = retriever.search(Query(prompt, fact.completion, controls, variant.settings), depth)
                seconds.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
                stages.append(getattr(retriever, "timings", {}))
                ranks.append(first_gold_rank([int(session.ids[h.row]) for h in hits], fact.gold_rows))
        mean = {name: statistics.fmean(s.get(name, 0.0) for s in stages)
                for name in ("candidates", "reference", "target", "rows")}
        rows.append({"prompts": split.value, "recall@1": recall_at(ranks, 1), "recall@10": recall_at(ranks, 10),
                     "mrr": mean_reciprocal_rank(ranks), "queries": len(ranks),
                     "mean_s": statistics.fmean(seconds), "cpu_s": statistics.fmean(cpu),
                     "median_cpu_s": statistics.median(cpu), "first_cpu_s": cpu[0], **mean})
    return rows


def pool_recall(session: AttributionSession, facts: list[Fact], pools: list[int], depth: int) -> list[dict]:
    """Per ``candidates`` setting: mean pool size, share of exhaustive scoring's top ``depth`` the pool holds, and
    share of facts whose pool holds a gold row (training-style prompts)."""
    retriever = session.retriever(Method.UNLEARNING)
    exhaustive = replace(BASE, exhaustive_rows=10**9)
    found: dict[int, list[tuple[int, float, bool]]] = {n: [] for n in pools}
    for fact in facts:
        query = Query(fact.prompt, fact.completion, [], exhaustive)
        top = {h.row for h in retriever.search(query, depth)}
        gold = {int(r) for r in np.flatnonzero(np.isin(session.ids, list(fact.gold_rows)))}
        for n in pools:
            settings = replace(BASE, candidates=n)
            pool = set(retriever.candidates(Query(fact.prompt, fact.completion, [], settings), depth, None, settings)
                       .tolist())
            found[n].append((len(pool), len(pool & top) / len(top), bool(pool & gold)))
    return [{"candidates": n, "pool": statistics.fmean(p for p, _, _ in found[n]),
             "recall": statistics.fmean(r for _, r, _ in found[n]), "gold": statistics.fmean(g for _, _, g in found[n]),
             "facts": len(found[n])} for n in pools]


def pool_sizes(text: str) -> list[int]:
    """``--pools``: comma-separated positive candidate counts (argparse turns the ValueError into a usage error)."""
    sizes = [int(n) for n in text.split(",") if n.strip()]
    if any(n < 1 for n in sizes):
        raise ValueError(f"pool sizes must be positive, got {text!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=Path("demo-data/index"))
    parser.add_argument("--demo", type=Path, default=None, help="a built demo: sketch its rows in memory instead")
    parser.add_argument("--steps", default=None, help="with --demo: the step range A:B of rows (default: all)")
    parser.add_argument("--baselines", default="", help="other methods to run through the same loop")
    parser.add_argument("--limit", type=int, default=60, help="at most this many facts")
    parser.add_argument("--exhaustive-limit", type=int, default=10, help="facts for the exhaustive variants")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--depth", type=int, default=10, help="results asked per query (re-rank pools grow to it)")
    parser.add_argument("--pools", type=pool_sizes, default=[],
                        help="candidates settings whose pools' recall to measure, e.g. 30,100")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    session = open_index(args.index) if args.demo is None else in_memory(args.demo, args.steps)
    selection = select_facts(session, load_demo_facts(session, args.demo))
    facts = selection.facts[: args.limit]
    print(f"\n{len(session)} rows; model accuracy {selection.accuracy:.1%}; {len(facts)} known facts queried "
          f"(exhaustive variants: {min(args.exhaustive_limit, len(facts))})\n")
    print(f"| variant | prompts | recall@1 | recall@10 | MRR@{args.depth} | queries | wall s/query | CPU s/query "
          "mean / median / first | wall ms candidates / reference / target | rows |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    runs = [(m, Variant(BASE), Method(m)) for m in args.baselines.split(",") if m.strip()]
    runs += [(name, VARIANTS[name.strip()], Method.UNLEARNING) for name in args.variants.split(",") if name.strip()]
    for name, variant, method in runs:
        asked = facts[: args.exhaustive_limit] if variant.settings.exhaustive_rows > len(session) // 2 else facts
        for r in run_variant(session, asked, variant, args.depth, method):
            print(f"| {name} | {r['prompts']} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | {r['mrr']:.3f} | "
                  f"{r['queries']} | {r['mean_s']:.2f} | {r['cpu_s']:.2f} / {r['median_cpu_s']:.2f} / "
                  f"{r['first_cpu_s']:.2f} | "
                  f"{r['candidates']:.0f} / {r['reference']:.0f} / {r['target']:.0f} | {r['rows']:.0f} |", flush=True)
    pools = args.pools
    if pools:
        print(f"\n| candidates per source | mean pool rows | recall of exhaustive top {args.depth} | facts with a gold "
              "row in the pool | facts |\n|---|---|---|---|---|")
        for r in pool_recall(session, facts[: args.exhaustive_limit], pools, args.depth):
            print(f"| {r['candidates']} | {r['pool']:.0f} | {r['recall']:.3f} | {r['gold']:.3f} | {r['facts']} |",
                  flush=True)


def in_memory(demo: Path, steps: str | None) -> AttributionSession:
    """A session over a built demo's rows (of ``steps``), sketched as the demo's index is (k=8, 16-token windows)."""
    rows = None
    if steps:
        layout = load_layout(demo)
        start, stop = parse_range(steps, "steps")
        rows = rows_for_steps(layout["num_rows"], layout["batch_size"], start, stop)
    return demo_session(demo, AttributionConfig(sketch=SketchConfig(k=8), window=16), rows=rows)


if __name__ == "__main__":
    main()
