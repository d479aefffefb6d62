"""One typed record of every setting that changes an attribution result.

The tree is ``AttributionConfig`` → ``SketchConfig`` (projection), ``CurvatureConfig``
(preconditioner), ``ScoringConfig`` (cosine or inner product, hybrid fusion),
``UnlearningConfig`` (the reverse-direction retriever's ascent) plus the checkpoints, windows and
normalizer. The in-memory session, the indexer (which wraps it
in ``indexer.config.IndexConfig`` with the data and storage settings) and the CLI all use
it; the CLI's defaults and help strings come from the fields and their docstrings
(:func:`field_help`), and the whole record is saved with every index and checked on reopen.
"""

from __future__ import annotations

import ast
import inspect
import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from functools import cache
from typing import Any

from attribution.errors import ConfigError
from attribution.kinds import Factoring, Fisher, PreconditionMode, ScoreMode, SketchConfig


class Fusion(StrEnum):
    """How the ``hybrid`` retriever combines lexical and embedding candidates."""

    RERANK = "rerank"
    RRF = "rrf"


DEFAULT_DAMPING = 0.1
KIND_DAMPING = {PreconditionMode.EKFAC_BASIS: 0.01}
"""Kinds whose default damping is not :data:`DEFAULT_DAMPING`."""


@dataclass(frozen=True)
class CurvatureConfig:
    """The preconditioner: fitted on a sample of training sketches (sketch-space kinds) or on per-module Kronecker
    statistics of the sketch pass (kfac, ekfac)."""

    kind: PreconditionMode = PreconditionMode.BLOCK
    """block (the default: per-module k²×k² blocks, both sides; chosen by fact tracing on two cases, field-protocol
    LDS and its bytes, see the README), inverse_sqrt (global D×D, both sides), inverse (global, training side
    only), kfac (Kronecker factors on the query's gradient before projection), ekfac (K-FAC with eigenvalues
    fitted on per-row gradients), kfac_whitened (K-FAC^-1/2 folded into both sides' projections), ekfac_basis
    (sketches in K-FAC's eigenbasis, EK-FAC's eigenvalues on both sides) or none."""
    damping: float | None = None
    """Damping λ as a multiple of the mean eigenvalue: of the sketch covariance (of each module's block for
    block), of each Kronecker factor (kfac, kfac_whitened), of each module's corrected eigenvalues (ekfac,
    ekfac_basis). None: the kind's default, 0.01 for ekfac_basis (best on both field-LDS cases and on fact
    tracing, see the README), 0.1 for the others."""
    sample: int = 4096
    """Raw sketches (windows count as sketches), evenly spaced over the data, the covariance is estimated on."""
    fisher: Fisher = Fisher.EMPIRICAL
    """Kronecker kinds: empirical (the training labels' loss, gathered during the sketch pass) or sampled (labels
    drawn from the model's own predictions: one more forward and backward per batch)."""
    sample_rows: int = 512
    """ekfac: training rows, evenly spaced over the data, whose per-row gradients fit the eigenvalues (a second
    pass at merge); kfac_whitened, ekfac_basis: rows whose Kronecker factors (and, ekfac_basis, eigenvalues) are
    fitted before the training rows are sketched."""
    factor_limit: int = 8192
    """Kronecker kinds: a module side wider than this gets no Kronecker factor and stays unpreconditioned (the
    output head's vocabulary side)."""

    def __post_init__(self) -> None:
        coerce_enum(self, "kind", PreconditionMode)
        coerce_enum(self, "fisher", Fisher)
        if self.damping is None:
            object.__setattr__(self, "damping", KIND_DAMPING.get(self.kind, DEFAULT_DAMPING))
        if self.damping <= 0:
            raise ConfigError(f"damping must be positive (a multiple of the mean eigenvalue), got {self.damping}")
        if self.sample <= 0:
            raise ConfigError(f"the curvature sample must be positive, got {self.sample}")
        if self.sample_rows <= 0:
            raise ConfigError(f"the curvature's row sample must be positive, got {self.sample_rows}")
        if self.factor_limit <= 0:
            raise ConfigError(f"the Kronecker factor limit must be positive, got {self.factor_limit}")


@dataclass(frozen=True)
class ScoringConfig:
    """How sketches become scores."""

    mode: ScoreMode = ScoreMode.COSINE
    """cosine (unit-normed vectors) or inner_product."""
    hybrid_fusion: Fusion = Fusion.RERANK
    """hybrid: gradient re-rank of lexical+embedding candidates (rerank), or reciprocal rank fusion (rrf)."""
    hybrid_candidates: int = 100
    """hybrid: candidates taken from each of BM25 and the embedding retriever."""

    def __post_init__(self) -> None:
        coerce_enum(self, "mode", ScoreMode)
        coerce_enum(self, "hybrid_fusion", Fusion)
        if self.hybrid_candidates <= 0:
            raise ConfigError(f"hybrid_candidates must be positive, got {self.hybrid_candidates}")


class RowScore(StrEnum):
    """How the ``unlearning`` retriever turns a row's per-token loss increases into its score."""

    MEAN = "mean"
    """The mean over every predicted token of the row."""
    WINDOW = "window"
    """The mean over the row's window of ``window`` tokens with the largest increase."""


class Correction(StrEnum):
    """What the ``unlearning`` retriever subtracts from each row's loss increase."""

    AUTO = "auto"
    """The part explained by an equal ascent on the query's controls; on generic probes when it has none."""
    PROBES = "probes"
    """The part explained by an equal ascent on generic probes (short spans of evenly spaced indexed rows)."""
    NONE = "none"
    """Nothing: the raw loss increase over the unchanged model."""


class Direction(StrEnum):
    """Which way the ``unlearning`` retriever moves the weights, and how it reads each row's change."""

    ASCENT = "ascent"
    """``steps`` normalized gradient-ascent steps on the target; a row's change is its loss after the move less its
    loss before (first order, this is a gradient dot product: the default, measured on every case)."""
    NEWTON = "newton"
    """One step along the Newton direction ``x = (G + λ)⁻¹ g`` (``g`` the target's gradient, ``G`` the Gauss-Newton
    matrix over ``newton_rows`` evenly spaced indexed rows, conjugate gradient in the full parameter space); a row's
    change is the central difference ``(ℓ(θ + Δθ) − ℓ(θ − Δθ)) / 2``, which cancels the even part of the change (what
    any small move does to every row), so no correction is applied; controls are projected out of ``x``."""


@dataclass(frozen=True)
class UnlearningConfig:
    """The reverse direction (method ``unlearning``): ascend on the target, rank rows by their loss increase.

    Query-time settings (no index depends on them); the service overrides ``steps``, ``budget`` and
    ``candidates`` per request.
    """

    steps: int = 3
    """Normalized gradient-ascent steps on the target's completion loss."""
    budget: float = 0.5
    """Total parameter move ‖Δθ‖ (L2 over all parameters) of each ascent; the weights are restored after."""
    contrastive: bool = False
    """Project the query's control prompts' gradients out of every ascent step on the target."""
    correction: Correction = Correction.AUTO
    """Regress out of each row's loss increase its increase under an equal ascent on controls: auto (the
    query's controls, else generic probes), probes (always the probes) or none."""
    control_probes: int = 8
    """Generic probes for the correction: a 16-token span (after 16 tokens of context) of this many rows."""
    candidates: int = 30
    """Candidates taken from each of gradient, BM25 and embedding when the rows are too many to score all (the
    pool grows to k when k is larger). Kept at 30 by both fact cases' evidence (bench/RESULTS.md, unlearning-pools and
    unlearning-pools-second): 100 a source holds more of exhaustive scoring's top 10 (0.91 vs 0.78; 0.97 vs 0.87) but
    finds fewer stating rows on paraphrases (recall@10 0.65 vs 0.82; 0.57 vs 0.79) — the three retrievers' pool is a
    prior the ascent score alone lacks."""
    exhaustive_rows: int = 1024
    """Score every row the filters allow when there are at most this many; above it, re-rank candidates."""
    batch_tokens: int = 16384
    """Tokens per forward pass over candidate rows (bounds memory; the output head runs in chunks)."""
    window: int = 16
    """Tokens of the span reported with each hit: the row's window of largest loss increase."""
    score: RowScore = RowScore.MEAN
    """A row's score: the mean increase over all its tokens (mean) or over its best window (window)."""
    direction: Direction = Direction.ASCENT
    """ascent (``steps`` gradient steps) or newton (one step along the curvature-refined direction)."""
    newton_rows: int = 32
    """newton: indexed rows, evenly spaced, whose Gauss-Newton matrix is inverted (their first 64 tokens each)."""
    newton_damping: float = 100.0
    """newton: damping λ relative to the Gauss-Newton matrix's mean eigenvalue. By the field-LDS sweep: on the
    fine-tuning case 100 beats 10 (0.773 vs 0.695 on drop 1 %, intervals apart; 30 and 300 in between), from scratch
    they tie (0.290 vs 0.302); bergson's CG runs use 10. At 100 conjugate gradient converges in the 20 steps."""
    newton_iterations: int = 20
    """newton: most conjugate-gradient steps (two passes over ``newton_rows`` each)."""
    newton_factoring: Factoring = Factoring.NONE
    """newton: none, kfac or ekfac — a factored ``(G + λ)⁻¹`` fitted once on the ``newton_rows`` preconditions
    conjugate gradient and is its starting point (fewer steps to the same solution; at the default damping plain CG
    converges anyway and the field-LDS scores are the same to three decimals)."""

    def __post_init__(self) -> None:
        coerce_enum(self, "correction", Correction)
        coerce_enum(self, "score", RowScore)
        coerce_enum(self, "direction", Direction)
        coerce_enum(self, "newton_factoring", Factoring)
        positive = {"steps": self.steps, "control_probes": self.control_probes, "candidates": self.candidates,
                    "batch_tokens": self.batch_tokens, "window": self.window, "newton_rows": self.newton_rows,
                    "newton_iterations": self.newton_iterations}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"unlearning {name} must be a positive integer, got {value!r}")
        if self.exhaustive_rows < 0:
            raise ConfigError(f"unlearning exhaustive_rows must be >= 0, got {self.exhaustive_rows}")
        if not math.isfinite(self.budget) or self.budget <= 0:
            raise ConfigError(f"unlearning budget must be a positive finite ‖Δθ‖, got {self.budget}")
        if not math.isfinite(self.newton_damping) or self.newton_damping <= 0:
            raise ConfigError(f"unlearning newton_damping must be a positive finite number, got {self.newton_damping}")


@dataclass(frozen=True)
class AttributionConfig:
    """Everything that turns a model and training rows into comparable vectors and scores."""

    sketch: SketchConfig = field(default_factory=SketchConfig)
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    revisions: tuple[str | None, ...] = (None,)
    """Checkpoints summed over (TracIn-CP); None is the final model."""
    window: int | None = None
    """Sketch windows of this many tokens; an example scores by its best window (None: whole rows)."""
    normalizer: str | None = None
    """Adam state (adam_state.safetensors) whose factored √v divides the gradients (None: no normalizer)."""
    revision_weights: tuple[float, ...] | None = None
    """Weight of each revision's scores, e.g. the learning rate at that checkpoint (TracIn-CP); None: equal."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "revisions", tuple(self.revisions))
        if not self.revisions:
            raise ConfigError("give at least one revision (None is the final model)")
        if self.revision_weights is not None:
            weights = tuple(float(w) for w in self.revision_weights)
            if len(weights) != len(self.revisions) or not all(math.isfinite(w) and w > 0 for w in weights):
                raise ConfigError(f"revision_weights must be {len(self.revisions)} positive finite numbers (one per "
                                  f"revision), got {list(self.revision_weights)}")
            object.__setattr__(self, "revision_weights", weights)
        if self.window is not None and self.window <= 0:
            raise ConfigError(f"window must be a positive number of tokens, got {self.window}")
        if self.normalizer is not None and self.curvature.kind is PreconditionMode.EKFAC_BASIS:
            raise ConfigError("curvature ekfac_basis replaces the projections that carry the Adam normalizer; "
                              "use it without a normalizer, or another kind (block) with one")

    def to_json(self) -> dict:
        return to_json(self)

    @classmethod
    def from_json(cls, data: dict) -> AttributionConfig:
        return from_json(cls, data)


def coerce_enum(record: Any, name: str, kind: type[StrEnum]) -> None:
    """Turn a string field into its enum (frozen dataclass), or a ConfigError listing the choices."""
    value = getattr(record, name)
    try:
        object.__setattr__(record, name, kind(value))
    except ValueError as err:
        raise ConfigError(f"{name} must be one of {[m.value for m in kind]}, got {value!r}") from err


def to_json(record: Any) -> dict:
    """A (nested) config dataclass as plain JSON values: enums as strings, tuples as lists."""
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if hasattr(value, "__dataclass_fields__"):
            value = to_json(value)
        elif isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_json(cls: type, data: dict) -> Any:
    """Rebuild a (nested) config dataclass from :func:`to_json` output; unknown keys are refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown settings {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in data.items():
        factory = known[name].default_factory
        nested = isinstance(factory, type) and is_dataclass(factory)
        values[name] = from_json(factory, value) if nested else value
    return cls(**values)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (what the CLI shows as help)."""
    tree = ast.parse(inspect.getsource(cls)).body[0]
    docs: dict[str, str] = {}
    body = tree.body if isinstance(tree, ast.ClassDef) else []
    for node, after in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_help(cls: type, name: str) -> str:
    """The help text of one field; a missing docstring is a programming error, caught by the tests."""
    try:
        return field_docs(cls)[name]
    except KeyError as err:
        raise KeyError(f"{cls.__name__}.{name} has no docstring to use as help") from err
