"""The gradient side of attribution: queries and training examples to comparable vectors.

The indexer and the service both go through :class:`GradientEncoder`, so training
sketches and query sketches can never be computed differently. One encoder may hold
several checkpoints (TracIn-CP); each is sketched and prepared on its own and the
results concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from attribution.batching import collate, position_logits, query_tokens, training_batch
from attribution.curvature import Curvature, QuerySketcher, SketchPassStatistics
from attribution.errors import ConfigError
from attribution.models import load_model
from attribution.modules import sketched_modules
from attribution.normalizer import adam_scales
from attribution.scoring import ScoreMode, combine_checkpoints, prepare_query, prepare_train
from attribution.sketch import SketchConfig, Sketcher


@dataclass
class Checkpoint:
    """One model revision with its sketcher and (optional) fitted preconditioner."""

    model: nn.Module
    sketcher: Sketcher
    preconditioner: Curvature | None = None
    revision: str | None = None
    _routes: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def query_sketcher(self) -> QuerySketcher:
        """What sketches this checkpoint's queries: the preconditioner's route (e.g. K-FAC's folded projections),
        built once per preconditioner, or the plain sketcher."""
        return self._route("query", lambda p: p.query_sketcher(self.sketcher))

    @property
    def train_sketcher(self) -> Sketcher:
        """What sketches this checkpoint's training rows: the plain sketcher, or whitened projections."""
        return self._route("train", lambda p: p.train_sketcher(self.sketcher))

    def _route(self, side: str, make):
        if self.preconditioner is None:
            return self.sketcher
        made = self._routes.get(side)
        if made is None or made[0] is not self.preconditioner:
            self._routes[side] = made = (self.preconditioner, make(self.preconditioner))
        return made[1]


@dataclass
class EncodedQuery:
    """A query's vector, per-completion-token vectors (summing to it) and its tokens."""

    vector: torch.Tensor
    per_token: torch.Tensor
    completion: str
    completion_tokens: list[str]
    controls_used: int = 0
    extras: dict = field(default_factory=dict)


def load_checkpoints(model_path: str | Path, revisions: Sequence[str | None], sketch: SketchConfig,
                     normalizer: str | Path | None = None, device: str = "cpu",
                     dtype: str = "float32") -> list[Checkpoint]:
    """The model at every revision with its sketcher; ``normalizer`` is an Adam state to divide by."""
    checkpoints = []
    for revision in revisions:
        model = load_model(model_path, revision=revision, dtype=dtype, device=device)
        scales = None
        if normalizer is not None:
            linears = {n: m for n, m in sketched_modules(model, sketch.groups).items() if isinstance(m, nn.Linear)}
            scales = adam_scales(normalizer, linears)  # the normalizer divides the Linear groups only
        checkpoints.append(Checkpoint(model, Sketcher(model, sketch, scales), revision=revision))
    return checkpoints


class GradientEncoder:
    """Sketch queries and training rows with the same model(s), projections and scoring mode."""

    def __init__(self, checkpoints: list[Checkpoint], tokenizer, mode: ScoreMode | str = ScoreMode.COSINE,
                 weights: Sequence[float] | None = None) -> None:
        """``weights``: one per checkpoint (TracIn-CP's learning rates), None for equal weights."""
        if not checkpoints:
            raise ConfigError("a gradient encoder needs at least one checkpoint")
        if weights is not None and len(weights) != len(checkpoints):
            raise ConfigError(f"{len(weights)} checkpoint weights for {len(checkpoints)} checkpoints")
        self.checkpoints = checkpoints
        self.weights = None if weights is None else tuple(weights)
        self.tokenizer = tokenizer
        self.mode = ScoreMode(mode)
        self.max_length = int(getattr(checkpoints[0].model.config, "max_position_embeddings", 2048))

    @property
    def dim(self) -> int:
        return sum(c.sketcher.dim for c in self.checkpoints)

    def encode_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    @torch.no_grad()
    def greedy_completion(self, prompt: str, max_new_tokens: int = 8) -> str:
        """The final checkpoint's own greedy continuation, stopped at end of text or a period."""
        model = self.checkpoints[-1].model
        ids = self.encode_ids(prompt)
        if not ids:
            raise ConfigError("the prompt is empty")
        device = next(model.parameters()).device
        out: list[int] = []
        for _ in range(min(max_new_tokens, self.max_length - len(ids))):
            logits = position_logits(model, torch.tensor([ids + out], device=device), slice(-1, None))[0]
            token = int(logits.argmax())
            if token == self.tokenizer.eos_token_id:
                break
            out.append(token)
            if "." in self.tokenizer.decode([token]) or "\n" in self.tokenizer.decode([token]):
                break
        if not out:
            raise ConfigError(f"the model's greedy continuation of {prompt!r} is empty; give a completion")
        return self.tokenizer.decode(out)

    def _per_token_sketches(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """Per checkpoint, one sketch per completion token of every (prompt ids, completion ids) pair, in order:
        all of them rows of one batch."""
        rows, masks = [], []
        for prompt_ids, completion_ids in pairs:
            ids, _ = query_tokens(prompt_ids, completion_ids, self.max_length)
            first = len(prompt_ids)
            for j in range(len(completion_ids)):
                rows.append(ids)
                masks.append([int(i == first + j) for i in range(len(ids))])
        batch = collate(rows, masks)
        return [c.query_sketcher.sketch(batch).cpu() for c in self.checkpoints]

    def _control_sketches(self, controls: Sequence[tuple[str, str | None]], n_tokens: int) -> list[torch.Tensor]:
        rows, masks = [], []
        for prompt, completion in controls:
            if completion is None:
                completion = self.greedy_completion(prompt, max_new_tokens=max(n_tokens, 1))
            ids, mask = query_tokens(self.encode_ids(prompt), self.encode_ids(completion), self.max_length)
            rows.append(ids)
            masks.append(mask)
        batch = collate(rows, masks)
        return [c.query_sketcher.sketch(batch).cpu() for c in self.checkpoints]

    def encode_query(
        self, prompt: str, completion: str | None = None, controls: Sequence[tuple[str, str | None]] = ()
    ) -> EncodedQuery:
        """Query vector, ready for an inner product with :meth:`encode_rows` output."""
        if completion is None:
            completion = self.greedy_completion(prompt)
        return self.encode_query_ids(self.encode_ids(prompt), self.encode_ids(completion), controls, completion)

    def encode_query_ids(self, prompt_ids: list[int], completion_ids: list[int],
                         controls: Sequence[tuple[str, str | None]] = (),
                         completion: str | None = None) -> EncodedQuery:
        """:meth:`encode_query` of token ids (e.g. a held-out text chunk: its first token, then the rest);
        ``completion`` is the completion's text as given (default: decoded from its ids)."""
        completion = self.tokenizer.decode(completion_ids) if completion is None else completion
        per_token = self._per_token_sketches([(prompt_ids, completion_ids)])
        control = self._control_sketches(controls, len(completion_ids)) if controls else [None] * len(per_token)
        return self._encoded(per_token, control, completion_ids, completion, len(controls))

    def encode_queries(self, queries: Sequence[tuple[str, str]]) -> list[EncodedQuery]:
        """:meth:`encode_query` of several (prompt, completion) pairs without controls in ONE sketch pass (every
        completion token of every query a row of the same batch): what a server does with queries that arrive
        together. Same vectors as one at a time, up to float rounding (tested)."""
        pairs = [(self.encode_ids(p), self.encode_ids(c)) for p, c in queries]
        sketched = self._per_token_sketches(pairs)
        out, start = [], 0
        for (_, completion), (_, completion_ids) in zip(queries, pairs, strict=True):
            per_token = [s[start : start + len(completion_ids)] for s in sketched]
            start += len(completion_ids)
            out.append(self._encoded(per_token, [None] * len(per_token), completion_ids, completion, 0))
        return out

    def _encoded(self, per_token: list[torch.Tensor], control: list, completion_ids: list[int], completion: str,
                 controls_used: int) -> EncodedQuery:
        vectors, tokens = [], []
        for ckpt, pt, ctrl in zip(self.checkpoints, per_token, control, strict=True):
            q, t = prepare_query(pt.sum(0), self.mode, ckpt.preconditioner, ctrl, per_token=pt)
            vectors.append(q)
            tokens.append(t)
        return EncodedQuery(
            vector=combine_checkpoints(vectors, self.mode, self.weights),
            per_token=combine_checkpoints(tokens, self.mode, self.weights),
            completion=completion,
            completion_tokens=[self.tokenizer.decode([t]) for t in completion_ids],
            controls_used=controls_used,
        )

    def raw_rows(self, rows: Sequence[Sequence[int]], window: int | None = None,
                 statistics: Sequence[SketchPassStatistics | None] | None = None) -> list[torch.Tensor]:
        """Unprepared sketches per checkpoint: ``(B, D_c)``, or ``(B, n_windows, D_c)`` with windows; ``statistics``
        (one per checkpoint, or None) gather what a curvature fits on along the way."""
        batch = training_batch(rows)
        statistics = statistics or [None] * len(self.checkpoints)
        sketchers = [c.train_sketcher for c in self.checkpoints]
        return [(sk.sketch(batch, window) if s is None else s.sketch_with(sk, batch, window)).cpu()
                for sk, s in zip(sketchers, statistics, strict=True)]

    def prepare_rows(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Training vectors from :meth:`raw_rows` output: preconditioned, normalized, checkpoints joined."""
        parts = [prepare_train(r, self.mode, c.preconditioner) for c, r in zip(self.checkpoints, raw, strict=True)]
        return combine_checkpoints(parts, self.mode, self.weights)

    def encode_rows(self, rows: Sequence[Sequence[int]], window: int | None = None) -> torch.Tensor:
        """Training-example vectors ``(B, D)``, or ``(B, n_windows, D)`` with windows."""
        return self.prepare_rows(self.raw_rows(rows, window))
