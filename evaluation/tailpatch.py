"""TrackStar's tail-patch check: does one more training step on a retrieved row raise the query's probability?

For each query (a prompt and completion) and each method's top-k training rows, take ONE training
step on that single row from the final checkpoint, measure the increase of the completion's
log-probability, restore the weights bit for bit, and average over the k rows. A method whose rows
raise the query more than random rows do has found examples that *teach* the model the answer
(influence, docs/EVALUATION.md §0), which fact-tracing recall cannot show.

The step is plain SGD at the final learning rate of training, with training's gradient clipping
(‖g‖ ≤ 1, as the demo and Pythia clip), on the row's mean token loss (a batch of one). Why not
AdamW with the saved moments (``adam_state.safetensors``)? Its update is dominated by the stored
momentum β1·m, the same for every row, plus weight decay, so the measured increase would be mostly a
drift shared by all rows and the example's own effect a small remainder; TrackStar also uses a plain
step at the final learning rate. And never a fresh Adam (docs/EVALUATION.md §3): its first step moves every
weight by lr·sign(g) whatever the row.

Every distinct row is stepped on once; the queries that selected it are measured in one batch.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attribution.ascent import LossMeter, Probe, restored
from attribution.batching import TokenBatch, backward_summed_nll, training_batch
from attribution.errors import ConfigError
from attribution.retrievers import Method, Query
from attribution.session import AttributionSession
from evaluation.ablation_stats import bootstrap_ci, compare
from evaluation.report_files import write_report_files
from evaluation.schedules import learning_rate_after
from evaluation.selections import TAILPATCH_SELECTIONS, Selection
from indexer.groundtruth import Fact
from indexer.megatron import MegatronDataset

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
METHODS = TAILPATCH_SELECTIONS
"""The ablation's selections but ``bottom`` and ``given``; ``oracle``: the query's gold rows (rows stating
the fact whole), where ground truth exists."""
RETRIEVED = (Method.GRADIENT, Method.BM25, Method.EMBEDDING, Method.UNLEARNING)
"""Selections that are a retriever's top k as it stands."""


@dataclass(frozen=True)
class TailPatchSettings:
    lr: float
    """Learning rate of the single SGD step (default: the final learning rate of training)."""
    k: int = 10
    """Rows per method and query; the increase is averaged over them."""
    methods: tuple[Selection, ...] = METHODS
    random_draws: int = 3
    """Random selections of k rows per query (the random baseline averages over all of them)."""
    max_grad_norm: float | None = 1.0
    """Clip the row's gradient to this norm before the step, as training did; None: no clipping."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ConfigError(f"k must be positive, got {self.k}")
        if self.lr <= 0 or (self.max_grad_norm is not None and self.max_grad_norm <= 0):
            raise ConfigError(f"the learning rate and max_grad_norm must be positive, got {self.lr}, "
                              f"{self.max_grad_norm}")
        if self.random_draws < 1:
            raise ConfigError(f"random_draws must be at least 1, got {self.random_draws}")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ConfigError(f"unknown or no tail-patch methods {unknown}; choose from {[m.value for m in METHODS]}")
        object.__setattr__(self, "methods", tuple(Selection(m) for m in self.methods))


def final_learning_rate(model_dir: Path, revision: str | None = None) -> float:
    """The learning rate of the step after ``revision`` (None: the last step) from the demo's ``training.json``."""
    if not (Path(model_dir) / "training.json").is_file():
        raise ConfigError(f"{model_dir} has no training.json (not a demo model): give the learning rate, --lr")
    try:
        return learning_rate_after(str(model_dir), revision)
    except ConfigError as err:
        raise ConfigError(f"{err}; give the learning rate, --lr") from err


def select_rows(session: AttributionSession, query: Fact, settings: TailPatchSettings,
                index: int) -> dict[Selection, list[list[int]]]:
    """method → list of draws, each a list of row positions (one draw except for ``random``)."""
    if settings.k > len(session):
        raise ConfigError(f"k={settings.k} is larger than the index ({len(session)} examples)")
    prompt, completion = query.prompt, query.completion
    controls = [(r.prompt, r.completion) for r in query.related]
    contrastive = Selection.GRADIENT_CONTRASTIVE
    chosen: dict[Selection, list[list[int]]] = {}
    for method in settings.methods:
        if method in RETRIEVED or (method == contrastive and controls):
            retriever = session.retriever(Method.GRADIENT if method == contrastive else Method(method))
            ask = Query(prompt, completion, controls if method == contrastive else [])
            chosen[method] = [[hit.row for hit in retriever.search(ask, settings.k)]]
        elif method == Selection.ORACLE:
            position = {int(i): p for p, i in enumerate(session.ids)}
            gold = sorted(position[g] for g in query.gold_rows if g in position)
            if gold:
                chosen[method] = [random.Random(settings.seed).sample(gold, min(settings.k, len(gold)))]
        elif method == Selection.RANDOM:
            rng = random.Random(settings.seed * 1_000_003 + index)
            chosen[method] = [rng.sample(range(len(session)), settings.k) for _ in range(settings.random_draws)]
    return chosen


def row_tokens(session: AttributionSession, positions: Sequence[int]) -> dict[int, list[int]]:
    """Token ids of training rows: read from the index's Megatron data when it has some (exactly the
    tokens trained on), else re-tokenized from the stored text."""
    data = session.manifest.config.data if session.manifest is not None else ""
    limit = session.encoder.max_length + 1
    if data and Path(data + ".idx").is_file():
        dataset = MegatronDataset(data)
        return {p: dataset[int(session.ids[p])].astype("int64").tolist()[:limit] for p in positions}
    tokenizer = session.encoder.tokenizer
    return {p: tokenizer.encode(session.texts[p], add_special_tokens=False)[:limit] for p in positions}


def sgd_step(model: nn.Module, batch: TokenBatch, lr: float, max_grad_norm: float | None) -> None:
    """θ ← θ − lr · clip(∇θ mean token loss of the batch): one plain training step, in place."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    backward_summed_nll(model, batch)  # the chunked head: B × T × V logits never exist at once
    count = float(batch.loss_mask[:, 1:].sum())
    grads = [torch.zeros_like(p) if p.grad is None else p.grad / count for p in params]
    for p, grad in zip(params, saved, strict=True):
        p.grad = grad
    scale = 1.0
    if max_grad_norm is not None:  # torch.nn.utils.clip_grad_norm_'s rule
        total = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        scale = min(1.0, max_grad_norm / (total + 1e-6))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(g.to(p.dtype), alpha=-lr * scale)


class TailPatcher:
    """Steps on rows of one model and measures the queries' completion log-probabilities, restoring after each."""

    def __init__(self, session: AttributionSession, queries: Sequence[Fact], settings: TailPatchSettings) -> None:
        self.model = session.encoder.checkpoints[-1].model
        self.settings = settings
        self.meter = LossMeter(self.model, session.encoder.tokenizer, session.encoder.max_length)
        self.probes = [Probe(q.prompt, q.completion) for q in queries]
        self._before: dict[tuple[int, ...], torch.Tensor] = {}

    def logprobs(self, which: tuple[int, ...]) -> torch.Tensor:
        """Summed completion log-probabilities of the queries ``which``, measured in one batch."""
        return -self.meter.probe_losses(self.meter.probe_batch([self.probes[q] for q in which]))

    def increases(self, row: list[int], which: tuple[int, ...]) -> list[float]:
        """Log-probability increase of each query in ``which`` after one step on ``row``; weights restored."""
        if which not in self._before:  # same batch before and after, so padding cannot differ
            self._before[which] = self.logprobs(which)
        with restored(self.model):
            sgd_step(self.model, training_batch([row]), self.settings.lr, self.settings.max_grad_norm)
            after = self.logprobs(which)
        return (after - self._before[which]).tolist()

    def run(self, rows: dict[int, list[int]], needs: dict[int, set[int]],
            progress: Callable[[int], None] | None = None) -> dict[tuple[int, int], float]:
        """(row position, query) → increase, for every row and the queries that selected it."""
        flags = [p.requires_grad for p in self.model.parameters()]
        for p in self.model.parameters():
            p.requires_grad_(True)
        out = {}
        try:
            for done, position in enumerate(sorted(needs), start=1):
                which = tuple(sorted(needs[position]))
                out.update({(position, q): d for q, d in zip(which, self.increases(rows[position], which),
                                                              strict=True)})
                if progress:
                    progress(done)
        finally:
            for p, flag in zip(self.model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
        return out


def run_tailpatch(session: AttributionSession, queries: list[Fact], settings: TailPatchSettings,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Select rows for every query and method, tail-patch each distinct row once, summarize."""
    if not queries:
        raise ConfigError("no tail-patch queries")
    started = time.perf_counter()
    selections = [select_rows(session, q, settings, i) for i, q in enumerate(queries)]
    needs: dict[int, set[int]] = defaultdict(set)
    for q, chosen in enumerate(selections):
        for draws in chosen.values():
            for position in (p for draw in draws for p in draw):
                needs[position].add(q)
    selected = time.perf_counter()
    patcher = TailPatcher(session, queries, settings)
    increase = patcher.run(row_tokens(session, list(needs)), needs,
                           progress=(lambda done: progress(done, len(needs))) if progress else None)
    patched = time.perf_counter()
    per_query = [{"prompt": q.prompt, "completion": q.completion,
                  "methods": {m: query_result(session, draws, increase, i) for m, draws in chosen.items()}}
                 for i, (q, chosen) in enumerate(zip(queries, selections, strict=True))]
    timing = {"select_s": round(selected - started, 1), "patch_s": round(patched - selected, 1),
              "steps": len(needs), "ms_per_step": round(1000 * (patched - selected) / max(1, len(needs)), 1)}
    return {"schema_version": SCHEMA_VERSION, "config": {**asdict(settings), "queries": len(queries)},
            "examples": len(session), "timing": timing, "queries": per_query,
            "summary": summarize(per_query, settings.methods)}


def query_result(session: AttributionSession, draws: list[list[int]], increase: dict, query: int) -> dict:
    """One method's rows (example ids) for a query and their increase: mean over rows, then over draws."""
    per_draw = [float(np.mean([increase[(p, query)] for p in draw])) for draw in draws]
    return {"rows": [[int(session.ids[p]) for p in draw] for draw in draws], "increase": float(np.mean(per_draw))}


def summarize(per_query: list[dict], methods: Sequence[str]) -> dict:
    """Per method: mean increase over queries with a bootstrap 95 % CI; vs random: ratio, win rate, Wilcoxon."""
    table = {(m, 0.0): {i: q["methods"][m]["increase"] for i, q in enumerate(per_query) if m in q["methods"]}
             for m in methods}
    randoms = table.get((Selection.RANDOM, 0.0), {})
    random_mean = float(np.mean(list(randoms.values()))) if randoms else None
    summary = {}
    for method in methods:
        values = np.array(list(table[(method, 0.0)].values()), dtype=float)
        if not len(values):
            continue
        entry = {"queries": len(values), "mean": float(values.mean()), "ci95": bootstrap_ci(values)}
        if method != Selection.RANDOM and random_mean is not None:
            excess = np.array([v - randoms[q] for q, v in table[(method, 0.0)].items() if q in randoms])
            entry["excess_over_random"] = {"mean": float(excess.mean()), "ci95": bootstrap_ci(excess)}
            # a ratio to a mean that is not positive says nothing: left undefined
            entry["ratio_vs_random"] = entry["mean"] / random_mean if random_mean > 0 else float("nan")
            entry["vs"] = {b: v for b, v in compare(table, method, 0.0).items() if b != method}
        summary[method] = entry
    return summary


def fmt(value: float | None) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.3g}"


def interval(entry: dict) -> str:
    return f"{fmt(entry['mean'])} [{fmt(entry['ci95'][0])}, {fmt(entry['ci95'][1])}]"


def markdown(report: dict) -> str:
    """The summary as a markdown table."""
    config, timing = report["config"], report["timing"]
    lines = [f"# Tail-patch (schema {report['schema_version']})", "",
             f"{config['queries']} queries, {report['examples']} indexed examples, k={config['k']}, one SGD step "
             f"at lr={config['lr']:.3g} (gradient clipped to {config['max_grad_norm']}), {config['random_draws']} "
             f"random draws per query; {timing['steps']} distinct rows stepped on in {timing['patch_s']} s "
             f"({timing['ms_per_step']} ms each), selection {timing['select_s']} s.", "",
             "Increase of the completion's summed log-probability (nats) after one step on a retrieved row, "
             "averaged over the k rows, then over queries; − random: paired difference with the random rows; × random: "
             "ratio of means (— unless random's mean is positive); p: paired one-sided Wilcoxon over queries, "
             "Holm-corrected over the baselines compared.", "",
             "| method | queries | mean increase [95% CI] | − random [95% CI] | × random | win rate vs random | "
             "p vs random (Holm) |", "|---|---|---|---|---|---|---|"]
    for method, entry in report["summary"].items():
        versus = entry.get("vs", {}).get(Selection.RANDOM)
        excess = entry.get("excess_over_random")
        lines.append(f"| {method} | {entry['queries']} | {interval(entry)} | {interval(excess) if excess else '—'} | "
                     f"{fmt(entry.get('ratio_vs_random'))} | {fmt(versus['win_rate']) if versus else '—'} | "
                     f"{fmt(versus['p_holm']) if versus else '—'} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    """``OUT/tailpatch.json`` and ``OUT/tailpatch.md``."""
    write_report_files(report, out, "tailpatch", markdown)
