"""The curvature seam: how a fitted preconditioner plugs into scoring, and how it is fitted and stored.

A :class:`Curvature` transforms raw sketches on the training side and on the query side
(``attribution.scoring`` calls ``apply_train``/``apply_query``); one that works in full
parameter space also folds itself into the query-side projections (``fold``, see
``Sketcher.folded``). Each kind registers a fit and a load function in :data:`KINDS`, so a new
kind (K-FAC, EK-FAC, per-module blocks) is one new module plus one line there. Fitting
reads statistics: today an evenly spaced sample of raw sketches (the same sample whatever the
sharding), gathered by :func:`fit_curvature`; a kind that needs per-module statistics from the
sketch pass gathers them through ``attribution.sketch.ModuleStatistics``.

Stored curvatures are one safetensors file each, with any number of named tensors and a
``kind`` entry in the metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import safe_open

from attribution.config import CurvatureConfig
from attribution.errors import ConfigError
from attribution.preconditioner import CovarianceAccumulator, Preconditioner, PreconditionMode


class Curvature(Protocol):
    """A fitted preconditioner, applied to sketches ``(..., D)`` of one checkpoint."""

    mode: PreconditionMode

    def apply_train(self, sketches: torch.Tensor) -> torch.Tensor: ...

    def apply_query(self, sketches: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict:
        """What the manifest records about it (kind, damping, …)."""
        ...

    def save(self, path: str | Path) -> None: ...


@dataclass(frozen=True)
class CurvatureKind:
    """One registered kind: how to fit it from sampled raw sketches, and how to load it back."""

    fit: Callable[[CovarianceAccumulator, CurvatureConfig], Curvature]
    load: Callable[[Path], Curvature]


def _fit_sketch_space(acc: CovarianceAccumulator, config: CurvatureConfig) -> Curvature:
    return Preconditioner.fit(acc, config.kind, config.damping)


KINDS: dict[PreconditionMode, CurvatureKind] = {
    PreconditionMode.INVERSE: CurvatureKind(_fit_sketch_space, Preconditioner.load),
    PreconditionMode.INVERSE_SQRT: CurvatureKind(_fit_sketch_space, Preconditioner.load),
}
"""Every fitted kind (``none`` fits nothing)."""


def sample_sketches(blocks: Sequence, dim: int, sample: int) -> CovarianceAccumulator:
    """``Σ g gᵀ`` over an evenly spaced sample of about ``sample`` sketches of ``blocks`` (arrays or tensors
    ``(n, D)`` or ``(n, W, D)``, e.g. one per shard, windows counted as sketches); the sample depends only on
    the concatenated rows, not on how they are split into blocks."""
    total = sum(int(np.prod(b.shape[:-1])) for b in blocks)
    stride = max(1, total // sample)
    acc = CovarianceAccumulator(dim)
    offset = 0
    for block in blocks:
        flat = block.reshape(-1, block.shape[-1])
        picked = flat[(-offset) % stride :: stride]
        acc.add(picked if isinstance(picked, torch.Tensor) else torch.from_numpy(np.array(picked)))
        offset += flat.shape[0]
    return acc


def fit_curvature(blocks: Sequence, dim: int, config: CurvatureConfig) -> Curvature | None:
    """The configured curvature fitted on raw sketches (None for kind ``none``)."""
    if config.kind is PreconditionMode.NONE:
        return None
    return KINDS[config.kind].fit(sample_sketches(blocks, dim, config.sample), config)


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
