"""Kind ``ekfac_basis``: sketches taken in K-FAC's eigenbasis, with EK-FAC's eigenvalue correction on both sides.

The seeded random projections of a module are replaced by the top-k eigenvectors of its Kronecker factors,
``P_in = Q_A[:, :k]`` and ``P_out = Q_G[:, :k]`` (largest eigenvalues first). A row's sketch
``P_outᵀ dW P_in`` is then exactly the k × k corner of its rotated gradient ``Q_Gᵀ dW Q_A`` that holds the most
factor energy, and EK-FAC's curvature (George et al. 2018) is diagonal there: ``Λ_ij = E[S_ij²]`` over the
per-row sketches ``S`` of sampled training rows. Both sides are divided by ``√(Λ + λ_m)`` (``λ_m`` = damping ×
the mean of module m's Λ), so the inner product of two stored vectors is the EK-FAC influence
``⟨H⁻¹ dW_q, dW_i⟩`` restricted to that corner: exact once k covers both sides of every module (small models),
and free of projection noise at any k, since what is dropped is the low-energy end of the basis, not a random
mixture of every direction. The one-sided ``ekfac`` kind instead projects the query's preconditioned gradient
with a random k-dimensional map, whose error grows with the query's norm in low-energy directions (measured
below no curvature at k = 16 on the field-protocol LDS, see the README).

Like ``kfac_whitened``, its training sketches depend on the fit, so it is fitted before the sketch pass
(:func:`attribution.curvature.prefit_curvature`) on ``sample_rows`` evenly spaced rows: their Kronecker factors
(under the configured Fisher), then Λ from the sketches of the same rows in the new basis (the training labels'
per-row gradients: the stored vectors' own second moments). A side wider than ``factor_limit`` and the
embedding keep their random projections; a side narrower than k gets zero columns past its width.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from attribution.batching import training_batch
from attribution.errors import ConfigError
from attribution.kfac import KroneckerBasis, RowSample
from attribution.kronecker import Fisher, KroneckerStatistics
from attribution.preconditioner import PreconditionMode, check_damping
from attribution.sketch import Sketcher


def top_eigenvectors(basis: KroneckerBasis, name: str, side: str, k: int) -> torch.Tensor | None:
    """``(d, k)``: the factor's eigenvectors by decreasing eigenvalue, zero columns past ``d`` (None: no factor)."""
    rotation = basis.rotation(name, side)
    if rotation is None:
        return None
    top = rotation.flip(1)[:, :k]  # eigh sorts ascending
    return torch.nn.functional.pad(top, (0, k - top.shape[1]))


@dataclass
class EigenbasisCurvature:
    """Per module: the projections (top-k factor eigenvectors, or the random ones where a side has no factor) and
    Λ, the mean square of each sketch coordinate over the sampled rows."""

    damping: float
    modules: list[str]
    """Every sketched module, in sketch order."""
    projections: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """``(P_in, P_out)`` per module, float32."""
    eigenvalues: dict[str, torch.Tensor]
    """Λ per module, ``(k, k)`` float32 (``P_out`` columns × ``P_in`` columns, the sketch's order)."""
    fisher: Fisher
    examples: int
    """Rows Λ was estimated on."""
    fit_seconds: float | None = None
    mode: PreconditionMode = PreconditionMode.EKFAC_BASIS
    lams: dict[str, float] = field(init=False)
    weights: torch.Tensor = field(init=False)
    """``(D,)``: ``(Λ + λ_m)^(−½)`` of every sketch coordinate."""
    _cast: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.lams = {}
        for name, values in self.eigenvalues.items():  # λ_m from the real coordinates, not the zero padding
            p_in, p_out = self.projections[name]
            real = values[p_out.abs().sum(0) > 0][:, p_in.abs().sum(0) > 0]
            self.lams[name] = self.damping * float(real.mean()) if real.numel() else self.damping
            self.lams[name] = self.lams[name] or self.damping
        self.weights = torch.cat([(self.eigenvalues[name].flatten().to(torch.float64) + self.lams[name]) ** -0.5
                                  for name in self.modules]).to(torch.float32)

    @classmethod
    def fit(cls, statistics: KroneckerStatistics, sketcher: Sketcher, rows: RowSample, sample: int, damping: float,
            batch_size: int = 8) -> EigenbasisCurvature:
        """The basis from ``statistics``, then Λ from the sketches of about ``sample`` training rows in it."""
        check_damping(damping)
        picked = rows(sample)
        if not picked:
            raise ConfigError("ekfac_basis needs training rows to fit its eigenvalues on; the sample is empty")
        basis, k = KroneckerBasis.fit(statistics), sketcher.config.k
        projections = {}
        for name, (p_in, p_out) in sketcher.projections.items():
            q_a, q_g = top_eigenvectors(basis, name, "a", k), top_eigenvectors(basis, name, "g", k)
            projections[name] = (p_in if q_a is None else q_a.to(p_in), p_out if q_g is None else q_g.to(p_out))
        folded = sketcher.folded(lambda name, p_in, p_out: projections[name])
        squares = torch.zeros(sketcher.dim, dtype=torch.float64)
        for start in range(0, len(picked), batch_size):
            sketches = folded.sketch(training_batch(picked[start : start + batch_size]))
            squares += (sketches.detach().to(torch.float64).cpu() ** 2).sum(0)
        parts = (squares / len(picked)).to(torch.float32).split([k * k] * len(projections))
        eigenvalues = {name: part.reshape(k, k) for name, part in zip(projections, parts, strict=True)}
        stored = {name: (p_in.detach().cpu().float(), p_out.detach().cpu().float())
                  for name, (p_in, p_out) in projections.items()}
        return cls(damping, list(projections), stored, eigenvalues, statistics.fisher, len(picked))

    def fold(self, name: str, p_in: torch.Tensor, p_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Module ``name``'s projections in the fitted basis (``attribution.sketch.ProjectionFold``)."""
        if name not in self.projections:
            raise ConfigError(f"ekfac_basis was fitted on modules {self.modules}; it has no basis for {name!r}")
        new_in, new_out = self.projections[name]
        if new_in.shape != p_in.shape or new_out.shape != p_out.shape:
            raise ConfigError(f"ekfac_basis was fitted at another sketch size for {name!r}: "
                              f"{tuple(new_in.shape)} vs {tuple(p_in.shape)}; refit it")
        return new_in.to(p_in), new_out.to(p_out)

    def train_sketcher(self, sketcher: Sketcher) -> Sketcher:
        if list(sketcher.projections) != self.modules:
            raise ConfigError(f"ekfac_basis was fitted on modules {self.modules}, the sketcher has "
                              f"{list(sketcher.projections)}; refit it")
        return sketcher.folded(self.fold)

    def query_sketcher(self, sketcher: Sketcher) -> Sketcher:
        return self.train_sketcher(sketcher)

    def _weights_like(self, sketches: torch.Tensor) -> torch.Tensor:
        key = (sketches.dtype, sketches.device)
        if key not in self._cast:
            self._cast[key] = self.weights.to(sketches)
        return self._cast[key]

    def apply_train(self, sketches: torch.Tensor) -> torch.Tensor:
        if sketches.shape[-1] != self.weights.shape[0]:
            raise ConfigError(f"ekfac_basis scales sketches of {self.weights.shape[0]} numbers, got "
                              f"{sketches.shape[-1]}")
        return sketches * self._weights_like(sketches)

    def apply_query(self, sketches: torch.Tensor) -> torch.Tensor:
        return self.apply_train(sketches)

    def describe(self) -> dict:
        tensors = [t for pair in self.projections.values() for t in pair] + list(self.eigenvalues.values())
        return {"kind": self.mode.value, "mode": self.mode.value, "damping": self.damping, "fisher": self.fisher.value,
                "modules": len(self.modules), "examples": self.examples,
                "lam_mean": sum(self.lams.values()) / len(self.lams), "bytes": sum(t.nbytes for t in tensors),
                "fit_seconds": self.fit_seconds}

    def save(self, path: str | Path) -> None:
        tensors = {}
        for name in self.modules:
            p_in, p_out = self.projections[name]
            tensors |= {f"pin.{name}": p_in.contiguous(), f"pout.{name}": p_out.contiguous(),
                        f"lambda.{name}": self.eigenvalues[name].contiguous()}
        meta = {"kind": self.mode.value, "damping": repr(self.damping), "fisher": self.fisher.value,
                "modules": json.dumps(self.modules), "examples": str(self.examples)}
        if self.fit_seconds is not None:
            meta["fit_seconds"] = repr(self.fit_seconds)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> EigenbasisCurvature:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        modules: Sequence[str] = json.loads(meta["modules"])
        projections = {name: (tensors[f"pin.{name}"], tensors[f"pout.{name}"]) for name in modules}
        eigenvalues = {name: tensors[f"lambda.{name}"] for name in modules}
        seconds = float(meta["fit_seconds"]) if "fit_seconds" in meta else None
        return cls(float(meta["damping"]), list(modules), projections, eigenvalues, Fisher(meta["fisher"]),
                   int(meta["examples"]), seconds)
