"""Sketch-space preconditioning: the damped inverse (or inverse square root) of the sketch covariance.

``F = (1/n) Σ g gᵀ`` is estimated on a sample of training sketches (summable across
shards and ranks), then ``M = (F + λI)^{-1}`` (mode ``inverse``: applied to training
sketches only) or ``M = (F + λI)^{-1/2}`` (mode ``inverse_sqrt``: applied to both sides).
Either way an inner product of the transformed vectors is ``qᵀ (F + λI)^{-1} g``, and the
query side stays a plain inner product. ``λ`` is relative to the spectrum:
``damping × mean eigenvalue``.

The global D×D matrix does not scale (D = 16,384 at Pythia-1b is a 2 GB float64 file), so mode
``block`` keeps only each module's k²×k² diagonal block of ``F`` (bergson's per-layer
preconditioner), each damped relative to its own mean eigenvalue and applied as
``(F_m + λ_m I)^{-1/2}`` on both sides, stored float32.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from attribution.errors import ConfigError
from attribution.kinds import PreconditionMode


class CovarianceAccumulator:
    """Running ``Σ g gᵀ`` and count; partial sums from shards or ranks add up exactly."""

    def __init__(self, dim: int) -> None:
        self.sum = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def add(self, sketches: torch.Tensor) -> None:
        s = sketches.detach().to(torch.float64).cpu()
        self.sum += s.T @ s
        self.count += s.shape[0]

    def merge(self, other: CovarianceAccumulator) -> None:
        self.sum += other.sum
        self.count += other.count


class BlockCovarianceAccumulator:
    """Running ``Σ g_m g_mᵀ`` of each block ``m`` of consecutive sketch coordinates (``sizes`` long), and count."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = list(sizes)
        self.sums = [torch.zeros(n, n, dtype=torch.float64) for n in self.sizes]
        self.count = 0

    def add(self, sketches: torch.Tensor) -> None:
        s = sketches.detach().to(torch.float64).cpu()
        for total, part in zip(self.sums, s.split(self.sizes, dim=-1), strict=True):
            total += part.T @ part
        self.count += s.shape[0]


def _damped_power(cov: torch.Tensor, damping: float, power: float) -> tuple[torch.Tensor, float]:
    """``(cov + λI)^power`` with ``λ = damping × mean eigenvalue`` (``damping`` when the spectrum is zero)."""
    eigvals, eigvecs = torch.linalg.eigh(cov)
    eigvals = eigvals.clamp_min(0.0)
    lam = damping * float(eigvals.mean()) or damping
    return (eigvecs * (eigvals + lam) ** power) @ eigvecs.T, lam


def check_damping(damping: float) -> None:
    if damping <= 0:
        raise ConfigError(f"damping must be positive (a multiple of the mean eigenvalue), got {damping}")


@dataclass
class Preconditioner:
    """A fitted transform; ``train_matrix``/``query_matrix`` are ``None`` where nothing is applied."""

    mode: PreconditionMode
    damping: float
    """λ as a multiple of the mean eigenvalue of F."""
    lam: float
    """The absolute λ used."""
    matrix: torch.Tensor
    fit_seconds: float | None = None
    """Wall time of the fit (recorded in the manifest; None for files written before it was)."""
    _cast: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    """``matrix`` converted to each (dtype, device) asked for: converting the float64 D×D matrix took ~26 ms of
    a ~31 ms query at D = 4,096 when done per call."""

    def matrix_like(self, sketches: torch.Tensor) -> torch.Tensor:
        """``matrix`` in the dtype and on the device of ``sketches``, converted once and kept."""
        key = (sketches.dtype, sketches.device)
        if key not in self._cast:
            self._cast[key] = self.matrix.to(sketches)
        return self._cast[key]

    @classmethod
    def fit(cls, acc: CovarianceAccumulator, mode: PreconditionMode | str, damping: float = 0.1) -> Preconditioner:
        mode = PreconditionMode(mode)
        if mode is PreconditionMode.NONE:
            raise ConfigError("mode 'none' needs no preconditioner; pass None instead")
        if mode not in (PreconditionMode.INVERSE, PreconditionMode.INVERSE_SQRT):
            raise ConfigError(f"mode {mode.value!r} is not a global sketch-space preconditioner")
        check_damping(damping)
        if acc.count == 0:
            raise ConfigError("cannot fit a preconditioner on zero sketches")
        power = -1.0 if mode is PreconditionMode.INVERSE else -0.5
        matrix, lam = _damped_power(acc.sum / acc.count, damping, power)
        return cls(mode, damping, lam, matrix)

    def apply_train(self, sketches: torch.Tensor) -> torch.Tensor:
        return sketches @ self.matrix_like(sketches)

    def apply_query(self, sketches: torch.Tensor) -> torch.Tensor:
        if self.mode is PreconditionMode.INVERSE:
            return sketches
        return sketches @ self.matrix_like(sketches)

    def query_sketcher(self, sketcher):
        """The query side sketches with the training side's projections (this kind works in sketch space)."""
        return sketcher

    def train_sketcher(self, sketcher):
        return sketcher

    def describe(self) -> dict:
        return {"kind": self.mode.value, "mode": self.mode.value, "damping": self.damping, "lam": self.lam,
                "bytes": self.matrix.nbytes, "fit_seconds": self.fit_seconds}

    def save(self, path: str | Path) -> None:
        meta = {"kind": self.mode.value, "mode": self.mode.value, "damping": repr(self.damping), "lam": repr(self.lam),
                **_seconds_entry(self.fit_seconds)}
        save_file({"matrix": self.matrix.contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Preconditioner:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        matrix = load_file(str(path))["matrix"]
        return cls(PreconditionMode(meta["mode"]), float(meta["damping"]), float(meta["lam"]), matrix,
                   _seconds_of(meta))


def _seconds_entry(seconds: float | None) -> dict[str, str]:
    return {} if seconds is None else {"fit_seconds": repr(seconds)}


def _seconds_of(meta: dict[str, str]) -> float | None:
    return float(meta["fit_seconds"]) if "fit_seconds" in meta else None


@dataclass
class BlockPreconditioner:
    """Mode ``block``: ``(F_m + λ_m I)^{-1/2}`` of each module's block ``m`` of the sketch covariance, both sides."""

    damping: float
    """λ_m as a multiple of the mean eigenvalue of each block F_m."""
    modules: list[str]
    """The modules, in sketch order (one block each)."""
    lams: list[float]
    """The absolute λ_m used, per module."""
    matrices: list[torch.Tensor]
    """``(F_m + λ_m I)^{-1/2}``, float32, one per module."""
    fit_seconds: float | None = None
    mode: PreconditionMode = PreconditionMode.BLOCK
    _cast: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, acc: BlockCovarianceAccumulator, modules: Sequence[str], damping: float = 0.1) -> BlockPreconditioner:
        check_damping(damping)
        if acc.count == 0:
            raise ConfigError("cannot fit a preconditioner on zero sketches")
        fitted = [_damped_power(total / acc.count, damping, -0.5) for total in acc.sums]
        return cls(damping, list(modules), [lam for _, lam in fitted],
                   [matrix.to(torch.float32) for matrix, _ in fitted])

    def _matrices_like(self, sketches: torch.Tensor) -> list[torch.Tensor]:
        key = (sketches.dtype, sketches.device)
        if key not in self._cast:
            self._cast[key] = [m.to(sketches) for m in self.matrices]
        return self._cast[key]

    def apply_train(self, sketches: torch.Tensor) -> torch.Tensor:
        matrices = self._matrices_like(sketches)
        parts = sketches.split([m.shape[0] for m in matrices], dim=-1)
        return torch.cat([part @ m for part, m in zip(parts, matrices, strict=True)], dim=-1)

    def apply_query(self, sketches: torch.Tensor) -> torch.Tensor:
        return self.apply_train(sketches)

    def query_sketcher(self, sketcher):
        return sketcher

    def train_sketcher(self, sketcher):
        return sketcher

    def describe(self) -> dict:
        return {"kind": self.mode.value, "mode": self.mode.value, "damping": self.damping,
                "lam_mean": sum(self.lams) / len(self.lams), "modules": len(self.modules),
                "bytes": sum(m.nbytes for m in self.matrices), "fit_seconds": self.fit_seconds}

    def save(self, path: str | Path) -> None:
        meta = {"kind": self.mode.value, "damping": repr(self.damping), "modules": json.dumps(self.modules),
                "lams": json.dumps(self.lams), **_seconds_entry(self.fit_seconds)}
        tensors = {f"block.{i}": m.contiguous() for i, m in enumerate(self.matrices)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> BlockPreconditioner:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        modules = json.loads(meta["modules"])
        matrices = [tensors[f"block.{i}"] for i in range(len(modules))]
        return cls(float(meta["damping"]), modules, json.loads(meta["lams"]), matrices, _seconds_of(meta))
