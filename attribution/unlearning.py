"""The reverse direction (method ``unlearning``): which training rows is the model now more perplexed about?

Ascend on the target (its completion's loss) by a few normalized steps to a fixed ‖Δθ‖ over all
parameters, measure every candidate row's per-token loss, restore the weights bit for bit. A row's
score is its mean per-token loss increase *relative to an equal ascent on controls* — the query's
control prompts when it has them, otherwise generic probes (a 16-token span of a few evenly spaced
indexed rows): the control ascent's increase is regressed out (least-squares slope over the scored
rows, clipped at 0), so rows that any small ascent perturbs (fragile, generic text) do not crowd the
top. Optionally contrastive: the controls' gradients are projected out of every ascent step.

Every candidate costs a forward pass, so small row sets (≤ ``exhaustive_rows``) are scored whole and
larger ones re-rank the union of the gradient, BM25 and embedding retrievers' top ``candidates`` (at
least k each). A row's score is the mean of its per-token increases (``score = window``: their mean over
its best window of ``window`` tokens, which is also the span reported).
With ``direction = newton`` the move is one step of the same ‖Δθ‖ along the curvature-refined direction
``x = (G + λ)⁻¹ g`` (:mod:`attribution.newton`: the target's gradient through the inverse damped Gauss-Newton
matrix of a sample of indexed rows, solved by conjugate gradient in the full parameter space, the controls'
gradients projected out), and a row's change is the central difference ``(ℓ(θ + Δθ) − ℓ(θ − Δθ)) / 2`` per token:
its odd part, the influence along ``x`` to second order, without the even part every small move adds to every
row (so no correction is applied).
Forward passes are batched by a token budget with the output head applied in chunks (no B × T × V
logits); the losses under the unchanged model and under the generic-probe ascent do not depend on the
query, so they are cached per row.
A task query (several instances) ascends on the instances' summed loss; each ranked row then names the instances
it serves most (:func:`instance_shares`): each instance's part of the row's first-order loss change, measured by
the same central difference along that instance's own gradient.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch
from torch import nn

from attribution.ascent import (
    EmptySelectionError,
    LossMeter,
    Probe,
    apply_step,
    ascend,
    flat_gradient,
    project_off,
    restored,
    trainable,
)
from attribution.batching import TokenBatch, collate, token_nll, training_batch
from attribution.config import Correction, Direction, RowScore, UnlearningConfig
from attribution.encoder import GradientEncoder
from attribution.errors import ConfigError
from attribution.filters import Filters
from attribution.kinds import Factoring
from attribution.newton import NewtonConfig, NewtonSolver
from attribution.records import Hit
from attribution.retrievers import Method, Query, Retriever, check_k, fill_completions, top_instances
from attribution.rows import RowTable, allowed_rows

CANDIDATE_SOURCES = (Method.GRADIENT, Method.BM25, Method.EMBEDDING)
"""The retrievers whose top ``candidates`` are re-ranked on a large index."""
PROBE_CONTEXT, PROBE_SPAN = 16, 16
"""A generic probe: ``PROBE_SPAN`` tokens of a row, predicted after its first ``PROBE_CONTEXT`` tokens."""
log = logging.getLogger(__name__)
NEWTON_SAMPLE_TOKENS = 64
"""Tokens of each sample row the ``newton`` direction's Gauss-Newton matrix sees: its products form the sample's
logits whole (rows × tokens × vocabulary), so this bounds their memory (32 rows at Pythia's 50,304: 412 MB each)."""
CACHE_VALUES = 1 << 24
"""Cached per-row values (tokens, losses) kept at most, each kind: 64 MB of float32."""


class LRUCache:
    """Arrays by key, the least recently used dropped once their total size passes ``capacity`` values."""

    def __init__(self, capacity: int = CACHE_VALUES) -> None:
        self.capacity, self.size, self.items = capacity, 0, OrderedDict()

    def get(self, key: Hashable) -> np.ndarray | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        if key in self.items:
            self.size -= self.items.pop(key).size
        self.items[key] = value
        self.size += value.size
        while self.size > self.capacity and len(self.items) > 1:
            self.size -= self.items.popitem(last=False)[1].size


@torch.no_grad()
def row_losses(model: nn.Module, rows: Sequence[Sequence[int]], batch_tokens: int) -> list[np.ndarray]:
    """Per-token NLL of every row's predicted tokens (all after the first), in batches of ≤ ``batch_tokens``."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(rows)
    start = 0
    while start < len(order):  # sorted by length, so a batch's width is its last row's length
        stop = start + 1
        while stop < len(order) and len(rows[order[stop]]) * (stop - start + 1) <= batch_tokens:
            stop += 1
        group = order[start:stop]
        nll = token_nll(model, training_batch([rows[i] for i in group]).to(device)).cpu().numpy()
        for b, i in enumerate(group):
            out[i] = nll[b, : len(rows[i]) - 1].copy()
        start = stop
    return out


def best_window(delta: np.ndarray, window: int) -> tuple[int, int]:
    """Token span ``[start, end)`` (row positions) of the ``window`` predicted tokens with the largest total."""
    w = min(window, len(delta))
    sums = np.convolve(delta, np.ones(w, dtype=delta.dtype), mode="valid")
    start = int(np.argmax(sums)) + 1  # delta[j] is the loss of token j + 1
    return start, start + w


def corrected(after: list[np.ndarray], base: list[np.ndarray],
              control: list[np.ndarray] | None) -> list[np.ndarray]:
    """Per-token loss increases under the target ascent, less the part the control ascent explains.

    The control's increase is subtracted scaled by the least-squares slope (clipped at 0) of the rows' mean
    target increase on their mean control increase: what both ascents do to a row (general fragility) is
    removed, and a control ascent that tells nothing about the target's rows removes nothing.
    """
    raw = [a - b for a, b in zip(after, base, strict=True)]
    if control is None or len(raw) < 2:
        return raw
    shift = [c - b for c, b in zip(control, base, strict=True)]
    x, y = np.array([s.mean() for s in shift]), np.array([r.mean() for r in raw])
    spread = float(((x - x.mean()) ** 2).sum())
    slope = max(0.0, float(((x - x.mean()) * (y - y.mean())).sum()) / spread) if spread > 0 else 0.0
    return [r - slope * s for r, s in zip(raw, shift, strict=True)]


def losses_after_ascent(model: nn.Module, batch: TokenBatch, tokens: Sequence[Sequence[int]],
                        settings: UnlearningConfig, avoid: torch.Tensor | None = None) -> list[np.ndarray]:
    """Per-token row losses under θ + Δθ (an ascent on ``batch``); the weights are restored after."""
    if not tokens:
        return []
    device = next(model.parameters()).device
    with trainable(model), restored(model):
        ascend(model, batch.to(device), settings.steps, settings.budget, None if avoid is None else avoid.to(device))
        return row_losses(model, tokens, settings.batch_tokens)


def newton_sample(tokens: Callable[[int], np.ndarray], n: int, count: int) -> TokenBatch | None:
    """The rows whose Gauss-Newton matrix a ``newton`` direction inverts: the first ``NEWTON_SAMPLE_TOKENS`` tokens of
    each of ``count`` evenly spaced rows of ``n`` (None when no row has two tokens)."""
    rows = [tokens(int(row))[:NEWTON_SAMPLE_TOKENS].tolist()
            for row in np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))]
    rows = [r for r in rows if len(r) >= 2]
    return training_batch(rows) if rows else None


def newton_config(settings: UnlearningConfig) -> NewtonConfig:
    """The solver settings ``settings`` asks for: damping, steps, factored preconditioner and a warm start from it."""
    return NewtonConfig(damping=settings.newton_damping, max_iter=settings.newton_iterations,
                        factoring=settings.newton_factoring,
                        warm_start=settings.newton_factoring is not Factoring.NONE)


def newton_solver(model: nn.Module, sample: TokenBatch, settings: UnlearningConfig) -> NewtonSolver:
    """The Newton solver over ``sample`` that ``settings`` asks for (:func:`newton_config`). Its damping and factored
    inverse are computed on first use and kept for every later target."""
    device = next(model.parameters()).device
    return NewtonSolver(model, sample.to(device), newton_config(settings))


def newton_step(model: nn.Module, target: TokenBatch, solver: NewtonSolver,
                avoid: torch.Tensor | None = None) -> torch.Tensor:
    """The unit direction of ``x = (G + λ)⁻¹ g``: ``g`` the target's loss gradient, ``G`` the Gauss-Newton matrix
    over ``solver``'s sample, λ its relative damping × ``G``'s mean eigenvalue; ``avoid``'s span (r, P) projected
    out."""
    device = next(model.parameters()).device
    found = solver.direction(target.to(device))
    log.debug("newton direction: %d conjugate-gradient steps, residual %.1e, %.2f s", found.iterations,
              found.residual, found.seconds)
    x = project_off(found.x, None if avoid is None else avoid.to(found.x))
    norm = float(x.norm())
    if norm == 0.0 or not np.isfinite(norm):
        raise EmptySelectionError("the target's Newton direction is zero: nothing to move along")
    return x / norm


def central_changes(model: nn.Module, direction: torch.Tensor, tokens: Sequence[Sequence[int]],
                    settings: UnlearningConfig) -> list[np.ndarray]:
    """Per-token ``(ℓ(θ + Δθ) − ℓ(θ − Δθ)) / 2`` of every row, ``Δθ = budget · direction``; weights restored bit for
    bit after each side."""
    if not tokens:
        return []
    sides = []
    for sign in (1.0, -1.0):
        with restored(model):
            apply_step(model, sign * direction, settings.budget)
            sides.append(row_losses(model, tokens, settings.batch_tokens))
    return [(plus - minus) / 2 for plus, minus in zip(*sides, strict=True)]


def instance_shares(model: nn.Module, instances: Sequence[TokenBatch], tokens: Sequence[Sequence[int]],
                    settings: UnlearningConfig, avoid: torch.Tensor | None = None) -> np.ndarray:
    """``(rows, instances)``: each instance's signed share of each row's first-order loss change under the task's
    ascent, whose first step is along the sum of the instances' gradients ``g_i``. Instance i's part is the row's
    score (:func:`row_score`) of the central difference along ``g_i`` (``avoid``'s span projected out), times
    ``‖g_i‖``: to first order ``g_row · g_i``, so the parts add up to the change along the sum. Each row's shares are
    its parts over the sum of their absolute values (all 0 when every part is). One gradient in memory at a time."""
    parts = np.zeros((len(tokens), len(instances)))
    device = next(model.parameters()).device
    for i, batch in enumerate(instances):
        with trainable(model):
            gradient = project_off(flat_gradient(model, batch.to(device)), avoid)
        norm = float(gradient.norm())
        if norm == 0.0:
            continue
        changes = central_changes(model, gradient / norm, tokens, settings)
        parts[:, i] = [row_score(change, settings) * norm / settings.budget for change in changes]
    scale = np.abs(parts).sum(axis=1, keepdims=True)
    return np.divide(parts, scale, out=np.zeros_like(parts), where=scale > 0)


def generic_probes(tokens: Callable[[int], np.ndarray], n: int, count: int) -> TokenBatch | None:
    """The correction's default controls: ``PROBE_SPAN`` tokens (after ``PROBE_CONTEXT``) of each of ``count``
    evenly spaced rows of ``n`` (``tokens(row)`` gives a row's ids); None when no row is long enough."""
    rows, masks = [], []
    for row in np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int)):
        ids = tokens(int(row))[: PROBE_CONTEXT + PROBE_SPAN].tolist()
        if len(ids) > PROBE_CONTEXT:
            rows.append(ids)
            masks.append([0] * PROBE_CONTEXT + [1] * (len(ids) - PROBE_CONTEXT))
    return collate(rows, masks) if rows else None


def row_score(delta: np.ndarray, settings: UnlearningConfig) -> float:
    """A row's score from its per-token loss increases: their mean, or their mean over the best window."""
    if not len(delta):
        return 0.0
    if settings.score is RowScore.WINDOW:  # delta[j] is token j + 1's increase
        start, end = best_window(delta, settings.window)
        return float(delta[start - 1 : end - 1].mean())
    return float(delta.mean())


def score_every_row(model: nn.Module, rows: Sequence[Sequence[int]], targets: Sequence[TokenBatch],
                    config: UnlearningConfig | None = None) -> np.ndarray:
    """``(targets, rows)`` unlearning scores of every row for each target batch, as the retriever scores an
    exhaustive set: each row's loss increase after the ascent on the target (``row_score``), corrected by the
    equal ascent on generic probes (``Correction.NONE``: uncorrected); with ``direction = newton``, its central
    change along the target's Newton direction (``G`` over evenly spaced ``rows``). For evaluations that need every
    row's score (LDS sums them); the rows' base and probe-ascent losses are computed once for all targets."""
    settings = config or UnlearningConfig()
    short = [i for i, r in enumerate(rows) if len(r) < 2]
    if short:
        raise ConfigError(f"rows {short[:5]} have fewer than 2 tokens: one to predict from and one to score")
    out = np.zeros((len(targets), len(rows)), dtype=np.float32)
    if settings.direction is Direction.NEWTON:
        sample = newton_sample(lambda r: np.asarray(rows[r]), len(rows), settings.newton_rows)
        if sample is None:
            raise ConfigError("no row has two tokens: the newton direction has no rows to take curvature from")
        solver = newton_solver(model, sample, settings)
        for t, target in enumerate(targets):
            changes = central_changes(model, newton_step(model, target, solver), rows, settings)
            out[t] = [row_score(d, settings) for d in changes]
        return out
    base = row_losses(model, rows, settings.batch_tokens)
    control = None
    if settings.correction is not Correction.NONE:
        probes = generic_probes(lambda r: np.asarray(rows[r]), len(rows), settings.control_probes)
        control = None if probes is None else losses_after_ascent(model, probes, rows, settings)
    for t, target in enumerate(targets):
        deltas = corrected(losses_after_ascent(model, target, rows, settings), base, control)
        out[t] = [row_score(d, settings) for d in deltas]
    return out


class UnlearningRetriever:
    """Rank rows by how much more perplexed the model is about them after an ascent on the target."""

    name = Method.UNLEARNING.value

    def __init__(self, encoder: GradientEncoder, texts, metadata: RowTable | list[dict],
                 sources: Callable[[Method], Retriever], config: UnlearningConfig | None = None) -> None:
        self.encoder, self.texts, self.metadata, self.sources = encoder, texts, RowTable.of(metadata), sources
        self.config = config or UnlearningConfig()
        self.model = encoder.checkpoints[-1].model
        self.meter = LossMeter(self.model, encoder.tokenizer, encoder.max_length)
        self.n = len(metadata)
        self.token_cache, self.loss_cache = LRUCache(), LRUCache()
        self.timings: dict[str, float] = {}
        """Milliseconds per stage of the last search (candidates, reference, target, evidence)."""
        self._probes: dict[int, TokenBatch | None] = {}
        self._solvers: dict[tuple[int, NewtonConfig], NewtonSolver] = {}

    def tokens(self, row: int) -> np.ndarray:
        """The row's token ids (its text re-tokenized, cut to the model's context), cached."""
        ids = self.token_cache.get(row)
        if ids is None:
            text = self.texts[row]
            ids = np.asarray(self.encoder.tokenizer.encode(text, add_special_tokens=False)[: self.encoder.max_length],
                             dtype=np.int64)
            self.token_cache.put(row, ids)
        return ids

    def search(self, query: Query, k: int, filters: Filters | None = None) -> list[Hit]:
        check_k(k, self.n)
        settings = query.unlearning or self.config
        fill_completions(self.encoder, query)
        clock = [time.perf_counter()]
        rows = [int(r) for r in self.candidates(query, k, filters, settings) if len(self.tokens(int(r))) >= 2]
        tokens = [self.tokens(r).tolist() for r in rows]
        clock.append(time.perf_counter())
        controls = self.control_probes(query)
        target = self.meter.probe_batch([Probe(p, c) for p, c in query.instances])  # a task: its summed loss
        if settings.direction is Direction.NEWTON:  # no reference losses: the central difference needs none
            clock.append(time.perf_counter())
            avoid = self.control_gradients(controls, query.is_task) if controls else None
            deltas = central_changes(self.model, self.newton_step(target, settings, avoid), tokens, settings)
        else:
            base = self.cached(("base",), rows, tokens,
                               lambda todo: row_losses(self.model, todo, settings.batch_tokens))
            control = self.control_losses(rows, tokens, controls, settings)
            clock.append(time.perf_counter())
            avoid = self.control_gradients(controls, query.is_task) if settings.contrastive and controls else None
            deltas = corrected(self.after_ascent(target, tokens, settings, avoid), base, control)
        clock.append(time.perf_counter())
        spans = [best_window(d, settings.window) for d in deltas]
        scores = np.array([row_score(d, settings) for d in deltas])
        top = np.argsort(-scores, kind="stable")[:k]
        hits = [self.hit(rows[i], scores[i], deltas[i], spans[i]) for i in top]
        if query.is_task:
            self.name_instances(hits, query, [tokens[i] for i in top], settings, avoid)
        clock.append(time.perf_counter())
        stages = ("candidates", "reference", "target", "evidence")
        self.timings = {name: (b - a) * 1e3 for name, a, b in zip(stages, clock[:-1], clock[1:], strict=True)}
        self.timings["rows"] = float(len(rows))
        return hits

    def name_instances(self, hits: list[Hit], query: Query, tokens: list[list[int]], settings: UnlearningConfig,
                       avoid: torch.Tensor | None) -> None:
        """Each hit of a task query gets the instances it serves most (:func:`instance_shares`, ``avoid`` as the
        search's ascent had it)."""
        probes = [self.meter.probe_batch([Probe(p, c)]) for p, c in query.instances]
        for hit, shares in zip(hits, instance_shares(self.model, probes, tokens, settings, avoid), strict=True):
            hit.instances = top_instances(shares)

    def candidates(self, query: Query, k: int, filters: Filters | None, settings: UnlearningConfig) -> np.ndarray:
        """Every allowed row of a small set; otherwise the union of the candidate sources' top ``candidates``."""
        allowed = allowed_rows(self.metadata, filters)
        count = self.n if allowed is None else len(allowed)
        if count <= settings.exhaustive_rows:
            return np.arange(self.n) if allowed is None else allowed
        pool = min(max(settings.candidates, k), count)
        found: set[int] = set()
        for method in CANDIDATE_SOURCES:
            asked = Query(query.prompt, query.completion, list(query.controls), more=list(query.more))
            found.update(hit.row for hit in self.sources(method).search(asked, pool, filters))
        return np.array(sorted(found), dtype=np.int64)

    def control_probes(self, query: Query) -> list[Probe]:
        """The query's controls as probes (a control without completion gets the model's own)."""
        n_tokens = max(1, len(self.encoder.encode_ids(query.completion or "")))
        return [Probe(p, c if c is not None else self.encoder.greedy_completion(p, max_new_tokens=n_tokens))
                for p, c in query.controls]

    def control_losses(self, rows: list[int], tokens: list[list[int]], controls: list[Probe],
                       settings: UnlearningConfig) -> list[np.ndarray] | None:
        """Per-token row losses after the equal ascent on controls (see ``Correction``); None: no correction."""
        mode = settings.correction
        if mode is Correction.AUTO and controls:
            return self.after_ascent(self.meter.probe_batch(controls), tokens, settings)
        probes = self.generic_probes(settings.control_probes) if mode is not Correction.NONE else None
        if probes is None:
            return None
        return self.cached(("probes", settings.control_probes, settings.steps, settings.budget), rows, tokens,
                           lambda todo: self.after_ascent(probes, todo, settings))

    def cached(self, key: tuple, rows: list[int], tokens: list[list[int]],
               compute: Callable[[list[list[int]]], list[np.ndarray]]) -> list[np.ndarray]:
        """Query-independent per-row losses: computed for the rows not cached yet, then looked up."""
        values = {r: self.loss_cache.get((*key, r)) for r in rows}
        todo = [i for i, r in enumerate(rows) if values[r] is None]
        if todo:
            for i, losses in zip(todo, compute([tokens[i] for i in todo]), strict=True):
                values[rows[i]] = losses
                self.loss_cache.put((*key, rows[i]), losses)
        return [values[r] for r in rows]

    def after_ascent(self, batch: TokenBatch, tokens: list[list[int]], settings: UnlearningConfig,
                     avoid: torch.Tensor | None = None) -> list[np.ndarray]:
        """Per-token row losses under θ + Δθ (an ascent on ``batch``); the weights are restored after."""
        return losses_after_ascent(self.model, batch, tokens, settings, avoid)

    def newton_step(self, target: TokenBatch, settings: UnlearningConfig, avoid: torch.Tensor | None) -> torch.Tensor:
        """The target's unit Newton direction over a sample of ``settings.newton_rows`` indexed rows (the sample and
        its solver, with its damping and factored preconditioner, cached per setting)."""
        key = (settings.newton_rows, newton_config(settings))
        if key not in self._solvers:
            sample = newton_sample(self.tokens, self.n, settings.newton_rows)
            if sample is None:
                raise ConfigError("no indexed row has two tokens: the newton direction has no rows to take curvature "
                                  "from")
            with trainable(self.model):
                self._solvers[key] = newton_solver(self.model, sample, settings)
        with trainable(self.model):
            return newton_step(self.model, target, self._solvers[key], avoid)

    def control_gradients(self, controls: list[Probe], task: bool = False) -> torch.Tensor:
        """One flat gradient per control prompt ``(r, P)``: the span a contrastive ascent stays off; for a control
        task, one gradient of its summed loss (the task as a whole, not each instance)."""
        device = next(self.model.parameters()).device
        groups = [controls] if task else [[c] for c in controls]
        with trainable(self.model):
            return torch.stack([flat_gradient(self.model, self.meter.probe_batch(g).to(device)) for g in groups])

    def generic_probes(self, count: int) -> TokenBatch | None:
        """The correction's default controls: a span of each of ``count`` evenly spaced rows (None: no row is
        long enough to give one)."""
        if count not in self._probes:
            self._probes[count] = generic_probes(self.tokens, self.n, count)
        return self._probes[count]

    def hit(self, row: int, score: float, delta: np.ndarray, span: tuple[int, int]) -> Hit:
        """A ranked row with its evidence: the per-token loss increase and its largest window."""
        tokenizer = self.encoder.tokenizer
        predicted = self.tokens(row)[1:].tolist()
        return Hit(row, float(score), token_span=span,
                   loss_increase=[round(float(d), 6) for d in delta],
                   row_tokens=[tokenizer.decode([t]) for t in predicted])
