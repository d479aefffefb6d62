"""What a served index holds, for explaining requests and offering choices: its Pile subsets, its training
steps, a default query — a planted fact of the demo that the model gets right — and what an ``unlearning`` query
costs here (one forward pass over a typical row, timed at load, times the rows a query re-scores).

Described once per session (when it is loaded, before it serves) and kept with it: a reload's new session
gets its own description, so what the page offers always matches what is served.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from attribution.batching import position_logits
from attribution.retrievers import Method
from attribution.rows import RowTable
from attribution.session import AttributionSession
from attribution.unlearning import CANDIDATE_SOURCES, row_losses
from indexer.groundtruth import Fact, index_facts

log = logging.getLogger(__name__)
MAX_FACTS = 64
"""Planted facts tried, in order, for the default query (one forward pass each)."""


@dataclass(frozen=True)
class DefaultQuery:
    """A planted fact to show first: the first whose completion the model's greedy decoding reproduces, else the
    one it gets furthest into (``model_correct`` False)."""

    prompt: str
    completion: str
    fact_id: str | None
    """The planted fact's id (None: drawn from an indexed row of an index that has no planted facts)."""
    model_correct: bool
    correct_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class UnlearningCost:
    """What an ``unlearning`` query costs on this index, this model and this device: forward passes over the rows it
    re-scores, and two short ascents (the target's and the correction probes')."""

    rows: int
    """Rows a query re-scores at the default settings, at most: every row of a small index, else the candidate pool
    (the three retrievers' candidates overlap, so often fewer)."""
    row_tokens: int
    """Tokens of a typical (mean) indexed row, cut to the model's context as scoring cuts it."""
    row_seconds: float
    """One forward pass over a row of ``row_tokens`` tokens in a batch shaped as a query's, timed when the index was
    loaded (inf: it failed)."""
    ascent_seconds: float = 0.0
    """One ascent (its steps' forward and backward passes on short probes), timed at load."""
    read_seconds: float = 0.0
    """Reading and tokenizing one row's text (a query's first touch of a row), timed at load."""

    COLD_PASSES = 3
    """Forward passes per row of a query over rows not cached yet: the reference losses, the probe ascent's, the
    target ascent's (a cached row needs only the last)."""

    def seconds(self, row_seconds: float | None = None) -> float:
        """Estimated seconds of a query over rows whose losses are not cached yet (later queries on them: about a
        third), with ``row_seconds`` measured elsewhere (real queries) in place of the load-time timing."""
        per_row = self.row_seconds if row_seconds is None else row_seconds
        return self.rows * (self.COLD_PASSES * per_row + self.read_seconds) + 2 * self.ascent_seconds


class ObservedCost:
    """Seconds per row and forward pass that real ``unlearning`` queries took here (their target pass: every query
    runs it over all its rows, cached or not), the last ``KEEP``; thread-safe."""

    KEEP = 50

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._row_seconds: list[float] = []

    def add(self, pass_seconds: float, rows: int) -> None:
        if rows <= 0 or not pass_seconds >= 0:
            return
        with self._lock:
            self._row_seconds = [*self._row_seconds[-(self.KEEP - 1):], pass_seconds / rows]

    @property
    def queries(self) -> int:
        with self._lock:
            return len(self._row_seconds)

    def row_seconds(self) -> float | None:
        """Median seconds per row and pass of the queries seen (None before the first)."""
        with self._lock:
            return statistics.median(self._row_seconds) if self._row_seconds else None


@dataclass(frozen=True)
class Catalog:
    subsets: dict[str, int]
    """Pile subset → number of rows holding some of it (a packed row counts under each subset it holds)."""
    steps: tuple[int, int] | None
    """First and last training step of the indexed rows (None: the rows have no steps)."""
    default_query: DefaultQuery | None
    unlearning: UnlearningCost
    observed: ObservedCost = field(default_factory=ObservedCost, compare=False)
    """What real ``unlearning`` queries cost here, as they run (``auto`` prefers it to the load-time timing)."""


_described: weakref.WeakKeyDictionary[AttributionSession, Catalog] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def describe(session: AttributionSession, model_lock: AbstractContextManager | None = None) -> Catalog:
    """The session's catalog, computed on first use (its default query runs the model under ``model_lock``)."""
    with _lock:
        known = _described.get(session)
    if known is not None:
        return known
    table = RowTable.of(session.metadata)
    subsets = table.subset_counts()
    values, have = table.ints("step")
    steps = values[have]
    with model_lock or nullcontext():
        default = default_query(session)
        cost = unlearning_cost(session)
    span = (int(steps.min()), int(steps.max())) if len(steps) else None
    catalog = Catalog(dict(sorted(subsets.items())), span, default, cost)
    with _lock:
        _described[session] = catalog
    return catalog


TIMED_TOKENS, REPEATS = 8192, 3
"""The load-time timing: one batch as a query's (rows of the mean length packed up to the query's ``batch_tokens``),
at most ``TIMED_TOKENS`` tokens and at least one row, timed ``REPEATS`` times while a pass takes under a second; the
fastest counts. (Timing 8 short rows where a query packs hundreds made the estimate 3-30× too high: a small
batch costs far more per row.)"""


def unlearning_cost(session: AttributionSession) -> UnlearningCost:
    """Time the forward pass that ``unlearning`` runs over candidates (per-token losses) on rows of the mean indexed
    length (the context, when the metadata has no token counts), after a warm-up pass of the same shape, and one
    ascent on the correction probes; count the rows a default query re-scores. A pass that fails (out of memory) is
    logged and costs ``inf``."""
    settings = session.config.unlearning
    n = len(session)
    rows = n if n <= settings.exhaustive_rows else min(n, len(CANDIDATE_SOURCES) * settings.candidates)
    values, have = RowTable.of(session.metadata).ints("token_count")
    counts = values[have & (values > 0)].tolist()
    context = session.encoder.max_length
    length = max(2, min(round(statistics.fmean(counts)) if counts else context, context))
    model = session.encoder.checkpoints[-1].model
    packed = max(1, min(rows, min(settings.batch_tokens, TIMED_TOKENS) // length))
    batch = [[1] * length] * packed  # the cost does not depend on the ids
    try:
        row_losses(model, batch, settings.batch_tokens)  # warm-up: first-call allocations are not a query's cost
        fastest = fastest_of(lambda: row_losses(model, batch, settings.batch_tokens))
        probe_ascent(session)  # warm-up: the first backward pass sets up autograd
        ascent = fastest_of(lambda: probe_ascent(session))
        read = row_read_seconds(session)
    except (RuntimeError, MemoryError) as err:  # torch's out-of-memory errors are RuntimeErrors
        log.warning("could not time an unlearning pass over %d rows of %d tokens (%s); its cost counts as unknown",
                    len(batch), length, err)
        return UnlearningCost(rows, length, float("inf"))
    return UnlearningCost(rows, length, fastest / len(batch), ascent, read)


def fastest_of(run: Callable[[], object]) -> float:
    """The fastest of up to ``REPEATS`` timed runs (one, once a run takes a second)."""
    fastest = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - started)
        if fastest >= 1.0:
            break
    return fastest


def probe_ascent(session: AttributionSession) -> None:
    """One ascent on the correction's generic probes, as a query runs it (weights restored after), and a pass over
    one 2-token row."""
    retriever = session.retriever(Method.UNLEARNING)
    settings = session.config.unlearning
    probes = retriever.generic_probes(settings.control_probes)
    if probes is not None:
        retriever.after_ascent(probes, [[1, 1]], settings)


READ_ROWS = 16
"""Rows, the last of the index, read to time a row's read (their tokens are then cached, as a query would)."""


def row_read_seconds(session: AttributionSession) -> float:
    """Seconds to read and tokenize one row's text, as an unlearning query does for rows it has not seen."""
    retriever = session.retriever(Method.UNLEARNING)
    rows = range(max(0, len(session) - READ_ROWS), len(session))
    started = time.perf_counter()
    for row in rows:
        retriever.tokens(row)
    return (time.perf_counter() - started) / max(1, len(rows))


def planted_facts(session: AttributionSession) -> list[Fact]:
    """The planted facts the index answers for (its recorded facts file; [] for an index without one)."""
    return index_facts(getattr(session, "manifest", None))


def default_query(session: AttributionSession) -> DefaultQuery | None:
    """The first of the demo's planted facts (at most :data:`MAX_FACTS`) that the model completes correctly, else
    the one it gets most tokens of; for an index that is not the demo's, the same among :func:`row_examples` (a
    sentence start of its own rows and the word that follows); None when neither gives one."""
    facts = planted_facts(session)
    candidates = ([(f.prompt, f.completion, f.fact_id) for f in facts] if facts else row_examples(session))
    best: DefaultQuery | None = None
    for prompt, completion, fact_id in candidates[:MAX_FACTS]:
        right, total = correct_prefix(session, prompt, completion)
        if total == 0:
            continue
        found = DefaultQuery(prompt, completion, fact_id, right == total, right, total)
        if found.model_correct:
            return found
        if best is None or right / total > best.correct_tokens / best.completion_tokens:
            best = found
    if best is not None:
        log.warning("the model completes none of the first %d candidate queries; the default %r gets %d of %d "
                    "tokens", MAX_FACTS, best.prompt, best.correct_tokens, best.completion_tokens)
    return best


PROMPT_WORDS = 8
"""Words of an indexed row's text that make a default query's prompt (the next word is its completion)."""


def row_examples(session: AttributionSession) -> list[tuple[str, str, str | None]]:
    """Queries drawn from the index's own rows, evenly spaced: the first :data:`PROMPT_WORDS` words of a row's text
    and the word after them (rows too short are skipped); no fact id."""
    n = len(session)
    rows = sorted({int(r) for r in np.linspace(0, n - 1, min(n, MAX_FACTS)).round()}) if n else []
    examples = []
    for text in session.texts_of(rows):
        words = text.split()
        if len(words) > PROMPT_WORDS and all(w.isprintable() for w in words[: PROMPT_WORDS + 1]):
            examples.append((" ".join(words[:PROMPT_WORDS]), " " + words[PROMPT_WORDS], None))
    return examples


@torch.no_grad()
def correct_prefix(session: AttributionSession, prompt: str, completion: str) -> tuple[int, int]:
    """How many leading completion tokens the final checkpoint's greedy decoding reproduces, of how many
    (teacher-forced: one forward pass gives every greedy choice along the completion)."""
    encoder = session.encoder
    model = encoder.checkpoints[-1].model
    prompt_ids, completion_ids = encoder.encode_ids(prompt), encoder.encode_ids(completion)
    if not prompt_ids or not completion_ids or len(prompt_ids) + len(completion_ids) > encoder.max_length:
        return 0, 0
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)
    greedy = position_logits(model, ids, slice(len(prompt_ids) - 1, -1)).argmax(-1).tolist()
    right = next((i for i, (a, b) in enumerate(zip(greedy, completion_ids, strict=True)) if a != b),
                 len(completion_ids))
    return right, len(completion_ids)
