"""Fact tracing per curvature kind on the demo, with each kind's fit seconds, stored bytes and query time.

    python -m bench.curvature --demo demo-data --steps 0:150 --k 8 --window 16 --limit 60

Sketches the rows once (gathering K-FAC's Kronecker statistics along the way), then fits every kind on those
same sketches and statistics (kfac_whitened: fitted first on ``--sample-rows`` rows, then the rows sketched again
with whitened projections) and traces the same facts with each, through the gradient retriever only (the
metrics of ``headwater eval facts``: only facts the model gets right are queried). Prints a markdown table;
"fit s" for kfac_whitened includes its statistics pass, not the second sketch pass.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from attribution.config import AttributionConfig, CurvatureConfig
from attribution.curvature import fit_curvature, prefit_curvature, row_sample
from attribution.encoder import GradientEncoder, load_checkpoints
from attribution.kronecker import Fisher, KroneckerStatistics
from attribution.models import load_tokenizer
from attribution.preconditioner import PreconditionMode
from attribution.retrievers import GradientRetriever, Method
from attribution.session import AttributionSession, sketch_all
from attribution.sketch import SketchConfig
from attribution.vectors import FaissStore
from demo.groundtruth import demo_examples, load_facts, load_layout
from evaluation.facts import Prompts, evaluate, known_facts
from indexer.training_rows import parse_range, rows_for_steps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--steps", default="0:150", help="step range A:B of rows to index")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--mode", default="cosine")
    kinds = [m.value for m in PreconditionMode if m is not PreconditionMode.INVERSE]
    parser.add_argument("--kinds", default=",".join(kinds), help="comma-separated curvature kinds")
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--fisher", default=Fisher.EMPIRICAL.value, choices=[f.value for f in Fisher])
    parser.add_argument("--sample-rows", type=int, default=CurvatureConfig().sample_rows)
    parser.add_argument("--limit", type=int, default=None, help="at most this many facts")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    layout = load_layout(args.demo)
    start, stop = parse_range(args.steps, "steps")
    tokenizer = load_tokenizer(args.demo / "tokenizer")
    examples = list(demo_examples(args.demo, rows_for_steps(layout["num_rows"], layout["batch_size"], start, stop),
                                  tokenizer))
    rows = [e.token_ids.tolist() for e in examples]
    config = AttributionConfig(sketch=SketchConfig(k=args.k), window=args.window)
    encoder = GradientEncoder(load_checkpoints(args.demo / "model", (None,), config.sketch), tokenizer, args.mode)
    ckpt = encoder.checkpoints[0]
    started = time.perf_counter()
    plain = sketch_all(encoder, rows[:256], args.window)
    plain_seconds = time.perf_counter() - started
    statistics = KroneckerStatistics(args.fisher, CurvatureConfig().factor_limit)
    started = time.perf_counter()
    raw = sketch_all(encoder, rows, args.window, statistics=[statistics])
    sketch_seconds = time.perf_counter() - started
    del plain
    metadata = [e.metadata for e in examples]
    texts = [e.text or "" for e in examples]
    ids = np.asarray([e.example_id for e in examples])
    facts = None
    print(f"\n{len(rows)} rows (steps {args.steps}), k={args.k} window={args.window} mode={args.mode} "
          f"fisher={args.fisher}; sketch pass {sketch_seconds:.0f}s with Kronecker statistics "
          f"(plain: {plain_seconds * len(rows) / min(256, len(rows)):.0f}s est. from 256 rows)\n")
    print("| curvature | recall@10 train | MRR train | recall@10 held-out | MRR held-out | fit s | bytes | "
          "query s | queries |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        curvature = CurvatureConfig(kind=kind, damping=args.damping, fisher=args.fisher,
                                    sample_rows=args.sample_rows)
        ckpt.preconditioner = prefit_curvature(curvature, ckpt.sketcher, row_sample(rows))
        sketches = raw if ckpt.preconditioner is None else sketch_all(encoder, rows, args.window)  # whitened rows
        ckpt.preconditioner = ckpt.preconditioner or fit_curvature(
            [raw[0]], ckpt.sketcher.dim, curvature, sketcher=ckpt.sketcher, statistics=statistics,
            rows=row_sample(rows))
        stored = stored_bytes(ckpt.preconditioner)
        fit = ckpt.preconditioner.fit_seconds if ckpt.preconditioner else 0.0
        vectors = encoder.prepare_rows(sketches).numpy().astype("float32")
        gradient = GradientRetriever(encoder, FaissStore(vectors), metadata, args.window)
        session = AttributionSession(encoder, ids, metadata, gradient, texts, {}, config)
        if facts is None:
            facts, _ = known_facts(session, load_facts(args.demo), set(ids.tolist()))
        started = time.perf_counter()
        results = evaluate(session, facts, [Method.GRADIENT], limit=args.limit)
        train, held = results[(Method.GRADIENT, Prompts.TRAIN)], results[(Method.GRADIENT, Prompts.HELDOUT)]
        queries = train["queries"] + held["queries"]
        per_query = (time.perf_counter() - started) / max(queries, 1)
        print(f"| {kind} | {train['recall@10']:.3f} | {train['mrr']:.3f} | {held['recall@10']:.3f} | "
              f"{held['mrr']:.3f} | {fit:.2f} | {stored:,} | {per_query:.3f} | {queries} |", flush=True)


def stored_bytes(curvature) -> int:
    """Bytes of the curvature's safetensors file (0 for none)."""
    if curvature is None:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.safetensors"
        curvature.save(path)
        return path.stat().st_size


if __name__ == "__main__":
    main()
