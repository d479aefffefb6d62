"""The curvature seam: how a fitted preconditioner plugs into scoring, and how it is fitted and stored.

A :class:`Curvature` transforms raw sketches on the training side and on the query side
(``attribution.scoring`` calls ``apply_train``/``apply_query``), and names the sketcher the query side
uses (``query_sketcher``): the training one for sketch-space kinds, folded projections for K-FAC
(``Sketcher.folded``), an exact per-module route for EK-FAC. Each kind registers a fit and a load function
in :data:`KINDS`, and, when it needs them, the per-module statistics its fit reads from the sketch pass
(``attribution.sketch.ModuleStatistics``, e.g. K-FAC's Kronecker factors: gathered per shard by the
indexer, summed at merge). Sketch-space kinds fit on an evenly spaced sample of raw sketches (the same
sample whatever the sharding), gathered by :func:`fit_curvature`; EK-FAC also takes a second pass over an
evenly spaced sample of training rows.

Stored curvatures are one safetensors file each, with any number of named tensors and a
``kind`` entry in the metadata.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import safe_open

from attribution.batching import TokenBatch, training_batch
from attribution.config import CurvatureConfig
from attribution.eigenbasis import EigenbasisCurvature
from attribution.errors import ConfigError
from attribution.kfac import EKFACCurvature, KFACCurvature, RowSample, WhitenedKFACCurvature
from attribution.kronecker import KroneckerStatistics
from attribution.preconditioner import (
    BlockCovarianceAccumulator,
    BlockPreconditioner,
    CovarianceAccumulator,
    Preconditioner,
    PreconditionMode,
)
from attribution.sketch import Sketcher


class QuerySketcher(Protocol):
    """What sketches the query side: a ``Sketcher``, or a curvature's own route to the same ``(B, D)`` sketches."""

    def sketch(self, batch: TokenBatch, window: int | None = None) -> torch.Tensor: ...


class Curvature(Protocol):
    """A fitted preconditioner, applied to sketches ``(..., D)`` of one checkpoint."""

    mode: PreconditionMode

    def apply_train(self, sketches: torch.Tensor) -> torch.Tensor: ...

    def apply_query(self, sketches: torch.Tensor) -> torch.Tensor: ...

    fit_seconds: float | None
    """Wall time of the fit (set by :func:`fit_curvature`)."""

    def query_sketcher(self, sketcher: Sketcher) -> QuerySketcher:
        """What sketches the query side of a checkpoint whose projections are ``sketcher``'s."""
        ...

    def train_sketcher(self, sketcher: Sketcher) -> Sketcher:
        """What sketches the training rows: ``sketcher`` itself, or folded projections (whitened sketches)."""
        ...

    def describe(self) -> dict:
        """What the manifest records about it (kind, damping, bytes, fit seconds, …)."""
        ...

    def save(self, path: str | Path) -> None: ...


class SketchPassStatistics(Protocol):
    """Statistics a kind gathers while the training rows are sketched, summable over shards and ranks."""

    def sketch_with(self, sketcher: Sketcher, batch: TokenBatch, window: int | None = None) -> torch.Tensor:
        """``sketcher.sketch(batch, window)``, gathering this batch's statistics along the way."""
        ...

    def merge(self, other: SketchPassStatistics) -> None: ...

    def save(self, path: str | Path) -> None: ...


@dataclass
class FitInputs:
    """What a kind fits on: raw sketch blocks (sampled by sketch-space kinds) and, where the caller has them, the
    sketcher, the summed sketch-pass statistics and a sampler of training rows (for second passes)."""

    blocks: Sequence
    dim: int
    sketcher: Sketcher | None = None
    statistics: SketchPassStatistics | None = None
    rows: RowSample | None = None

    def modules(self) -> tuple[list[str], list[int]]:
        """The sketch's modules and their lengths, in order (one block of all ``dim`` without a sketcher)."""
        if self.sketcher is None:
            return ["all"], [self.dim]
        sizes = [p_in.shape[1] * p_out.shape[1] for p_in, p_out in self.sketcher.projections.values()]
        if sum(sizes) != self.dim:
            raise ConfigError(f"the sketch has {self.dim} numbers but its modules {sum(sizes)}")
        return list(self.sketcher.projections), sizes

    def needs(self, kind: PreconditionMode, *names: str) -> None:
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ConfigError(f"curvature kind {kind.value!r} needs {' and '.join(missing)} to fit, and none were "
                              "given (the sketch pass gathers them when the kind is configured before it runs)")


@dataclass(frozen=True)
class CurvatureKind:
    """One registered kind: how to fit it, how to load it back, and what its fit needs from the sketch pass."""

    fit: Callable[[FitInputs, CurvatureConfig], Curvature]
    load: Callable[[Path], Curvature]
    statistics: Callable[[CurvatureConfig], SketchPassStatistics] | None = None
    """A fresh collector for the sketch pass (None: the kind needs none)."""
    load_statistics: Callable[[Path], SketchPassStatistics] | None = None
    prefit: Callable[[CurvatureConfig], SketchPassStatistics] | None = None
    """A fresh collector for a pass over sampled rows *before* the sketch pass, for kinds whose training sketches
    depend on the fit (:func:`prefit_curvature`; None for the others)."""


def _fit_sketch_space(inputs: FitInputs, config: CurvatureConfig) -> Curvature:
    return Preconditioner.fit(sample_sketches(inputs.blocks, inputs.dim, config.sample), config.kind, config.damping)


def _fit_block(inputs: FitInputs, config: CurvatureConfig) -> Curvature:
    names, sizes = inputs.modules()
    acc = sample_sketches(inputs.blocks, inputs.dim, config.sample, BlockCovarianceAccumulator(sizes))
    return BlockPreconditioner.fit(acc, names, config.damping)


def _fit_kfac(inputs: FitInputs, config: CurvatureConfig) -> Curvature:
    inputs.needs(config.kind, "statistics")
    return KFACCurvature.fit(inputs.statistics, config.damping)


def _fit_ekfac(inputs: FitInputs, config: CurvatureConfig) -> Curvature:
    inputs.needs(config.kind, "statistics", "sketcher", "rows")
    return EKFACCurvature.fit(inputs.statistics, inputs.sketcher, inputs.rows, config.sample_rows, config.damping)


def _fit_whitened(inputs: FitInputs, config: CurvatureConfig) -> Curvature:
    inputs.needs(config.kind, "statistics")
    return WhitenedKFACCurvature.fit(inputs.statistics, config.damping)


def _fit_eigenbasis(inputs: FitInputs, config: CurvatureConfig) -> Curvature:
    inputs.needs(config.kind, "statistics", "sketcher", "rows")
    return EigenbasisCurvature.fit(inputs.statistics, inputs.sketcher, inputs.rows, config.sample_rows,
                                   config.damping)


def _kronecker_statistics(config: CurvatureConfig) -> SketchPassStatistics:
    return KroneckerStatistics(config.fisher, config.factor_limit)


KINDS: dict[PreconditionMode, CurvatureKind] = {
    PreconditionMode.INVERSE: CurvatureKind(_fit_sketch_space, Preconditioner.load),
    PreconditionMode.INVERSE_SQRT: CurvatureKind(_fit_sketch_space, Preconditioner.load),
    PreconditionMode.BLOCK: CurvatureKind(_fit_block, BlockPreconditioner.load),
    PreconditionMode.KFAC: CurvatureKind(_fit_kfac, KFACCurvature.load, _kronecker_statistics,
                                         KroneckerStatistics.load),
    PreconditionMode.EKFAC: CurvatureKind(_fit_ekfac, EKFACCurvature.load, _kronecker_statistics,
                                          KroneckerStatistics.load),
    PreconditionMode.KFAC_WHITENED: CurvatureKind(_fit_whitened, WhitenedKFACCurvature.load,
                                                  prefit=_kronecker_statistics),
    PreconditionMode.EKFAC_BASIS: CurvatureKind(_fit_eigenbasis, EigenbasisCurvature.load,
                                                prefit=_kronecker_statistics),
}
"""Every fitted kind (``none`` fits nothing)."""


def new_statistics(config: CurvatureConfig) -> SketchPassStatistics | None:
    """A collector of what the configured kind fits on from the sketch pass, or None when it needs nothing."""
    kind = KINDS.get(config.kind)
    return kind.statistics(config) if kind is not None and kind.statistics is not None else None


def load_statistics(config: CurvatureConfig, paths: Sequence[Path]) -> SketchPassStatistics | None:
    """The sum, in the order given, of stored sketch-pass statistics (None when the kind needs none)."""
    kind = KINDS.get(config.kind)
    if kind is None or kind.load_statistics is None:
        return None
    if not paths:
        raise ConfigError("no stored statistics to sum")
    total = kind.load_statistics(paths[0])
    for path in paths[1:]:
        total.merge(kind.load_statistics(path))
    return total


def sample_sketches(blocks: Sequence, dim: int, sample: int, acc=None):
    """``Σ g gᵀ`` (into ``acc``: a :class:`CovarianceAccumulator` of ``dim`` by default, or per-module blocks) over
    an evenly spaced sample of about ``sample`` sketches of ``blocks`` (arrays or tensors ``(n, D)`` or
    ``(n, W, D)``, e.g. one per shard, windows counted as sketches); the sample depends only on the
    concatenated rows, not on how they are split into blocks."""
    total = sum(int(np.prod(b.shape[:-1])) for b in blocks)
    stride = max(1, total // sample)
    acc = CovarianceAccumulator(dim) if acc is None else acc
    offset = 0
    for block in blocks:
        flat = block.reshape(-1, block.shape[-1])
        picked = flat[(-offset) % stride :: stride]
        acc.add(picked if isinstance(picked, torch.Tensor) else torch.from_numpy(np.array(picked)))
        offset += flat.shape[0]
    return acc


def fit_curvature(blocks: Sequence, dim: int, config: CurvatureConfig, *, sketcher: Sketcher | None = None,
                  statistics: SketchPassStatistics | None = None, rows: RowSample | None = None) -> Curvature | None:
    """The configured curvature fitted on raw sketches and, for the kinds that need them, the sketch pass's
    statistics, the sketcher and a sampler of training rows (None for kind ``none``)."""
    if config.kind is PreconditionMode.NONE:
        return None
    started = time.perf_counter()
    fitted = KINDS[config.kind].fit(FitInputs(blocks, dim, sketcher, statistics, rows), config)
    fitted.fit_seconds = round(time.perf_counter() - started, 3)
    return fitted


def is_prefit(config: CurvatureConfig) -> bool:
    """Whether the configured kind is fitted before the sketch pass (its training sketches depend on it)."""
    kind = KINDS.get(config.kind)
    return kind is not None and kind.prefit is not None


def prefit_curvature(config: CurvatureConfig, sketcher: Sketcher, rows: RowSample,
                     batch_size: int = 8) -> Curvature | None:
    """For a kind whose training sketches depend on it: fitted on a pass over ``config.sample_rows`` rows from
    ``rows`` (None for the other kinds, which :func:`fit_curvature` fits after the sketch pass)."""
    if not is_prefit(config):
        return None
    started = time.perf_counter()
    statistics = KINDS[config.kind].prefit(config)
    picked = rows(config.sample_rows)
    if not picked:
        raise ConfigError(f"curvature kind {config.kind.value!r} fits on sampled rows, and there are none")
    for start in range(0, len(picked), batch_size):
        statistics.sketch_with(sketcher, training_batch(picked[start : start + batch_size]))
    fitted = fit_curvature([], sketcher.dim, config, sketcher=sketcher, statistics=statistics, rows=rows)
    fitted.fit_seconds = round(time.perf_counter() - started, 3)
    return fitted


def evenly_spaced(total: int, n: int) -> list[int]:
    """``min(n, total)`` positions spread evenly over ``range(total)`` (the row sample of second passes)."""
    return [i * total // n for i in range(n)] if n < total else list(range(total))


def row_sample(rows: Sequence[list[int]]) -> RowSample:
    """The sampler of second passes over rows held in memory."""
    return lambda n: [rows[i] for i in evenly_spaced(len(rows), n)]


def load_curvature(path: Path) -> Curvature | None:
    """A stored curvature, or None when the file does not exist (the index was built without one)."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        kind = f.metadata().get("kind") or f.metadata().get("mode")
    try:
        return KINDS[PreconditionMode(kind)].load(path)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{path}: unknown curvature kind {kind!r}; known: {[k.value for k in KINDS]}") from err
