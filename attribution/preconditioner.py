"""Preconditioning: the damped inverse (or inverse square root) of the sketch covariance.

``F = (1/n) Σ g gᵀ`` is estimated on a sample of training sketches (summable across
shards and ranks), then ``M = (F + λI)^{-1}`` (mode ``inverse``: applied to training
sketches only) or ``M = (F + λI)^{-1/2}`` (mode ``inverse_sqrt``: applied to both sides).
Either way an inner product of the transformed vectors is ``qᵀ (F + λI)^{-1} g``, and the
query side stays a plain inner product. ``λ`` is relative to the spectrum:
``damping × mean eigenvalue``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from attribution.errors import ConfigError


class PreconditionMode(StrEnum):
    NONE = "none"
    INVERSE = "inverse"
    INVERSE_SQRT = "inverse_sqrt"


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


@dataclass
class Preconditioner:
    """A fitted transform; ``train_matrix``/``query_matrix`` are ``None`` where nothing is applied."""

    mode: PreconditionMode
    damping: float
    """λ as a multiple of the mean eigenvalue of F."""
    lam: float
    """The absolute λ used."""
    matrix: torch.Tensor
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
        if damping <= 0:
            raise ConfigError(f"damping must be positive (a multiple of the mean eigenvalue), got {damping}")
        if acc.count == 0:
            raise ConfigError("cannot fit a preconditioner on zero sketches")
        cov = acc.sum / acc.count
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(0.0)
        lam = damping * float(eigvals.mean()) or damping
        power = -1.0 if mode is PreconditionMode.INVERSE else -0.5
        matrix = (eigvecs * (eigvals + lam) ** power) @ eigvecs.T
        return cls(mode, damping, lam, matrix)

    def apply_train(self, sketches: torch.Tensor) -> torch.Tensor:
        return sketches @ self.matrix_like(sketches)

    def apply_query(self, sketches: torch.Tensor) -> torch.Tensor:
        if self.mode is PreconditionMode.INVERSE:
            return sketches
        return sketches @ self.matrix_like(sketches)

    def describe(self) -> dict:
        return {"mode": self.mode.value, "damping": self.damping, "lam": self.lam}

    def save(self, path: str | Path) -> None:
        meta = {"kind": self.mode.value, "mode": self.mode.value, "damping": repr(self.damping), "lam": repr(self.lam)}
        save_file({"matrix": self.matrix.contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Preconditioner:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        matrix = load_file(str(path))["matrix"]
        return cls(PreconditionMode(meta["mode"]), float(meta["damping"]), float(meta["lam"]), matrix)
