"""Fact tracing for every estimator on a built demo: recall@k and MRR against planted facts, in one table.

    python -m bench.quality --demo demo-data --steps 0:150 [--k 8] [--window 16] [--limit 60]
    python -m bench.quality --demo second-data --steps 0:150 --estimators gradient/block,unlearning,bm25

An estimator is a retriever with its settings:

- ``gradient/KIND``: gradient sketches, cosine, with curvature KIND (none, inverse_sqrt, block, kfac, ekfac,
  kfac_whitened, inverse); ``gradient-ip/KIND``: the same scored by inner product (influence, no unit norm);
- ``tracin/KIND``: TracIn-CP, the sum over ``--revisions`` (each with its own curvature KIND), weighted by the
  learning rate after each checkpoint, cosine; ``tracin-ip/KIND`` by inner product (the names' grammar is
  :mod:`evaluation.estimator_names`, shared with field-protocol LDS; ``--k`` sets every estimator's projection);
- ``unlearning`` (the reverse direction, re-ranking the union of the other retrievers' candidates),
  ``hybrid`` (both over ``gradient/--base``), ``bm25`` and ``embedding``.

The rows are sketched once (with K-FAC's Kronecker statistics); every curvature kind is fitted on those same
sketches (kfac_whitened: a second sketch pass with its whitened projections; TracIn-CP: one pass per
revision). The metrics are those of ``headwater eval facts`` (evaluation/facts.py): only facts the model gets
right (whole completion, teacher-forced top-1) are queried. Prints a markdown table with seconds per query and
the curvature's fit seconds and stored bytes (TracIn-CP's: 0, not counted per revision; other methods: –);
not a test.
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import transformers

from attribution.config import AttributionConfig, CurvatureConfig, UnlearningConfig
from attribution.curvature import Curvature
from attribution.embeddings import TextEmbedder
from attribution.encoder import GradientEncoder, load_checkpoints
from attribution.errors import ConfigError
from attribution.kronecker import Fisher, KroneckerStatistics
from attribution.models import load_tokenizer
from attribution.preconditioner import PreconditionMode
from attribution.retrievers import BM25Retriever, EmbeddingRetriever, GradientRetriever, Method, Retriever
from attribution.scoring import ScoreMode
from attribution.session import AttributionSession, fitted_vectors, sketch_all
from attribution.sketch import SketchConfig
from attribution.vectors import FaissStore
from evaluation.demo_rows import demo_examples, load_layout
from evaluation.estimator_names import GRAMMAR, is_gradient_name, parse_gradient_name
from evaluation.facts import Prompts, evaluate, known_facts
from evaluation.schedules import revision_weights
from indexer.groundtruth import Fact, load_facts
from indexer.training_rows import parse_range, rows_for_steps

__all__ = ["DEFAULT_ESTIMATORS", "Estimator", "evaluate", "known_facts", "main", "parse_estimator"]
# evaluate and known_facts live in evaluation.facts (re-exported for older scripts)

DEFAULT_ESTIMATORS = ("gradient/none,gradient/inverse_sqrt,gradient/block,gradient/kfac,gradient/ekfac,"
                      "gradient/kfac_whitened,gradient/ekfac_basis,gradient-ip/block,gradient-ip/ekfac,"
                      "gradient-ip/ekfac_basis,tracin/block,unlearning,hybrid,bm25,embedding")


@dataclass(frozen=True)
class Estimator:
    """One row of the table: a retriever method and, for the gradient family, its curvature and scoring."""

    name: str
    method: Method
    kind: PreconditionMode | None = None
    mode: ScoreMode = ScoreMode.COSINE
    tracin: bool = False


def parse_estimator(name: str) -> Estimator:
    """``family/KIND`` for the gradient family (:mod:`evaluation.estimator_names`, no ``@`` options: ``--k`` sets the
    projection), a method's name otherwise (a clear error names the choices)."""
    name = name.strip()
    if is_gradient_name(name):
        try:
            parsed = parse_gradient_name(name, options=False)
        except ConfigError as error:
            raise SystemExit(str(error)) from None
        return Estimator(name, Method.GRADIENT, parsed.kind, parsed.mode, tracin=parsed.tracin)
    if "/" in name or name not in {m.value for m in Method} or name == Method.GRADIENT.value:
        raise SystemExit(f"unknown estimator {name!r}: {GRAMMAR} or one of "
                         f"{[m.value for m in Method if m is not Method.GRADIENT]}")
    return Estimator(name, Method(name))


class Bench:
    """The demo's rows sketched once, and a session per estimator over them (lexical retrievers shared)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        layout = load_layout(args.demo)
        rows = None
        if args.steps:
            start, stop = parse_range(args.steps, "steps")
            rows = rows_for_steps(layout["num_rows"], layout["batch_size"], start, stop)
        self.tokenizer = load_tokenizer(args.demo / "tokenizer")
        examples = list(demo_examples(args.demo, rows, self.tokenizer))
        self.rows = [e.token_ids.tolist() for e in examples]
        self.metadata = [e.metadata for e in examples]
        self.texts = [e.text or "" for e in examples]
        self.ids = np.asarray([e.example_id for e in examples])
        self.config = AttributionConfig(sketch=SketchConfig(k=args.k), window=args.window,
                                        unlearning=UnlearningConfig())
        self.checkpoints = load_checkpoints(args.demo / "model", (None,), self.config.sketch)
        self.statistics = KroneckerStatistics(args.fisher, CurvatureConfig().factor_limit)
        started = time.perf_counter()
        self.raw = sketch_all(GradientEncoder(self.checkpoints, self.tokenizer), self.rows, args.window,
                              statistics=[self.statistics])
        self.sketch_seconds = time.perf_counter() - started
        self._base: AttributionSession | None = None
        self.builders = {Method.BM25: functools.cache(lambda: self._lexical(Method.BM25)),
                         Method.EMBEDDING: functools.cache(lambda: self._lexical(Method.EMBEDDING))}

    def _lexical(self, method: Method) -> Retriever:
        if method is Method.BM25:
            return BM25Retriever(self.texts, self.metadata)
        embedder = TextEmbedder(None)
        return EmbeddingRetriever(embedder, FaissStore.index_only(embedder.embed(self.texts)), self.metadata)

    def curvature(self, kind: PreconditionMode) -> CurvatureConfig:
        return CurvatureConfig(kind=kind, damping=self.args.damping, fisher=self.args.fisher,
                               sample_rows=self.args.sample_rows)

    def session(self, estimator: Estimator) -> tuple[AttributionSession, Curvature | None]:
        """The session answering ``estimator`` (its gradient retriever built for its kind and mode; the other
        methods share one session over ``gradient/--base``)."""
        if estimator.kind is None:
            if self._base is None:  # its own checkpoints: later estimators refit the shared ones
                checkpoints = load_checkpoints(self.args.demo / "model", (None,), self.config.sketch)
                encoder, vectors = fitted_vectors(checkpoints, self.tokenizer, self.rows, self.raw,
                                                  self.curvature(PreconditionMode(self.args.base)),
                                                  window=self.args.window, statistics=[self.statistics])
                self._base = self._session(encoder, vectors)
                for method in self.builders:  # built before the clock starts
                    self._base.retriever(method)
            return self._base, None
        if estimator.tracin:
            revisions = tuple(None if r in {"", "final", "None"} else r for r in self.args.revisions.split(","))
            weights = revision_weights("lr", str(self.args.demo / "model"), revisions)
            checkpoints = load_checkpoints(self.args.demo / "model", revisions, self.config.sketch)
            raw = sketch_all(GradientEncoder(checkpoints, self.tokenizer), self.rows, self.args.window)
            encoder, vectors = fitted_vectors(checkpoints, self.tokenizer, self.rows, raw,
                                              self.curvature(estimator.kind), estimator.mode, self.args.window,
                                              weights=weights)
            return self._session(encoder, vectors), None
        encoder, vectors = fitted_vectors(self.checkpoints, self.tokenizer, self.rows, self.raw,
                                          self.curvature(estimator.kind), estimator.mode, self.args.window,
                                          [self.statistics])
        return self._session(encoder, vectors), self.checkpoints[0].preconditioner

    def _session(self, encoder: GradientEncoder, vectors: np.ndarray) -> AttributionSession:
        gradient = GradientRetriever(encoder, FaissStore(vectors), self.metadata, self.args.window)
        builders: dict[Method, Callable[[], Retriever]] = dict(self.builders)
        return AttributionSession(encoder, self.ids, self.metadata, gradient, self.texts, builders, self.config)


def stored_bytes(curvature: Curvature | None) -> int:
    """Bytes of the curvature's safetensors file (0 for none)."""
    if curvature is None:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.safetensors"
        curvature.save(path)
        return path.stat().st_size


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--steps", default="0:150", help="step range A:B of rows to index ('' for all)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--window", type=int, default=16, help="sketch window in tokens (0: whole rows)")
    parser.add_argument("--estimators", default=DEFAULT_ESTIMATORS, help="comma-separated (see the docstring)")
    parser.add_argument("--base", default=PreconditionMode.INVERSE_SQRT.value,
                        help="curvature kind of the gradient retriever under unlearning and hybrid")
    parser.add_argument("--revisions", default="step128,step256,step512,final",
                        help="checkpoints of tracin/KIND ('final': the final model)")
    parser.add_argument("--damping", type=float, default=None, help="default: each kind's own")
    parser.add_argument("--fisher", default=Fisher.EMPIRICAL.value, choices=[f.value for f in Fisher])
    parser.add_argument("--sample-rows", type=int, default=CurvatureConfig().sample_rows)
    parser.add_argument("--limit", type=int, default=60, help="at most this many facts")
    args = parser.parse_args()
    args.window = args.window or None
    args.parsed = [parse_estimator(e) for e in args.estimators.split(",") if e.strip()]
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    bench = Bench(args)
    facts: list[Fact] | None = None
    print(f"\n{args.demo}: {len(bench.rows)} rows (steps {args.steps or 'all'}), k={args.k} window={args.window} "
          f"fisher={args.fisher}; sketch pass {bench.sketch_seconds:.0f}s with Kronecker statistics; "
          f"unlearning/hybrid over gradient/{args.base}; tracin over {args.revisions}\n")
    header = False
    for estimator in args.parsed:
        session, curvature = bench.session(estimator)
        if facts is None:
            facts, accuracy = known_facts(session, load_facts(args.demo), set(bench.ids.tolist()))
            print(f"model accuracy (whole completion) {accuracy:.1%}; {len(facts)} known facts with gold rows; "
                  f"{min(len(facts), args.limit)} queried\n")
        if not header:
            print("| estimator | recall@1 train | recall@10 train | MRR train | recall@10 held-out | MRR held-out | "
                  "s/query | fit s | curvature bytes | queries |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            header = True
        started = time.perf_counter()
        results = evaluate(session, facts, [estimator.method], limit=args.limit)
        train, held = results[(estimator.method, Prompts.TRAIN)], results[(estimator.method, Prompts.HELDOUT)]
        queries = train["queries"] + held["queries"]
        per_query = (time.perf_counter() - started) / max(queries, 1)
        fit, stored = ("–", "–") if estimator.kind is None else (
            f"{curvature.fit_seconds:.2f}" if curvature is not None else "0", f"{stored_bytes(curvature):,}")
        print(f"| {estimator.name} | {train['recall@1']:.3f} | {train['recall@10']:.3f} | {train['mrr']:.3f} | "
              f"{held['recall@10']:.3f} | {held['mrr']:.3f} | {per_query:.3f} | {fit} | {stored} | {queries} |",
              flush=True)


if __name__ == "__main__":
    main()
