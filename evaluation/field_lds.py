"""LDS on the field's protocol (docs/EVALUATION.md §2; bergson ``examples/compare_wikitext``), scaled to this machine.

The case (:mod:`evaluation.text_case`): a small GPT-NeoX trained deterministically on chunks of real text,
with held-out query chunks. Retrains, each from the same initialization and order: ``retrains`` without a
random ``removed`` share of the rows (1 %, the field's main column) and ``halves`` on random halves (the second
column). For query z and retrain j: f_j(z) = z's mean NLL under model j; g_j(z) = Σ over the rows j trained
on of score_i(z); LDS(z) = Spearman over j of f_j and −g_j (dropping a helpful row must raise the loss); mean
over queries with a bootstrap interval and a permutation p-value.

Scores are influence estimates with the final model (TracIn-CP: its checkpoints): headwater's gradient sketches
scored by inner product with each curvature kind (``gradient-ip/KIND``), and by cosine (``gradient/KIND``,
TrackStar-like);
TracIn-CP (``tracin-ip/KIND``: the inner product, preconditioned by KIND at each checkpoint, summed over
``TRACIN_CHECKPOINTS`` checkpoints of the case's training, each weighted by its learning rate; ``tracin/KIND`` the
cosine form; the training is rerun once with its checkpoints saved, ``CASE_DIR/tracin/``; the names' grammar is
:mod:`evaluation.estimator_names`, the same as bench/quality's);
``bm25`` (the chunk texts) as a lexical reference; ``unlearning`` (each row's loss increase after an ascent
on the query chunk, ``attribution.unlearning.score_every_row``: a finite-step estimate, not a linear one);
``unlearning@newton`` (the same retriever moved one step along the query's Newton direction, read by a central
difference: ``direction = newton``); ``newton`` (each row's exact loss change along ``(G + λ)⁻¹ ∇ℓ(query)``, forward
mode, no projection: :mod:`attribution.newton`; ``newton@cN[@bm25]`` the answer in two stages: the index default's
top N rows per query, or N taken alternately from its and BM25's rankings, scored so, every other row 0;
``newton@sketch`` the same direction read through the stored sketches, alone or, with ``@cN``, as the recall stage;
``newton@ekfac@warm@i0@rN@dD`` EK-FAC fitted on N rows at damping D over every parameter, no conjugate-gradient
step: the field's EK-FAC influence, the embedding and norms included by a diagonal; ``@cp`` the mean over TracIn-CP's
checkpoints);
``magic`` (the ceiling row: each row's ``−∂L_q/∂w_i`` through an exact replay of training, :mod:`evaluation.replay`;
read it against the ``drop-zeroed`` column, the in-place removal it linearizes);
``shuffled`` (the first estimator's scores permuted across rows) as the control that must stay ≈ 0; and every
``OUT/external/NAME.npy`` of shape (queries, rows) that another tool wrote for the same case (bergson, Kronfluence:
see bench/), so they sit in the same table.

Resumable: each retrain's query losses are ``OUT/retrains/KIND-NNN.json`` (the model itself is deleted), each
estimator's scores ``OUT/scores/NAME.npy`` with the key they depend on. Outputs ``OUT/field_lds.json`` and
``OUT/field_lds.md``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from attribution.astra import AstraSchedule
from attribution.batching import TokenBatch, training_batch
from attribution.config import DEFAULT_DAMPING, CurvatureConfig, Direction, UnlearningConfig
from attribution.encoder import GradientEncoder, load_checkpoints
from attribution.errors import ConfigError, OutOfMemoryError
from attribution.kinds import group_names
from attribution.kronecker import Fisher, KroneckerStatistics
from attribution.models import load_model, load_tokenizer
from attribution.newton import (
    NewtonConfig,
    NewtonSolver,
    Solver,
    eager_attention,
    parameters_of,
    score_rows,
    unflatten,
)
from attribution.preconditioner import PreconditionMode
from attribution.scoring import ScoreMode
from attribution.session import fitted_vectors, sketch_all
from attribution.sketch import SketchConfig
from attribution.unlearning import score_every_row
from evaluation.estimator_names import GRAMMAR, is_gradient_name, parse_gradient_name
from evaluation.finetune_case import FinetuneCase
from evaluation.lds_stats import (
    lds_per_query,
    percentile_interval,
    permutation_null,
    predicted,
    shuffle_rows,
    summarize,
    two_way_draws,
)
from evaluation.replay import magic_scores, replay_of
from evaluation.report_files import as_json, rows_digest, write_report_files, write_whole
from evaluation.retrain import run_jobs, usable_cores
from evaluation.row_scores import bm25_matrix, cached
from evaluation.selections import FIELD_LDS_ESTIMATORS as DEFAULT_ESTIMATORS
from evaluation.text_case import TextCase, chunk_losses, query_chunks, reuse_or_clear, training_rows, write_marker
from evaluation.training import learning_rate, pythia_checkpoint_steps, steps_for, train

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
DROP, HALF, RESEEDED, ZEROED = "drop", "half", "drop-reseeded", "drop-zeroed"
"""Retrain kinds: without a random share; on a random half; without the same shares as ``drop`` but trained from
another seed (the second-seed column); the same shares as ``drop`` kept in place with loss weight 0 (the same batches
and steps as the full model: the counterfactual MAGIC-style exact replays predict)."""
SHUFFLED = "shuffled"
BM25, UNLEARNING, TRACIN, NEWTON = "bm25", "unlearning", "tracin", "newton"
MAGIC = "magic"
"""The exact replay of training, differentiated (:mod:`evaluation.replay`): the ceiling row, like bergson's MAGIC. It
replays the whole training run once per query, so it is no served method and never counts as headwater's best in the
lead over the peers."""
REPLAY_TOLERANCE = 1e-3
"""Nats by which the replayed model's query losses may differ from the saved model's (float32 rounding, amplified by
AdamW where a gradient is noise, moves them by ~1e-5 here)."""
UNLEARNING_NEWTON = UNLEARNING + "@" + NEWTON
NEWTON_SAMPLE_ROWS, NEWTON_ITERATIONS = 32, 20
"""Training rows, evenly spaced, whose Gauss-Newton matrix a ``newton`` estimator inverts, and the most conjugate
gradient steps per query (~5 s a query on the from-scratch case on 2 CPU cores)."""
NEWTON_DAMPING = 100.0
"""``newton``'s damping relative to the Gauss-Newton matrix's mean eigenvalue when its name gives none, chosen by the
sweep (docs/RESULTS.md): on the fine-tuning case d = 1 / 10 / 30 / 100 / 300 / 1000 gave 0.543 / 0.695 / 0.751 /
0.773 / 0.757 / 0.708 (drop 1 %), from scratch d100 ties d10 (0.290 vs 0.302). bergson's CG runs use 10; at 100
conjugate gradient converges in 20 steps (residual < 0.01)."""


NEWTON_OPTIONS = ("@dD (relative damping), @iN (conjugate-gradient steps, or ASTRA steps; @i0 with @warm: the "
                  "factored inverse alone), @rN (sample rows), "
                  "@kfac or @ekfac (a factored preconditioner), @warm (start from it), @astra (the stochastic "
                  "solver), @lrX (ASTRA's learning rate), @cN (two stages: only the index default's top N rows "
                  "scored), @bm25 (with @cN: N/2 of them from BM25), @sketch (the direction read through the "
                  "stored k-sketches: alone, the whole answer; with @cN, the recall stage), @blocks, @embed, @head "
                  "(the direction moves only these groups' weights, as a peer tracking those modules), @cp (the "
                  "mean over TracIn-CP's checkpoints; one stage)")
DEFAULT_GROUPS = group_names(SketchConfig().groups)
"""The index's default sketched parameter groups (the transformer blocks' Linear layers)."""
RECALL_STAGE = "gradient/block"
"""The recall stage of a two-stage ``newton@cN`` estimator: the index default (block curvature, cosine, the settings'
k; 8 KB a row at k = 16), as the served index searches."""
PARAMETER_GROUPS = ("blocks", "embed", "head")
"""``newton``'s options that restrict the direction to some modules' weights (:attr:`NewtonConfig.groups`)."""
SKETCH_RECALL = "the Newton direction through the sketches"
"""The recall stage of ``newton@cN@sketch`` (:attr:`NewtonEstimator.sketched`), as its scores' key names it."""


@dataclass(frozen=True)
class NewtonEstimator:
    """A ``newton`` estimator's solver settings and how many evenly spaced training rows its ``G`` is taken over."""

    config: NewtonConfig
    sample_rows: int = NEWTON_SAMPLE_ROWS
    candidates: int | None = None
    """Two stages: only the recall stage's (:data:`RECALL_STAGE`) top ``candidates`` rows per query are scored
    exactly, every other row scores 0 (None: every row scored)."""
    with_bm25: bool = False
    """The recall stage takes its candidates alternately from the index default's and BM25's rankings (as the served
    ``unlearning`` pools its sources)."""
    sketched: bool = False
    """The query's Newton direction read through the stored sketches: each row scored by its k-sketch's inner
    product with the direction's projection (:meth:`attribution.sketch.Sketcher.project`, the index's projection at
    the settings' k; 8 KB a row at k = 16). Alone, that is the answer (a stored index queried by ``x``); with
    ``candidates``, it is the recall stage in place of the index default's ranking of the raw gradient."""
    checkpoints: bool = False
    """Scores averaged over TracIn-CP's checkpoints of the case's training (:func:`tracin_plan`, the final model
    included), each checkpoint with its own sample curvature, direction and exact row scores: the Newton step taken
    along the trajectory rather than at its end (one stage only)."""


def newton_estimator(name: str) -> NewtonEstimator:
    """``newton[@dD][@iN][@rN][@kfac|@ekfac][@warm][@astra][@lrX][@cN[@bm25]][@sketch][@blocks][@embed][@head][@cp]``:
    relative damping D (default :data:`NEWTON_DAMPING`), at most N conjugate-gradient steps (default
    :data:`NEWTON_ITERATIONS`; with ``@astra`` N ASTRA steps, default 300; ``@i0`` with ``@warm``: none, the factored
    inverse fitted on the sample rows alone), ``G`` over N sample rows (default
    :data:`NEWTON_SAMPLE_ROWS`), a K-FAC or EK-FAC preconditioner, a warm start from it, the ASTRA solver and its
    learning rate X (default 0.1), and two stages: only the index default's top N rows per query scored
    (:attr:`NewtonEstimator.candidates`), half of them from BM25 with ``@bm25``; ``@sketch``: the direction read
    through the stored sketches (:attr:`NewtonEstimator.sketched`), alone or as the recall stage of ``@cN``;
    ``@blocks``, ``@embed``, ``@head``: the direction over those groups' weights only (:attr:`NewtonConfig.groups`;
    plain conjugate gradient); ``@cp``: the mean over TracIn-CP's checkpoints (:attr:`NewtonEstimator.checkpoints`)."""
    error = ConfigError(f"unknown LDS estimator {name!r}: newton takes {NEWTON_OPTIONS}")
    numbers: dict[str, float] = {}
    flags: set[str] = set()
    for option in name.split("@")[1:]:
        if option in ("kfac", "ekfac", "warm", "astra", "bm25", "sketch", "cp", *PARAMETER_GROUPS):
            if option in flags or ({"kfac", "ekfac"} <= flags | {option}):
                raise error
            flags.add(option)
            continue
        key = "lr" if option.startswith("lr") else option[:1]
        if key in numbers or key not in ("d", "i", "r", "lr", "c"):
            raise error
        try:
            value = float(option[len(key):])
        except ValueError:
            raise error from None
        if not (value > 0 or (key == "i" and value == 0)) or not np.isfinite(value) or (
                key in ("i", "r", "c") and value != int(value)):
            raise error
        if key == "c" and not option[1:].isdigit():  # one spelling, so a two-stage name finds its twin
            raise error
        numbers[key] = value
    astra = "astra" in flags
    if ("lr" in numbers and not astra) or ("bm25" in flags and "c" not in numbers) or (
            "cp" in flags and ("c" in numbers or "sketch" in flags)):
        raise error
    factoring = next((f for f in ("kfac", "ekfac") if f in flags), "none")
    try:
        schedule = AstraSchedule(steps=int(numbers.get("i", 300)), lr=numbers.get("lr", 0.1)) if astra else \
            AstraSchedule()
        config = NewtonConfig(damping=numbers.get("d", NEWTON_DAMPING), factoring=factoring,
                              max_iter=NEWTON_ITERATIONS if astra else int(numbers.get("i", NEWTON_ITERATIONS)),
                              warm_start="warm" in flags, solver="astra" if astra else "cg", astra=schedule,
                              groups=tuple(g for g in PARAMETER_GROUPS if g in flags) or None)
    except ConfigError as exc:
        raise ConfigError(f"unknown LDS estimator {name!r}: {exc}") from None
    candidates = int(numbers["c"]) if "c" in numbers else None
    return NewtonEstimator(config, sample_rows=int(numbers.get("r", NEWTON_SAMPLE_ROWS)), candidates=candidates,
                           with_bm25="bm25" in flags, sketched="sketch" in flags, checkpoints="cp" in flags)


def newton_config(name: str) -> NewtonConfig:
    """The solver settings of a ``newton[...]`` estimator (:func:`newton_estimator`)."""
    return newton_estimator(name).config


def is_unlearning_newton(name: str) -> bool:
    """Whether a name is ``unlearning@newton`` or one of its ``@`` options (bad options included)."""
    return name == UNLEARNING_NEWTON or name.startswith(UNLEARNING_NEWTON + "@")


def unlearning_settings(name: str, base: UnlearningConfig | None = None) -> UnlearningConfig:
    """``unlearning``: ``base`` (default: the service's defaults); ``unlearning@newton[@dD][@iN][@rN][@kfac|@ekfac]``:
    ``base`` with the Newton direction, its damping, steps, sample rows and factored preconditioner (a warm start with
    it) as the ``newton`` estimator of those options has them (no ASTRA: the service solves by conjugate gradient)."""
    base = base or UNLEARNING_SETTINGS
    if is_unlearning_newton(name):
        error = ConfigError(f"unknown LDS estimator {name!r}: unlearning@newton takes @dD, @iN, @rN and @kfac or "
                            "@ekfac (which also warm-starts)")
        try:
            estimator = newton_estimator(name[len(UNLEARNING) + 1:])
        except ConfigError:
            raise error from None
        config = estimator.config
        if config.solver is not Solver.CG or config.warm_start or estimator.candidates is not None or \
                estimator.sketched or config.groups is not None or estimator.checkpoints:
            raise error
        return replace(base, direction=Direction.NEWTON, newton_rows=estimator.sample_rows,
                       newton_iterations=config.max_iter, newton_damping=config.damping,
                       newton_factoring=config.factoring)
    return base
TRACIN_CHECKPOINTS = 4
"""Checkpoints TracIn-CP sums over: the last saved ones of the case's training (log-spaced, as Pythia's), the final
model included."""
TRACIN_MARKER = "tracin.json"
UNLEARNING_SETTINGS = UnlearningConfig()
"""The ``unlearning`` estimator's settings: the service's defaults."""
CANDIDATE_TOP, CANDIDATE_DEPTHS = 10, (30, 100, 300)
"""Candidate recall: the share of the exact stage's top ``CANDIDATE_TOP`` rows that an estimator's top N holds."""
LDSCase = TextCase | FinetuneCase
"""Trained from scratch on chunks of real text, or a pretrained model fine-tuned on a small set."""


@dataclass(frozen=True)
class FieldLDSSettings:
    retrains: int = 50
    """Models retrained without a random ``removed`` share of the rows (M)."""
    removed: float = 0.01
    """Share of the training rows each retrain drops."""
    halves: int = 20
    """Models retrained on random halves (the second column; 0: none)."""
    reseeded: int = 0
    """Models retrained without the first column's first ``reseeded`` random shares but from another training seed
    (init and order; fine-tuning: order), compared with the full model's scores: the second-seed column (0: none)."""
    zeroed: int = 0
    """Models retrained with the first column's first ``zeroed`` random shares weighted 0 in place instead of dropped
    (same batches, order and steps as the full model; 0: none)."""
    k: int = 16
    """Sketch projection per side (headwater's default)."""
    groups: tuple[str, ...] = DEFAULT_GROUPS
    """Parameter groups every sketch covers (:attr:`attribution.kinds.SketchConfig.groups`, the index's
    ``--modules``): the transformer blocks' Linear layers by default; ``embed`` and ``head`` add the input embedding
    and the output head."""
    damping: float | None = None
    """Every gradient estimator's damping unless its name gives one (None: each curvature kind's default)."""
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    seed: int = 0
    """Draws the removed rows, the halves, the shuffled control, the null and the bootstrap."""
    workers: int = field(default_factory=usable_cores)
    shuffles: int = 200
    bootstrap: int = 2000

    def __post_init__(self) -> None:
        object.__setattr__(self, "estimators", tuple(self.estimators))
        object.__setattr__(self, "groups", group_names(self.groups))
        for name in ("retrains", "halves", "reseeded", "zeroed"):  # Spearman over retrains needs 3
            if getattr(self, name) not in range(0, 100_000) or 0 < getattr(self, name) < 3:
                raise ConfigError(f"{name} must be 0 or at least 3, got {getattr(self, name)}")
        if self.retrains == self.halves == 0:
            raise ConfigError("no retrains: give retrains or halves (each at least 3)")
        for name in ("reseeded", "zeroed"):
            if getattr(self, name) > self.retrains:
                raise ConfigError(f"{name} ({getattr(self, name)}) retrains reuse the first column's drops: at most "
                                  f"retrains ({self.retrains})")
        if not 0 < self.removed < 1:
            raise ConfigError(f"removed must be a share in (0, 1), got {self.removed}")
        for name in ("k", "workers", "shuffles", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in self.estimators:
            parse_estimator(name)


@dataclass(frozen=True)
class FieldEstimator:
    """One parsed estimator name: ``gradient-ip/KIND``, ``gradient/KIND``, ``tracin-ip/KIND`` or ``tracin/KIND``
    (``family`` tracin; :mod:`evaluation.estimator_names`), or
    ``bm25`` / ``unlearning`` (``mode`` None, ``family`` their name). A gradient
    estimator may add ``@K`` (its own projection size per side instead of the settings' k) and ``@dD`` (its own
    damping), e.g. ``gradient-ip/ekfac_basis@256@d0.001``."""

    mode: ScoreMode | None
    kind: PreconditionMode | None
    k: int | None = None
    damping: float | None = None
    family: str = "gradient"


def parse_estimator(name: str) -> FieldEstimator:
    """The estimator a name stands for, or a clear error."""
    if name in (BM25, UNLEARNING):
        return FieldEstimator(None, None, family=name)
    if name == MAGIC or name.startswith(MAGIC + "@"):
        magic_from_step(name)  # a clear error for bad options
        return FieldEstimator(None, None, family=MAGIC)
    if is_unlearning_newton(name):
        unlearning_settings(name)  # a clear error for bad options
        return FieldEstimator(None, None, family=UNLEARNING)
    if name == NEWTON or name.startswith(NEWTON + "@"):
        return FieldEstimator(None, None, damping=newton_config(name).damping, family=NEWTON)
    if not is_gradient_name(name):
        raise ConfigError(f"unknown LDS estimator {name!r}: {GRAMMAR}, then optionally @K, a projection size, and "
                          f"@dD, a damping; or {BM25}, {UNLEARNING}, {UNLEARNING_NEWTON}, {NEWTON}[@dD][@iN] or "
                          f"{MAGIC}[@sN]")
    parsed = parse_gradient_name(name, what="LDS estimator")
    return FieldEstimator(parsed.mode, parsed.kind, parsed.k, parsed.damping,
                          family=TRACIN if parsed.tracin else "gradient")


def magic_from_step(name: str) -> int:
    """``magic`` (0) or ``magic@sN``: the first training step whose row weights the replay differentiates."""
    option = name[len(MAGIC) + 1:] if name.startswith(MAGIC + "@") else "s0"
    if name != MAGIC and not (option.startswith("s") and option[1:].isdigit() and int(option[1:]) > 0):
        raise ConfigError(f"unknown LDS estimator {name!r}: {MAGIC} takes @sN, the first step it differentiates "
                          "(N > 0)")
    return int(option[1:])


def estimator_damping(name: str, settings: FieldLDSSettings) -> float:
    """The damping an estimator is fitted with: its name's, the settings', or its kind's default."""
    estimator = parse_estimator(name)
    damping = estimator.damping or settings.damping
    if estimator.kind is None:
        return damping or DEFAULT_DAMPING
    return CurvatureConfig(kind=estimator.kind, damping=damping).damping


def dropped_rows(case: LDSCase, settings: FieldLDSSettings, kind: str, j: int) -> np.ndarray:
    """Row ids retrain ``kind``-``j`` leaves out (or, ``drop-zeroed``, weighs 0): a random ``removed`` share (``drop``,
    ``drop-reseeded`` and ``drop-zeroed`` alike), or the complement of a half."""
    if kind in (DROP, RESEEDED, ZEROED):
        count = max(1, round(case.rows * settings.removed))
        return np.sort(np.random.default_rng([settings.seed, 11, j]).choice(case.rows, count, replace=False))
    return np.sort(np.random.default_rng([settings.seed, 13, j]).choice(case.rows, case.rows - case.rows // 2,
                                                                         replace=False))


def kept_masks(case: LDSCase, settings: FieldLDSSettings, kind: str, count: int) -> np.ndarray:
    """``(count, rows)`` booleans: row i is trained on by retrain j."""
    masks = np.ones((count, case.rows), dtype=bool)
    for j in range(count):
        masks[j, dropped_rows(case, settings, kind, j)] = False
    return masks


def retrain_path(out: Path, kind: str, j: int) -> Path:
    return out / "retrains" / f"{kind}-{j:03d}.json"


def train_seed(kind: str) -> int:
    """The training seed offset a retrain kind uses: 0 (the full model's init and order), 1 for ``drop-reseeded``."""
    return 1 if kind == RESEEDED else 0


def retrain_key(case: LDSCase, dropped: np.ndarray, seed: int = 0, in_place: bool = False) -> dict:
    """What a retrain's losses depend on (``in_place``: the rows weighted 0, not dropped)."""
    return as_json({"case": asdict(case), "dropped_sha256": rows_digest(dropped), "dropped": len(dropped),
                    **({"train_seed": seed} if seed else {}), **({"zero_weight": True} if in_place else {})})


def retrain(out: Path, case: LDSCase, kind: str, j: int, dropped: list[int], key: dict) -> float:
    """Train one retrain from scratch (one torch thread, so every retrain computes alike whether it runs in a
    worker or here), record its query losses, delete the model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _retrain(out, case, kind, j, dropped, key)
    finally:
        torch.set_num_threads(threads)


def _retrain(out: Path, case: LDSCase, kind: str, j: int, dropped: list[int], key: dict) -> float:
    directory = case.directory(out)
    scratch = out / "retrains" / f".{kind}-{j:03d}"
    shutil.rmtree(scratch, ignore_errors=True)
    seed = train_seed(kind)
    in_place = kind == ZEROED  # the full order, the dropped rows weighted 0
    order = case.order(np.zeros(0, dtype=np.int64) if in_place else np.asarray(dropped, dtype=np.int64), seed)
    started = time.perf_counter()
    model, _ = train(case.settings(steps_for(len(order), case.batch_size), seed), directory / "data" / "document",
                     len(load_tokenizer(directory / "tokenizer")), scratch, rows=order, save_revisions=False,
                     init=case.init_model(out), zeroed=dropped if in_place else ())
    losses = chunk_losses(model, query_chunks(directory))
    seconds = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    record = {"key": key, "losses": losses.tolist(), "steps": steps_for(len(order), case.batch_size),
              "seconds": round(seconds, 2), "load_average": round(os.getloadavg()[0], 2)}
    write_whole(retrain_path(out, kind, j), json.dumps(record))
    return seconds


def run_retrains(out: Path, case: LDSCase, settings: FieldLDSSettings,
                 on_done: Callable[[str, int], None] | None = None) -> dict[str, list[dict]]:
    """Every missing retrain (``workers`` processes); returns the records by kind, in order."""
    (out / "retrains").mkdir(parents=True, exist_ok=True)
    plan = ([(DROP, j) for j in range(settings.retrains)] + [(HALF, j) for j in range(settings.halves)]
            + [(RESEEDED, j) for j in range(settings.reseeded)] + [(ZEROED, j) for j in range(settings.zeroed)])
    todo = []
    for kind, j in plan:
        dropped = dropped_rows(case, settings, kind, j)
        key = retrain_key(case, dropped, train_seed(kind), in_place=kind == ZEROED)
        path = retrain_path(out, kind, j)
        if path.is_file() and json.loads(path.read_text())["key"] == key:
            if on_done:
                on_done(kind, j)
            continue
        todo.append((out, case, kind, j, dropped.tolist(), key))
    log.info("retrains: %d of %d to train", len(todo), len(plan))
    done = None if on_done is None else (lambda job: on_done(job[2], job[3]))
    run_jobs(retrain, todo, settings.workers, done)
    records: dict[str, list[dict]] = {DROP: [], HALF: [], RESEEDED: [], ZEROED: []}
    for kind, j in plan:
        records[kind].append(json.loads(retrain_path(out, kind, j).read_text()))
    return records


SCORE_BYTES_PER_NUMBER = 16
"""Bytes a sketch estimator holds per row and sketch number at its peak: the raw float32 sketches, the prepared
float32 vectors and their float64 copy for the scores."""


def available_bytes() -> int | None:
    """Memory the kernel says a new allocation can still get (``MemAvailable``); None where it does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_sketch_memory(k: int, rows: int, dim: int, available: int | None = None) -> None:
    """Refuse, before the sketch pass, a projection size whose scores would not fit in memory (the kernel kills a
    process that overcommits; it raises nothing)."""
    require_memory(rows * dim * SCORE_BYTES_PER_NUMBER, f"sketch estimators at k={k} hold {rows:,} rows × {dim:,} "
                   "numbers", "give them a smaller @K", available)


def require_memory(need: int, what: str, advice: str, available: int | None = None) -> None:
    """Refuse work that would hold ``need`` bytes at its peak when less is available (``what`` and ``advice`` frame
    the message)."""
    available = available_bytes() if available is None else available
    if available is not None and need > available:
        raise OutOfMemoryError(f"{what}: about {need / 2**30:.1f} GiB at their peak, {available / 2**30:.1f} GiB "
                               f"available; {advice}")


class Scorer:
    """Every training row's score for every query chunk, per estimator, with the full model (one sketch pass per
    projection size)."""

    def __init__(self, out: Path, case: LDSCase, settings: FieldLDSSettings) -> None:
        self.out, self.case, self.settings = out, case, settings
        directory = case.directory(out)
        self.tokenizer = load_tokenizer(directory / "tokenizer")
        self.rows = training_rows(directory)
        self.queries = query_chunks(directory)
        self.model_dir = directory / "model"
        self.passes: dict[int, tuple[list, KroneckerStatistics, list[torch.Tensor]]] = {}
        self.sketch_seconds = 0.0

    def sketch_config(self, k: int) -> SketchConfig:
        """The sketches at projection size k over the settings' parameter groups."""
        return SketchConfig(k=k, groups=self.settings.groups)

    def sketched(self, k: int) -> tuple[list, KroneckerStatistics, list[torch.Tensor]]:
        """The checkpoints, Kronecker statistics and raw sketches of every training row at projection size k."""
        if k not in self.passes:
            checkpoints = load_checkpoints(self.model_dir, (None,), self.sketch_config(k))
            check_sketch_memory(k, len(self.rows), sum(c.sketcher.dim for c in checkpoints))
            statistics = KroneckerStatistics(Fisher.EMPIRICAL, CurvatureConfig().factor_limit)
            started = time.perf_counter()
            raw = sketch_all(GradientEncoder(checkpoints, self.tokenizer), self.rows, None, statistics=[statistics])
            self.sketch_seconds += time.perf_counter() - started
            self.passes[k] = (checkpoints, statistics, raw)
        return self.passes[k]

    def scores(self, name: str) -> np.ndarray:
        estimator = parse_estimator(name)
        if estimator.family == BM25:
            return bm25_matrix([self.tokenizer.decode(r) for r in self.rows],
                               [self.tokenizer.decode(q.tolist()) for q in self.queries])
        if estimator.family == UNLEARNING:
            targets = [training_batch([q.tolist()]) for q in self.queries]  # every token after the first
            return score_every_row(load_model(self.model_dir), self.rows, targets, unlearning_settings(name))
        if estimator.family == NEWTON:
            return self.newton_scores(name)
        if estimator.family == MAGIC:
            return self.magic_scores(magic_from_step(name))
        curvature = CurvatureConfig(kind=estimator.kind, damping=estimator_damping(name, self.settings))
        k = estimator.k or self.settings.k
        if estimator.family == TRACIN:
            model_dir, plan = tracin_checkpoints(self.out, self.case)
            checkpoints = load_checkpoints(model_dir, plan.revisions, self.sketch_config(k))
            statistics = [KroneckerStatistics(Fisher.EMPIRICAL, curvature.factor_limit) for _ in checkpoints]
            raw = sketch_all(GradientEncoder(checkpoints, self.tokenizer), self.rows, None, statistics=statistics)
            encoder, vectors = fitted_vectors(checkpoints, self.tokenizer, self.rows, raw, curvature, estimator.mode,
                                              statistics=statistics, weights=plan.weights)
        else:
            checkpoints, statistic, raw = self.sketched(k)
            encoder, vectors = fitted_vectors(checkpoints, self.tokenizer, self.rows, raw, curvature, estimator.mode,
                                              statistics=[statistic])
        q = np.stack([encoder.encode_query_ids(c[:1].tolist(), c[1:].tolist()).vector.numpy()
                      for c in self.queries])
        return (q.astype(np.float64) @ vectors.T.astype(np.float64)).astype(np.float32)

    def through_sketches(self, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        """Every row's stored sketch (the settings' k) against the projection of a direction ``x`` over ``model``'s
        parameters: the inner product that estimates ``∇ℓ_row · x`` over the sketched modules (``(rows,)``)."""
        checkpoints, _, raw = self.sketched(self.settings.k)
        projected = checkpoints[0].sketcher.project(unflatten(x, parameters_of(model)))
        return (raw[0].double() @ projected.double()).numpy()

    def magic_scores(self, from_step: int = 0) -> np.ndarray:
        """Each row's ``−∂L_q/∂w_i`` through an exact replay of the full model's training (:mod:`evaluation.replay`):
        the same init, order and schedule; refused up front when its trajectory would not fit in memory."""
        directory = self.case.directory(self.out)
        order = self.case.order(np.zeros(0, dtype=np.int64))
        replay = replay_of(self.case.settings(steps_for(len(order), self.case.batch_size)),
                           directory / "data" / "document", len(self.tokenizer), order,
                           init=self.case.init_model(self.out))
        replay.check_from_step(from_step)
        require_memory(replay.trajectory_bytes(from_step), f"{MAGIC} keeps every step's weights and AdamW moments",
                       "leave it out on this case")
        with eager_attention(replay.model):  # the attention the reverse sweep differentiates
            replayed = replay.query_losses(replay.final_weights(), self.queries)
        gap = np.abs(replayed - chunk_losses(load_model(directory / "model"), self.queries)).max()
        if gap > REPLAY_TOLERANCE:
            raise ConfigError(f"{MAGIC}: the replay does not reproduce the case's model (query losses differ by up to "
                              f"{gap:.2g} nats): the trainer and evaluation.replay disagree")
        return magic_scores(replay, self.queries, len(self.rows), from_step).astype(np.float32)

    def newton_scores(self, name: str, recall: np.ndarray | None = None) -> np.ndarray:
        """Each row's exact loss change along each query's Newton direction ``(G + λ)⁻¹ ∇ℓ(query)``, ``G`` over
        the estimator's evenly spaced sample rows; no projection. How the solver did goes to ``NAME.solver.json``
        beside the scores (:func:`solver_summaries`). A two-stage estimator scores only the recall stage's top rows:
        ``recall``'s when given (the run's own recall-stage scores), else :func:`recall_stage` computes them; with
        ``@sketch`` the recall stage (or, alone, the answer) is each row's sketch against the direction's projection,
        from the same solve; with ``@cp`` the mean of every TracIn-CP checkpoint's exact scores."""
        estimator = newton_estimator(name)
        if estimator.candidates is not None and recall is None and not estimator.sketched:
            recall = recall_stage(estimator, self.scores)
        recalled = None if recall is None else top_rows(recall, estimator.candidates)
        lexical = self.scores(BM25) if estimator.sketched and estimator.with_bm25 else None
        picks = sample_picks(len(self.rows), estimator.sample_rows)
        sample = training_batch([self.rows[i] for i in picks])
        runs: list[tuple[int, float, float]] = []
        if estimator.checkpoints:  # one stage: the mean of every checkpoint's exact scores
            model_dir, plan = tracin_checkpoints(self.out, self.case)
            scores = np.mean([self.staged_scores(estimator, load_model(model_dir, revision=revision), sample, None,
                                                 None, runs) for revision in plan.revisions], axis=0)
        else:
            scores = self.staged_scores(estimator, load_model(self.model_dir), sample, recalled, lexical, runs)
        products, residuals, seconds = (np.asarray(v, dtype=float) for v in zip(*runs, strict=True))
        summary = {"sample_rows": len(picks), "products": float(products.mean()),
                   "residual_median": float(np.median(residuals)), "residual_max": float(residuals.max()),
                   "solve_seconds": float(seconds.mean())}
        (self.out / "scores").mkdir(parents=True, exist_ok=True)
        (self.out / "scores" / f"{name}.solver.json").write_text(json.dumps(summary, indent=2))
        return scores.astype(np.float32)

    def staged_scores(self, estimator: NewtonEstimator, model: torch.nn.Module, sample: TokenBatch,
                      recalled: np.ndarray | None, lexical: np.ndarray | None,
                      runs: list[tuple[int, float, float]]) -> np.ndarray:
        """Each query's row scores at ``model``: exact for every row, or for the ``recalled`` rows only (0
        elsewhere), or read through the sketches (alone, or recalling the rows the exact stage scores); how each solve
        did is appended to ``runs``."""
        out = []
        solver = NewtonSolver(model, sample, estimator.config)
        for q, query in enumerate(self.queries):
            found = solver.direction(training_batch([query.tolist()]))
            log.info("newton: %d steps, %d products, residual %.1e, %.1f s", found.iterations, found.products,
                     found.residual, found.seconds)
            runs.append((found.products, found.residual, found.seconds))
            picked = None if recalled is None else recalled[q]
            if estimator.sketched:
                through = self.through_sketches(model, found.x)
                if estimator.candidates is None:
                    out.append(through)
                    continue
                ranking = through[None] if lexical is None else pooled(through[None], lexical[q : q + 1])
                picked = top_rows(ranking, estimator.candidates)[0]
            if picked is None:
                out.append(score_rows(model, self.rows, found.x).numpy())
            else:  # the exact stage scores the recalled rows only
                row = np.zeros(len(self.rows), dtype=np.float32)
                row[picked] = score_rows(model, [self.rows[i] for i in picked], found.x).numpy()
                out.append(row)
        return np.stack(out)


def sample_picks(rows: int, count: int) -> np.ndarray:
    """The ``count`` evenly spaced rows (of ``rows``) whose Gauss-Newton matrix a ``newton`` estimator inverts."""
    return np.unique(np.linspace(0, rows - 1, min(count, rows)).astype(int))


@dataclass(frozen=True)
class TracInPlan:
    """What TracIn-CP sums over for one case: the revisions of its training (the last ``TRACIN_CHECKPOINTS`` - 1
    saved, log-spaced as Pythia's, and the final model) and each one's weight, the learning rate of the step taken
    from it (revision ``stepN`` is saved before step N, which runs at ``learning_rate(N)``)."""

    steps: int
    revisions: tuple[str | None, ...]
    weights: tuple[float, ...]


def tracin_plan(case: LDSCase) -> TracInPlan:
    """The case's TracIn-CP revisions and weights (no training: they follow from the schedule)."""
    steps = steps_for(len(case.order()), case.batch_size)
    settings = case.settings(steps)
    saved = sorted(s for s in pythia_checkpoint_steps(steps) if 0 < s < steps)[-(TRACIN_CHECKPOINTS - 1):]
    if not saved:
        raise ConfigError(f"TracIn-CP needs checkpoints before the final model; this case trains {steps} step(s)")
    return TracInPlan(steps, (*(f"step{s}" for s in saved), None),
                      (*(learning_rate(s, settings) for s in saved), learning_rate(steps - 1, settings)))


def tracin_checkpoints(out: Path, case: LDSCase) -> tuple[Path, TracInPlan]:
    """The case's training rerun with its checkpoints saved (``CASE_DIR/tracin/model``, its marker naming the
    case written last, so another case never reuses it; one torch thread, as the retrains) and the plan."""
    plan, directory = tracin_plan(case), case.directory(out)
    rerun = directory / "tracin"
    if reuse_or_clear(rerun, TRACIN_MARKER, case, "TracIn-CP rerun"):
        return rerun / "model", plan
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, losses = train(case.settings(plan.steps), directory / "data" / "document",
                          len(load_tokenizer(directory / "tokenizer")), rerun / "model",
                          rows=case.order(), save_revisions=True,
                          init=case.init_model(out))
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        drift = max(float((a - b).abs().max()) for a, b in zip(load_model(rerun / "model").parameters(),
                                                               load_model(directory / "model").parameters(),
                                                               strict=True))
    log.info("TracIn-CP checkpoints: the rerun's final weights differ from the case model's by at most %.2g", drift)
    write_marker(rerun, TRACIN_MARKER, case, plan.steps, losses)
    return rerun / "model", plan


def extra_key(name: str, case: LDSCase, settings: FieldLDSSettings) -> dict:
    """What an estimator's scores depend on beyond the case, k and damping: the unlearning settings, or TracIn-CP's
    revisions, weights and scoring (``tracin/KIND`` meant the inner product before the names were unified: the
    scoring in the key keeps such scores from being read as the cosine form)."""
    estimator = parse_estimator(name)
    family = estimator.family
    if family == UNLEARNING:
        return {"unlearning": asdict(unlearning_settings(name))}
    if family == NEWTON:
        found = newton_estimator(name)
        two_stages = {} if found.candidates is None else {
            "candidates": found.candidates, "with_bm25": found.with_bm25,
            **({"recall": SKETCH_RECALL} if found.sketched else
               {"recall": RECALL_STAGE, "recall_damping": estimator_damping(RECALL_STAGE, settings)})}
        sketch = {"sketched": True} if found.sketched else {}  # read through the settings' k (in the key)
        config = {key: value for key, value in asdict(found.config).items()
                  if not (key == "groups" and value is None)}  # every parameter: the key scores had before groups
        along = {"revisions": list(tracin_plan(case).revisions)} if found.checkpoints else {}
        return {"newton": {**config, "sample_rows": found.sample_rows, **two_stages, **sketch, **along}}
    if family == TRACIN:
        plan = tracin_plan(case)
        return {"revisions": list(plan.revisions), "weights": list(plan.weights), "mode": estimator.mode.value}
    return {}


def groups_key(name: str, settings: FieldLDSSettings) -> dict:
    """The sketched parameter groups, in the key of the estimators that read sketches, when not the default's (so
    scores cached before the setting existed stay valid)."""
    family = parse_estimator(name).family
    if family == NEWTON:
        found = newton_estimator(name)
        reads_sketches = found.sketched or found.candidates is not None  # a two-stage recall reads the index's
    else:
        reads_sketches = family in ("gradient", TRACIN)
    return {"groups": list(settings.groups)} if reads_sketches and settings.groups != DEFAULT_GROUPS else {}


def top_rows(scores: np.ndarray, depth: int) -> np.ndarray:
    """Each query's ``depth`` highest-scored rows, best first (``(queries, min(depth, rows))`` row ids)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :min(depth, scores.shape[1])]


def staged(exact: np.ndarray, recall: np.ndarray, depth: int) -> np.ndarray:
    """Two stages from whole score matrices: ``exact``'s scores of ``recall``'s top ``depth`` rows of each query, 0
    for every other row (what ``newton@cN`` computes without scoring the other rows)."""
    out = np.zeros_like(exact)
    picked = top_rows(recall, depth)
    rows = np.arange(exact.shape[0])[:, None]
    out[rows, picked] = exact[rows, picked]
    return out


def recall_stage(estimator: NewtonEstimator, scores_of: Callable[[str], np.ndarray]) -> np.ndarray:
    """A two-stage estimator's recall scores: the index default's (:data:`RECALL_STAGE`), or pooled with BM25's (a
    ``@sketch`` estimator's recall stage comes from its own solve: :meth:`Scorer.newton_scores`)."""
    index = scores_of(RECALL_STAGE)
    return pooled(index, scores_of(BM25)) if estimator.with_bm25 else index


def two_stages_from(name: str, scores: dict[str, np.ndarray]) -> np.ndarray | None:
    """A ``newton@cN`` estimator's scores masked from its one-stage twin's (a ``newton`` of the same solver settings
    that scores every row) and the recall stage's, when this run has them already (listed before it): the same
    numbers without solving again; else None (and for any other estimator). With ``@sketch`` the recall stage is the
    one-stage ``newton@sketch`` of the same solver settings."""
    if not is_two_stage(name):
        return None
    estimator = newton_estimator(name)

    def named(wanted: NewtonEstimator) -> str | None:
        return next((n for n in scores if parse_family(n) == NEWTON and newton_estimator(n) == wanted), None)

    twin = named(replace(estimator, candidates=None, with_bm25=False, sketched=False))
    if estimator.sketched:
        through = named(replace(estimator, candidates=None, with_bm25=False))
        if twin is None or through is None or (estimator.with_bm25 and BM25 not in scores):
            return None
        recall = pooled(scores[through], scores[BM25]) if estimator.with_bm25 else scores[through]
        return staged(scores[twin], recall, estimator.candidates)
    needed = (RECALL_STAGE, BM25) if estimator.with_bm25 else (RECALL_STAGE,)
    if twin is None or not all(n in scores for n in needed):
        return None
    return staged(scores[twin], recall_stage(estimator, lambda n: scores[n]), estimator.candidates)


def is_two_stage(name: str) -> bool:
    """Whether an estimator name is a two-stage ``newton@cN``."""
    return parse_family(name) == NEWTON and newton_estimator(name).candidates is not None


def candidate_recall(exact: np.ndarray, recall: np.ndarray, depth: int, top: int = CANDIDATE_TOP) -> float:
    """Mean over queries of the share of ``exact``'s top ``top`` rows that ``recall``'s top ``depth`` holds: how well
    an estimator (a stored index) serves as the recall stage of an exact re-ranker (both ``(queries, rows)``)."""
    top = min(top, exact.shape[1])
    best, found = top_rows(exact, top), top_rows(recall, depth)
    return float(np.mean([len(set(b) & set(f)) / top for b, f in zip(best, found, strict=True)]))


def pooled(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Scores whose ranking takes rows alternately from ``first``'s and ``second``'s rankings, each row once: a pool
    of N candidates holds about N/2 from each (both ``(queries, rows)``)."""
    out = np.zeros(first.shape, dtype=np.float64)
    for q in range(first.shape[0]):
        orders = [np.argsort(-first[q], kind="stable"), np.argsort(-second[q], kind="stable")]
        placed = np.zeros(first.shape[1], dtype=bool)
        position = 0
        for row in np.stack(orders, axis=1).reshape(-1):
            if not placed[row]:
                placed[row] = True
                out[q, row] = -position
                position += 1
    return out


def candidate_table(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Each estimator's candidate recall of ``newton``'s top rows at every depth (empty without ``newton``; two-stage
    estimators left out: their candidates are their recall stage's); with BM25 among them, also each stored-index
    estimator's pool shared with BM25 (``NAME + bm25``: N/2 from each; ``newton@sketch`` is such an estimator: the
    stored sketches queried by the Newton direction)."""
    if NEWTON not in scores:
        return {}
    candidates = {name: s for name, s in scores.items() if name not in (NEWTON, SHUFFLED) and not is_two_stage(name)}

    def from_the_index(name: str) -> bool:
        family = parse_family(name)
        if family == NEWTON:
            return newton_estimator(name).sketched
        return name != BM25 and family not in (UNLEARNING, MAGIC)

    if BM25 in candidates:
        candidates |= {f"{name} + {BM25}": pooled(s, scores[BM25]) for name, s in list(candidates.items())
                       if from_the_index(name)}
    return {name: {str(d): candidate_recall(scores[NEWTON], s, d) for d in CANDIDATE_DEPTHS}
            for name, s in candidates.items()}


def parse_family(name: str) -> str | None:
    """An estimator's family, or None for an external score file's name."""
    try:
        return parse_estimator(name).family
    except ConfigError:
        return None


def external_scores(out: Path, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """``OUT/external/NAME.npy`` score matrices other tools wrote for this case (wrong shapes refused)."""
    found = {}
    for path in sorted((out / "external").glob("*.npy")):
        scores = np.load(path)
        if scores.shape != shape:
            raise ConfigError(f"{path} has shape {scores.shape}, the case needs (queries, rows) = {shape}")
        found[path.stem] = scores
    return found


def run_field_lds(out: Path, case: LDSCase, settings: FieldLDSSettings,
                  on_retrain: Callable[[str, int], None] | None = None) -> dict:
    """Build the case, retrain, score and summarize; writes ``field_lds.json`` / ``.md`` and returns the report."""
    started = time.perf_counter()
    directory = case.build(out)
    build_seconds = time.perf_counter() - started
    records = run_retrains(out, case, settings, on_retrain)
    full_losses = chunk_losses(load_model(directory / "model"), query_chunks(directory))
    scorer: Scorer | None = None
    scores, score_seconds = {}, {}
    for name in settings.estimators:
        key = as_json({"case": asdict(case), "k": parse_estimator(name).k or settings.k,
                       "damping": estimator_damping(name, settings), "estimator": name,
                       **extra_key(name, case, settings), **groups_key(name, settings)})

        def compute(name: str = name) -> np.ndarray:
            nonlocal scorer
            derived = two_stages_from(name, scores)
            if derived is not None:  # its seconds are the masking's: its cost is the twin's solve and N rows a query
                return derived
            scorer = scorer or Scorer(out, case, settings)  # loads the case's rows and tokenizer: only when needed
            if not is_two_stage(name) or newton_estimator(name).sketched:  # @sketch: recalled in its own solve
                return scorer.scores(name)
            recall = recall_stage(newton_estimator(name), lambda n: scores[n] if n in scores else scorer.scores(n))
            return scorer.newton_scores(name, recall)

        scores[name], score_seconds[name] = cached(out / "scores", name.replace("/", "__"), key, compute)
    external = external_scores(out, (case.queries, case.rows))
    scores.update(external)
    scores[SHUFFLED] = shuffle_rows(scores[settings.estimators[0]], np.random.default_rng([settings.seed, 1]))
    columns, leads = {}, {}
    for kind, count in ((DROP, settings.retrains), (HALF, settings.halves), (RESEEDED, settings.reseeded),
                        (ZEROED, settings.zeroed)):
        if count == 0:
            continue
        losses = np.asarray([r["losses"] for r in records[kind]]).T  # (queries, retrains)
        masks = kept_masks(case, settings, kind, count)
        columns[kind] = {}
        # One joint draw of queries and retrains serves every estimator's interval and the paired lead.
        draws = dict(zip(scores, two_way_draws(losses, [predicted(s, masks) for s in scores.values()],
                                               settings.bootstrap, np.random.default_rng([settings.seed, 4])).T,
                         strict=True))
        for m, (name, s) in enumerate(scores.items()):
            values = lds_per_query(losses, s, masks)
            null = permutation_null(losses, s, masks, settings.shuffles, np.random.default_rng([settings.seed, 2, m]))
            columns[kind][name] = summarize(values, null, settings.bootstrap,
                                            np.random.default_rng([settings.seed, 3, m]),
                                            two_way=percentile_interval(draws[name]))
        leads[kind] = lead_over_peers(columns[kind], draws, set(external))
    report = {
        "schema_version": SCHEMA_VERSION,
        "case": asdict(case),
        "settings": {**asdict(settings), "estimators": list(settings.estimators)},
        "lds": columns,
        "lead": {kind: lead for kind, lead in leads.items() if lead},
        "candidate_recall": candidate_table(scores),
        "solvers": solver_summaries(out, settings.estimators),
        "full_model_loss": float(full_losses.mean()),
        "retrain_loss_spread": {kind: float(np.asarray([r["losses"] for r in recs]).std(axis=0).mean())
                                for kind, recs in records.items() if recs},
        "timings": {"case_seconds": round(build_seconds, 1), "score_seconds": score_seconds,
                    "retrain_seconds": {k: [r["seconds"] for r in v] for k, v in records.items()}},
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }
    write_report_files(report, out, "field_lds", markdown)
    return report


def lead_over_peers(column: dict[str, dict], draws: dict[str, np.ndarray], peers: set[str]) -> dict:
    """headwater's best estimator in one column (BM25, the control and the replay ceiling aside) against the best
    peer (an external score file): their means, the ratio, and the interval of the difference over ``draws`` (each
    estimator's mean LDS in every joint draw of queries and retrains, the same draws for all: paired) — the best of
    each side chosen again in every draw, so picking the winners on the same data does not flatter the lead (empty
    when either side is missing)."""
    ours = [n for n in column if n not in peers and n not in (SHUFFLED, BM25) and parse_family(n) != MAGIC
            and np.isfinite(column[n]["mean"])]
    theirs = [n for n in column if n in peers and np.isfinite(column[n]["mean"])]
    if not ours or not theirs:
        return {}
    best = max(ours, key=lambda n: column[n]["mean"])
    peer = max(theirs, key=lambda n: column[n]["mean"])
    a, b = column[best]["mean"], column[peer]["mean"]
    mine, peers_best = (np.where(np.isnan(d), -np.inf, d).max(axis=1)
                        for d in (np.stack([draws[n] for n in ours], axis=1),
                                  np.stack([draws[n] for n in theirs], axis=1)))
    with np.errstate(invalid="ignore"):  # −inf − −inf where a draw has no value on a side: NaN, left out below
        difference = np.where(np.isfinite(mine) & np.isfinite(peers_best), mine - peers_best, np.nan)
    return {"ours": best, "peer": peer, "ratio": a / b if b > 0 else None, "difference": a - b,
            "difference_ci95": percentile_interval(difference)}


def solver_summaries(out: Path, estimators: Sequence[str]) -> dict[str, dict]:
    """How each ``newton`` estimator's solver did (written beside its scores when they were computed)."""
    found = {}
    for name in estimators:
        path = out / "scores" / f"{name}.solver.json"
        if parse_estimator(name).family == NEWTON and path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def markdown(report: dict) -> str:
    c, s = report["case"], report["settings"]
    if "base" in c:  # the fine-tuning variant
        b = c["base"]
        what = (f"GPT-NeoX {b['num_layers']}×{b['hidden_size']} pretrained {b['epochs']} epochs on {b['rows']} "
                f"chunks of {', '.join(b['sources'])}, then fine-tuned {c['epochs']} epochs on {c['rows']} chunks of "
                f"{c['source']}; {c['queries']} held-out {c['source']} query chunks (mean loss "
                f"{report['full_model_loss']:.2f} nats). Retrains fine-tune the same pretrained weights in the same "
                "order")
    else:
        what = (f"GPT-NeoX {c['num_layers']}×{c['hidden_size']} trained {c['epochs']} epochs on {c['rows']} chunks "
                f"of {c['seq_len'] + 1} tokens of real text; {c['queries']} held-out query chunks (mean loss "
                f"{report['full_model_loss']:.2f} nats). Retrains from the same init and order")
    title = "# LDS on the field's protocol" + (", fine-tuning variant" if "base" in c else "")
    lines = [title, "",
             f"{what}: {s['retrains']} without {s['removed']:.0%} of the rows, {s['halves']} on random halves"
             + (f", {s['reseeded']} without the first {s['reseeded']} of those shares but from another training seed "
                "(init and order; fine-tuning: order)" if s.get("reseeded") else "")
             + (f", {s['zeroed']} with the first {s['zeroed']} of those shares weighted 0 in place (same batches and "
                "steps)" if s.get("zeroed") else "") + ". LDS(z) = "
             "Spearman over retrains of z's loss and −Σ scores of the rows trained on; mean over queries, "
             f"bootstrap 95 % interval, p: share of {s['shuffles']} row permutations of the method's own scores "
             "scoring at least as high. Published (GPT-2, WikiText): EK-FAC 0.44-0.47, TrackStar 0.24, "
             "identity 0.12.", ""]
    kinds = list(report["lds"])
    labels = {DROP: f"drop {s['removed']:.0%}", HALF: "halves", RESEEDED: f"drop {s['removed']:.0%}, other seed",
              ZEROED: f"zero {s['removed']:.0%} in place"}
    both = all("ci95_two_way" in v for k in kinds for v in report["lds"][k].values())
    head = " | ".join(f"{labels[k]}: LDS | 95 % CI" + (" | CI, retrains too" if both else "") + " | p" for k in kinds)
    lines += [f"| estimator | {head} |", "|---|" + ("---|---|---|---|" if both else "---|---|---|") * len(kinds)]
    for name in report["lds"][kinds[0]]:
        cells = []
        for k in kinds:
            v = report["lds"][k][name]
            lo, hi = v["ci95"]
            wide = " | [{:.3f}, {:.3f}]".format(*v["ci95_two_way"]) if both else ""
            cells.append(f"{v['mean']:.3f} | [{lo:.3f}, {hi:.3f}]{wide} | {v['p_value']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if both:
        lines += ["", "95 % CI: queries resampled; *CI, retrains too*: queries and retrains resampled together (every "
                  "query's loss is measured on the same retrains, so their errors move together: the interval to "
                  "read for 'above zero' or 'above another')."]
    leads = report.get("lead") or {}
    lines += [""] if leads and not both else []
    for k, lead in leads.items():
        lo, hi = lead["difference_ci95"]
        ratio = f"{lead['ratio']:.2f}×" if lead["ratio"] is not None else "—"
        lines.append(f"- {labels[k]}: headwater's best, {lead['ours']}, against the best peer, {lead['peer']}: "
                     f"{ratio}, difference {lead['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired, queries and "
                     "retrains resampled, each side's best chosen again in every draw).")
    recall = report.get("candidate_recall") or {}
    if recall:
        depths = list(next(iter(recall.values())))
        lines += ["", f"Candidate recall: the share of newton's top {CANDIDATE_TOP} rows (the exact stage) that each "
                  "estimator's top N holds, mean over queries — how well it serves as the recall stage (`X + bm25`: "
                  "a pool of N taken alternately from X's and BM25's rankings).", "",
                  "| estimator | " + " | ".join(f"top {d}" for d in depths) + " |",
                  "|---|" + "---|" * len(depths)]
        lines += [f"| {name} | " + " | ".join(f"{v[d]:.2f}" for d in depths) + " |" for name, v in recall.items()]
    solvers = report.get("solvers") or {}
    if solvers:
        lines += ["", "Solvers: Gauss-Newton products over the whole sample per query (ASTRA's batches counted as "
                  "their share of it, + 1 to report its residual; not counted: 4 once per sample to estimate the mean "
                  "eigenvalue), the relative residual ‖(G + λ)x − g‖ / ‖g‖, mean seconds per query to find x "
                  "(the first query's include fitting the K-FAC / EK-FAC preconditioner once).", "",
                  "| estimator | sample rows | products | residual (median) | residual (max) | s/query |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {v['sample_rows']} | {v['products']:.0f} | {v['residual_median']:.2f} | "
                  f"{v['residual_max']:.2f} | {v['solve_seconds']:.1f} |" for name, v in solvers.items()]
    return "\n".join(lines) + "\n"
