"""Linear datamodeling score (docs/EVALUATION.md §2) on the embedded demo.

Retrain the demo model on M random halves of its training rows (``evaluation.retrain``), then,
for each query z (a planted fact the full model gets right, phrased as in training) and subset
S_j: f_j(z) = the completion's summed NLL under model j, g_j(z) = Σ_{i∈S_j} score_i(z) over all
training rows (``evaluation.row_scores``), and LDS(z) = Spearman(f_j, −g_j) over j, averaged
over queries with a bootstrap 95 % interval; a second table sums only each method's ``top_k``
highest-scored rows (``lds_stats.top_k_only``: the rows a user is shown). Methods: ``gradient``
(the index's sketches), ``bm25``, ``embedding``, ``oracle`` (1 on the rows that state the fact
whole, the demo's ground truth, 0 elsewhere: what a perfect fact tracer would score) and ``shuffled`` (gradient scores
randomly permuted across rows: a control whose LDS must be ≈ 0). Each method also gets a
permutation p-value against ``shuffles`` row permutations of its own scores.

Cost on the 2-core development machine (quiet), default demo (19,200 rows; a half is 600 steps):
one subset model trains in 172-182 s alone with 2 threads, or in ~200 s with one thread while a
second trains beside it (``workers``, default: one per usable core), so the default 20 subsets took
29 min in ``make bench`` (2026-12-01). Scoring every row once (cached, so reruns and extra subsets
skip it) adds 230 s for gradient sketches and 607 s for sentence embeddings (BM25: 1 s): 49 min in
all. On the shared machine all of this ran 5-17× slower.
Published LM figures use 50-100 subsets; a handful only checks the pipeline.

Outputs: ``OUT/lds.json`` (config, per-method summaries and per-query values, subset losses,
timings), ``OUT/lds.md`` (a table), ``OUT/scores/`` (cached row scores), ``OUT/subsets/NNN/`` (models).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

from attribution.batching import collate, query_tokens, token_nll
from attribution.errors import ConfigError
from attribution.models import load_model, load_tokenizer
from attribution.session import AttributionSession
from evaluation.lds_stats import lds_per_query, permutation_null, shuffle_rows, summarize, top_k_only
from evaluation.report_files import write_report_files
from evaluation.retrain import demo_config, retrain_subsets, subset_dir, subset_masks, training_rows, usable_cores
from evaluation.row_scores import all_row_scores
from evaluation.training import completion_hits
from indexer.groundtruth import Fact, load_facts
from indexer.store import open_index

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2  # 2: methods_top_k
DEFAULT_SUBSETS = 20


class LDSMethod(StrEnum):
    """The scores LDS is measured for, in the order the report lists them (and its seeds are drawn)."""

    GRADIENT = "gradient"
    BM25 = "bm25"
    EMBEDDING = "embedding"
    ORACLE = "oracle"
    """1 on the rows that state the fact whole, 0 elsewhere."""
    SHUFFLED = "shuffled"
    """Gradient scores permuted across rows: the control."""


@dataclass(frozen=True)
class LDSSettings:
    subsets: int = DEFAULT_SUBSETS
    """Models retrained on random halves of the training rows (M)."""
    queries: int = 40
    """At most this many planted facts, in the order of facts.jsonl."""
    all_facts: bool = False
    """Also use facts the full model gets wrong (by default only those it completes right, teacher-forced)."""
    seed: int = 0
    """Draws the subsets, the shuffled control, the null and the bootstrap."""
    workers: int = field(default_factory=usable_cores)
    """Processes that retrain subsets at once (one torch thread each when more than one)."""
    shuffles: int = 500
    """Row permutations of each method's scores for its permutation p-value."""
    bootstrap: int = 2000
    top_k: int = 100
    """The top-k table sums only each method's this many highest-scored rows per query."""

    def __post_init__(self) -> None:
        for name in ("subsets", "queries", "workers", "shuffles", "bootstrap", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.subsets < 3:
            raise ConfigError(f"a Spearman correlation over subsets needs at least 3 subsets, got {self.subsets}")


def open_demo_index(demo_dir: Path, index: Path) -> AttributionSession:
    """The demo's index, refused when missing or built on another model."""
    if not (index / "manifest.json").is_file() and not (index / "current" / "manifest.json").is_file():
        raise ConfigError(f"no index at {index}: LDS scores rows with the index's gradient settings; build one "
                          f"with 'headwater index build --model {demo_dir / 'model'} --data "
                          f"{demo_dir / 'data' / 'document'} --out {index} --k 8 --window 16' ('make demo' builds "
                          "one for steps 0:400), or pass --index")
    session = open_index(index)
    model = Path(session.manifest.config.model)  # as given at build time: relative to the working directory
    if model.resolve() != (demo_dir / "model").resolve():
        raise ConfigError(f"{index} was built on {model}, not on the demo's model {demo_dir / 'model'}; "
                          "pass the demo's own index with --index")
    return session


def select_queries(demo_dir: Path, model: torch.nn.Module, tokenizer, limit: int, all_facts: bool) -> list[Fact]:
    """Training-phrased planted facts the full model completes right (every one with ``all_facts``), at most
    ``limit``, in the order of facts.jsonl."""
    chosen = []
    for fact in load_facts(demo_dir):
        if all_facts or completion_hits(model, tokenizer, fact.prompt, fact.completion)[1]:
            chosen.append(fact)
        if len(chosen) == limit:
            break
    if len(chosen) < 2:
        raise ConfigError(f"only {len(chosen)} planted facts are completed right by the demo's model; LDS needs "
                          "at least 2 queries: use --all-facts")
    return chosen


@torch.no_grad()
def completion_losses(model: torch.nn.Module, tokenizer, queries: list[Fact]) -> np.ndarray:
    """f(z): the summed NLL of each query's completion tokens given its prompt."""
    max_length = int(model.config.max_position_embeddings)
    pairs = [query_tokens(tokenizer.encode(z.prompt, add_special_tokens=False),
                          tokenizer.encode(z.completion, add_special_tokens=False), max_length) for z in queries]
    batch = collate([ids for ids, _ in pairs], [mask for _, mask in pairs])
    return (token_nll(model, batch) * batch.loss_mask[:, 1:]).sum(1).double().numpy()


def oracle_scores(queries: list[Fact], n_rows: int) -> np.ndarray:
    """1 on the rows that state each query's fact whole (the demo's ground truth), 0 elsewhere."""
    scores = np.zeros((len(queries), n_rows), dtype=np.float32)
    for q, z in enumerate(queries):
        scores[q, z.gold_rows] = 1.0
    return scores


def method_summaries(losses: np.ndarray, scores: dict[str, np.ndarray], masks: np.ndarray,
                     settings: LDSSettings, top_k: int | None = None) -> dict:
    """Per-method LDS summaries (``scores`` holds every ``LDSMethod``). With ``top_k``, each method's
    scores are first cut to its ``top_k`` highest rows per query."""
    summaries = {}
    for m, method in enumerate(LDSMethod):
        kept = scores[method] if top_k is None else top_k_only(scores[method], top_k)
        values = lds_per_query(losses, kept, masks)
        null = permutation_null(losses, kept, masks, settings.shuffles, np.random.default_rng([settings.seed, 2, m]))
        summaries[method] = summarize(values, null, settings.bootstrap, np.random.default_rng([settings.seed, 3, m]))
    return summaries


def run_lds(demo_dir: Path, index: Path, out: Path, settings: LDSSettings,
            on_subset: Callable[[int], None] | None = None) -> dict:
    """Scores, subset models, losses and LDS per method; writes ``lds.json`` and ``lds.md`` and returns the report."""
    config = demo_config(demo_dir)
    session = open_demo_index(demo_dir, index)
    tokenizer = load_tokenizer(demo_dir / "tokenizer")
    full = load_model(demo_dir / "model")
    queries = select_queries(demo_dir, full, tokenizer, settings.queries, settings.all_facts)
    log.info("%d queries (%s)", len(queries), "all facts" if settings.all_facts else "facts the model gets right")
    out.mkdir(parents=True, exist_ok=True)
    scores, score_seconds = all_row_scores(demo_dir, session, queries, out)
    markers = retrain_subsets(demo_dir, out, settings.subsets, settings.seed, settings.workers, on_subset)
    losses = np.stack([completion_losses(load_model(subset_dir(out, j)), tokenizer, queries)
                       for j in range(settings.subsets)], axis=1)  # (queries, subsets)
    n_rows = training_rows(demo_dir)
    masks = subset_masks(n_rows, settings.subsets, settings.seed)
    full_losses = completion_losses(full, tokenizer, queries)
    scores[LDSMethod.ORACLE] = oracle_scores(queries, n_rows)
    scores[LDSMethod.SHUFFLED] = shuffle_rows(scores[LDSMethod.GRADIENT],
                                              np.random.default_rng([settings.seed, 1]))  # the control
    report = {
        "schema_version": SCHEMA_VERSION,
        "config": {**asdict(settings), "demo": str(demo_dir), "index": str(index),
                   "index_config": session.manifest.config.to_json(), "training_rows": n_rows,
                   "subset_rows": n_rows // 2, "subset_steps": markers[0]["steps"], "full_steps": config.steps,
                   "schedule": "each subset runs the demo's warm-up + cosine schedule over its own step count"},
        "methods": method_summaries(losses, scores, masks, settings),
        "methods_top_k": method_summaries(losses, scores, masks, settings, top_k=settings.top_k),
        "queries": [{"fact_id": z.fact_id, "prompt": z.prompt, "completion": z.completion,
                     "gold_rows": len(z.gold_rows), "full_model_loss": float(f), "subset_losses": row.tolist()}
                    for z, f, row in zip(queries, full_losses, losses, strict=True)],
        "timings": {"score_seconds": score_seconds, "subset_seconds": [m["seconds"] for m in markers]},
    }
    write_report_files(report, out, "lds", markdown)
    return report


def markdown(report: dict) -> str:
    """The per-method table (all rows, then the top-k rows) with a one-paragraph legend."""
    c = report["config"]
    which = "all planted facts" if c["all_facts"] else "planted facts the model gets right"
    k = c["top_k"]
    lines = [
        "# Linear datamodeling score (LDS)", "",
        f"{c['subsets']} models retrained on random halves ({c['subset_rows']} of {c['training_rows']} rows, "
        f"{c['subset_steps']} steps); {len(report['queries'])} queries ({which}, phrased as in training). "
        "LDS(z) = Spearman over subsets of the completion loss and −Σ scores of the subset's rows; mean over "
        f"queries, bootstrap 95 % interval; p: share of {c['shuffles']} row permutations of the method's own "
        "scores with a mean LDS at least as high (null sd: their spread). Random ≈ 0; published LM figures: "
        "TrackStar-style 0.18-0.28, EK-FAC 0.26-0.47 (50-100 subsets). *All rows* sums every row's score, the "
        f"standard definition; *top {k}* sums only each method's {k} highest-scored rows per query (the rows a "
        "user is shown), so thousands of small scores on rows that do not matter cannot drown the few that do.", "",
        f"| method | all rows: LDS | 95 % CI | null sd | p | top {k}: LDS | 95 % CI | null sd | p | queries |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    top = report.get("methods_top_k", {})
    for method, s in report["methods"].items():
        cells = [_cells(s)] + ([_cells(top[method])] if method in top else [])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {s['queries']} |")
    return "\n".join(lines) + "\n"


def _cells(s: dict) -> str:
    lo, hi = s["ci95"]
    return f"{s['mean']:.3f} | [{lo:.3f}, {hi:.3f}] | {s['null_sd']:.3f} | {s['p_value']:.3f}"
