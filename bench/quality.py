"""Fact-tracing quality of each retriever on the demo: recall@k and MRR against planted facts.

    python -m bench.quality --demo demo-data [--steps 0:300] [--k 16] [--window 16]

Builds sessions in memory at the sketch settings given (to compare settings without an index);
the metrics are those of ``headwater eval facts`` (evaluation/facts.py): only facts the model gets
right (whole completion, teacher-forced top-1) are queried; the table reports that accuracy too.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from attribution.config import AttributionConfig, CurvatureConfig, ScoringConfig
from attribution.preconditioner import PreconditionMode
from attribution.retrievers import Method
from attribution.sketch import SketchConfig
from demo.groundtruth import load_facts, load_layout
from demo.session import demo_session
from evaluation.facts import evaluate, known_facts
from indexer.training_rows import parse_range, rows_for_steps

__all__ = ["METHODS", "evaluate", "known_facts", "main"]  # evaluate and known_facts live in evaluation.facts

METHODS = tuple(Method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--steps", default=None, help="step range A:B of rows to index (default: all)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--precondition", default="inverse_sqrt", choices=[m.value for m in PreconditionMode])
    parser.add_argument("--mode", default="cosine")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many facts")
    parser.add_argument("--contrastive", action="store_true")
    parser.add_argument("--normalizer", action="store_true")
    parser.add_argument("--fusion", default="rerank", choices=["rerank", "rrf"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    layout = load_layout(args.demo)
    rows = None
    if args.steps:
        start, stop = parse_range(args.steps, "steps")
        rows = rows_for_steps(layout["num_rows"], layout["batch_size"], start, stop)
    normalizer = str(args.demo / "model" / "adam_state.safetensors") if args.normalizer else None
    config = AttributionConfig(sketch=SketchConfig(k=args.k), window=args.window, normalizer=normalizer,
                               curvature=CurvatureConfig(kind=args.precondition),
                               scoring=ScoringConfig(mode=args.mode, hybrid_fusion=args.fusion))
    started = time.perf_counter()
    session = demo_session(args.demo, config, rows=rows)
    built = time.perf_counter() - started
    facts, accuracy = known_facts(session, load_facts(args.demo), set(session.ids.tolist()))
    results = evaluate(session, facts, args.methods.split(","), limit=args.limit, contrastive=args.contrastive)
    print(f"\n{len(session)} rows indexed in {built:.0f}s; k={args.k} window={args.window} "
          f"precondition={args.precondition} mode={args.mode} normalizer={args.normalizer} "
          f"contrastive={args.contrastive} fusion={args.fusion}; model accuracy (whole completion) {accuracy:.1%}; "
          f"{len(facts)} known facts with gold rows indexed\n")
    print("| method | prompts | recall@1 | recall@10 | recall@100 | MRR | queries |")
    print("|---|---|---|---|---|---|---|")
    for (method, split), r in results.items():
        print(f"| {method} | {split} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | {r['recall@100']:.3f} | "
              f"{r['mrr']:.3f} | {r['queries']} |")


if __name__ == "__main__":
    main()
