"""K-FAC and EK-FAC: Kronecker-factored curvature applied to the query's gradient before projection.

K-FAC (Martens & Grosse 2015): per module, ``H ≈ A ⊗ G``, so ``H⁻¹ vec(dW) = vec((G + λ_G I)⁻¹ dW (A + λ_A I)⁻¹)``,
each ``λ`` = damping × its factor's mean eigenvalue. Folding ``(A + λ_A I)⁻¹`` into ``P_in`` and
``(G + λ_G I)⁻¹`` into ``P_out`` (``Sketcher.folded``) sketches ``P_outᵀ H⁻¹ dW_q P_in`` for the query, which is
compared with the stored ``P_outᵀ dW_i P_in`` of the training rows: those stay unchanged (``apply_train`` is the
identity), so both kinds work on sketches as the runner stores them.

EK-FAC (George et al. 2018; Grosse et al. 2023): in K-FAC's eigenbasis ``Q_A``, ``Q_G`` the products of factor
eigenvalues are replaced by ``Λ_ij = E[(Q_Gᵀ dW Q_A)²_ij]`` over per-example (per-row) gradients of a sample of
training rows, a second pass once the basis is known. ``H⁻¹ dW = Q_G [(Q_Gᵀ dW Q_A) / (Λ + λ)] Q_Aᵀ`` is not a
product of one-sided transforms, so its query side forms each query row's exact per-module gradient in the
rotated basis and projects it with ``P_in``, ``P_out`` (:class:`EigenCorrectedSketcher`); it stays linear in the
gradient, so per-token contributions still sum to the score.

Kind ``kfac_whitened`` folds ``(A + λ_A I)^(−½)`` and ``(G + λ_G I)^(−½)`` into both sides' projections instead:
whitened sketches, whose inner products estimate the same ``⟨H⁻¹ dW_q, dW_i⟩`` but with the projection's
noise relative to the whitened norms of both sides (one-sided ``H⁻¹`` makes the query's norm, and so the noise,
grow along directions where training gradients have little energy), and which can be unit-normed and put in
IVF. Its training sketches depend on the factors, so they are fitted before the training rows are sketched, on
a pass over a sample of rows (``attribution.curvature.prefit_curvature``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from attribution.batching import training_batch
from attribution.errors import ConfigError
from attribution.kronecker import Fisher, KroneckerStatistics, observe_pass
from attribution.preconditioner import PreconditionMode, check_damping
from attribution.sketch import ModuleStatistics, Sketcher

RowSample = Callable[[int], list[list[int]]]
"""``n -> token ids of about n training rows, evenly spaced over the data``."""


def _damped(eigvals: torch.Tensor, damping: float) -> float:
    return damping * float(eigvals.clamp_min(0.0).mean()) or damping


@dataclass
class KroneckerBasis:
    """Per module and side (``a``: inputs, ``g``: output gradients): the factor's eigenvectors and eigenvalues."""

    eig: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]

    @classmethod
    def fit(cls, statistics: KroneckerStatistics) -> KroneckerBasis:
        eig = {}
        for name, sides in statistics.factors().items():
            eig[name] = {}
            for side, factor in sides.items():
                values, vectors = torch.linalg.eigh(factor)
                eig[name][side] = (vectors.to(torch.float32), values.clamp_min(0.0).to(torch.float32))
        return cls(eig)

    def rotation(self, name: str, side: str) -> torch.Tensor | None:
        return self.eig[name][side][0] if side in self.eig.get(name, {}) else None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{kind}{side}.{name}": t.contiguous() for name, sides in self.eig.items()
                for side, pair in sides.items() for kind, t in zip("qe", pair, strict=True)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], modules: Sequence[str]) -> KroneckerBasis:
        eig = {name: {side: (tensors[f"q{side}.{name}"], tensors[f"e{side}.{name}"])
                      for side in "ag" if f"q{side}.{name}" in tensors} for name in modules}
        return cls(eig)


def _rotate(values: torch.Tensor, rotation: torch.Tensor | None) -> torch.Tensor:
    return values if rotation is None else values @ rotation.to(values)


def _meta(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


class QuerySideOnly:
    """A full-space curvature that works through the sketchers: stored sketches and the sketch-space
    transforms are left as they are."""

    def train_sketcher(self, sketcher: Sketcher) -> Sketcher:
        return sketcher

    def apply_train(self, sketches: torch.Tensor) -> torch.Tensor:
        return sketches

    def apply_query(self, sketches: torch.Tensor) -> torch.Tensor:
        return sketches


@dataclass
class KFACCurvature(QuerySideOnly):
    """Kind ``kfac``: ``(A + λ_A I)⁻¹`` folded into ``P_in`` and ``(G + λ_G I)⁻¹`` into ``P_out`` on the query side."""

    damping: float
    basis: KroneckerBasis
    fisher: Fisher
    tokens: int
    """Tokens the factors were averaged over (the first module's)."""
    fit_seconds: float | None = None
    mode: PreconditionMode = PreconditionMode.KFAC
    power: ClassVar[float] = -1.0
    """The power of each damped factor folded into the projections."""

    @classmethod
    def fit(cls, statistics: KroneckerStatistics, damping: float) -> KFACCurvature:
        check_damping(damping)
        return cls(damping, KroneckerBasis.fit(statistics), statistics.fisher, max(statistics.tokens.values()))

    def lam(self, name: str, side: str) -> float:
        return _damped(self.basis.eig[name][side][1], self.damping)

    def inverse(self, name: str, side: str) -> torch.Tensor | None:
        """``(F + λI)^power`` of one factor (float64; ``power`` −1, or −½ when whitened), or None for a side
        without one."""
        if side not in self.basis.eig.get(name, {}):
            return None
        vectors, values = (t.to(torch.float64) for t in self.basis.eig[name][side])
        return (vectors * (values + self.lam(name, side)) ** self.power) @ vectors.T

    def fold(self, name: str, p_in: torch.Tensor, p_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The query side's projections of module ``name`` (``attribution.sketch.ProjectionFold``)."""
        inv_a, inv_g = self.inverse(name, "a"), self.inverse(name, "g")
        return (p_in if inv_a is None else inv_a.to(p_in) @ p_in,
                p_out if inv_g is None else inv_g.to(p_out) @ p_out)

    def query_sketcher(self, sketcher: Sketcher) -> Sketcher:
        return sketcher.folded(self.fold)

    def describe(self) -> dict:
        lams = [self.lam(name, side) for name, sides in self.basis.eig.items() for side in sides]
        return {"kind": self.mode.value, "mode": self.mode.value, "damping": self.damping, "fisher": self.fisher.value,
                "modules": len(self.basis.eig), "tokens": self.tokens, "lam_mean": sum(lams) / len(lams),
                "bytes": sum(t.nbytes for t in self.basis.tensors().values()), "fit_seconds": self.fit_seconds}

    def save(self, path: str | Path) -> None:
        save_file(self.basis.tensors(), str(path), metadata=self._metadata())

    def _metadata(self) -> dict[str, str]:
        meta = {"kind": self.mode.value, "damping": repr(self.damping), "fisher": self.fisher.value,
                "modules": json.dumps(list(self.basis.eig)), "tokens": str(self.tokens)}
        return meta if self.fit_seconds is None else {**meta, "fit_seconds": repr(self.fit_seconds)}

    @classmethod
    def load(cls, path: str | Path) -> KFACCurvature:
        meta = _meta(path)
        basis = KroneckerBasis.from_tensors(load_file(str(path)), json.loads(meta["modules"]))
        seconds = float(meta["fit_seconds"]) if "fit_seconds" in meta else None
        return cls(float(meta["damping"]), basis, Fisher(meta["fisher"]), int(meta["tokens"]), seconds)


@dataclass
class WhitenedKFACCurvature(KFACCurvature):
    """Kind ``kfac_whitened``: ``(A + λ_A I)^(−½)`` and ``(G + λ_G I)^(−½)`` folded into both sides' projections."""

    mode: PreconditionMode = PreconditionMode.KFAC_WHITENED
    power: ClassVar[float] = -0.5

    def train_sketcher(self, sketcher: Sketcher) -> Sketcher:
        return sketcher.folded(self.fold)


class EigenvalueCorrection:
    """A ``ModuleStatistics`` summing ``(Q_Gᵀ dW_b Q_A)²`` over the rows ``b`` it sees (per-example gradients)."""

    def __init__(self, basis: KroneckerBasis) -> None:
        self.basis = basis
        self.sums: dict[str, torch.Tensor] = {}
        self.examples: dict[str, int] = {}

    def observe(self, name: str, inputs: torch.Tensor, output_grads: torch.Tensor, mask: torch.Tensor) -> None:
        if name not in self.basis.eig:
            return
        x = _rotate(inputs, self.basis.rotation(name, "a"))
        g = _rotate(output_grads * mask[..., None].to(output_grads), self.basis.rotation(name, "g"))
        total = self.sums.get(name, torch.zeros(g.shape[-1], x.shape[-1], dtype=torch.float64, device=x.device))
        for b in range(x.shape[0]):  # one row at a time: (d_out, d_in) each
            total += (g[b].T @ x[b]).to(torch.float64) ** 2
        self.sums[name] = total
        self.examples[name] = self.examples.get(name, 0) + x.shape[0]


@dataclass
class EKFACCurvature(QuerySideOnly):
    """Kind ``ekfac``: the query's gradient goes through ``Q_G [(Q_Gᵀ dW Q_A) / (Λ + λ)] Q_Aᵀ`` before projection."""

    damping: float
    basis: KroneckerBasis
    eigenvalues: dict[str, torch.Tensor]
    """Λ per module, ``(d_out, d_in)`` float32."""
    fisher: Fisher
    examples: int
    """Rows the eigenvalues were estimated on."""
    fit_seconds: float | None = None
    mode: PreconditionMode = PreconditionMode.EKFAC
    lams: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.lams = {name: _damped(values, self.damping) for name, values in self.eigenvalues.items()}

    @classmethod
    def fit(cls, statistics: KroneckerStatistics, sketcher: Sketcher, rows: RowSample, sample: int, damping: float,
            batch_size: int = 8) -> EKFACCurvature:
        """The basis from ``statistics``, then Λ from a pass over about ``sample`` training rows."""
        check_damping(damping)
        basis = KroneckerBasis.fit(statistics)
        correction = EigenvalueCorrection(basis)
        picked = rows(sample)
        if not picked:
            raise ConfigError("EK-FAC needs training rows to fit its eigenvalues on; the sample is empty")
        for start in range(0, len(picked), batch_size):
            batch = training_batch(picked[start : start + batch_size])
            observe_pass(sketcher, batch, [correction], statistics.fisher, statistics.seed)
        eigenvalues = {name: (total / correction.examples[name]).to(torch.float32).cpu()
                       for name, total in correction.sums.items()}
        return cls(damping, basis, eigenvalues, statistics.fisher, len(picked))

    def query_sketcher(self, sketcher: Sketcher) -> EigenCorrectedSketcher:
        return EigenCorrectedSketcher(sketcher, self)

    def describe(self) -> dict:
        tensors = [*self.basis.tensors().values(), *self.eigenvalues.values()]
        return {"kind": self.mode.value, "mode": self.mode.value, "damping": self.damping, "fisher": self.fisher.value,
                "modules": len(self.eigenvalues), "examples": self.examples,
                "lam_mean": sum(self.lams.values()) / len(self.lams), "bytes": sum(t.nbytes for t in tensors),
                "fit_seconds": self.fit_seconds}

    def save(self, path: str | Path) -> None:
        tensors = {**self.basis.tensors(), **{f"lambda.{n}": v.contiguous() for n, v in self.eigenvalues.items()}}
        meta = {"kind": self.mode.value, "damping": repr(self.damping), "fisher": self.fisher.value,
                "modules": json.dumps(list(self.eigenvalues)), "examples": str(self.examples)}
        if self.fit_seconds is not None:
            meta["fit_seconds"] = repr(self.fit_seconds)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> EKFACCurvature:
        meta = _meta(path)
        tensors = load_file(str(path))
        modules = json.loads(meta["modules"])
        eigenvalues = {name: tensors[f"lambda.{name}"] for name in modules}
        seconds = float(meta["fit_seconds"]) if "fit_seconds" in meta else None
        return cls(float(meta["damping"]), KroneckerBasis.from_tensors(tensors, modules), eigenvalues,
                   Fisher(meta["fisher"]), int(meta["examples"]), seconds)


class _Preconditioned:
    """A ``ModuleStatistics`` that sketches each row's EK-FAC-preconditioned gradient of the modules it sees."""

    def __init__(self, sketcher: Sketcher, curvature: EKFACCurvature) -> None:
        self.curvature = curvature
        self.sides: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name in curvature.eigenvalues:
            p_in, p_out = sketcher.projections[name]
            rot_a, rot_g = curvature.basis.rotation(name, "a"), curvature.basis.rotation(name, "g")
            right = p_in if rot_a is None else rot_a.to(p_in).T @ p_in  # Q_Aᵀ P_in
            left = p_out if rot_g is None else rot_g.to(p_out).T @ p_out  # Q_Gᵀ P_out
            scale = 1.0 / (curvature.eigenvalues[name].to(p_in) + curvature.lams[name])
            self.sides[name] = (left, right, scale)
        self.results: dict[str, torch.Tensor] = {}

    def observe(self, name: str, inputs: torch.Tensor, output_grads: torch.Tensor, mask: torch.Tensor) -> None:
        if name not in self.sides:
            return
        left, right, scale = self.sides[name]
        basis = self.curvature.basis
        x = _rotate(inputs, basis.rotation(name, "a"))
        g = _rotate(output_grads * mask[..., None].to(output_grads), basis.rotation(name, "g"))
        rotated = torch.einsum("bto,bti->boi", g, x) * scale.to(g)  # (Q_Gᵀ dW Q_A) / (Λ + λ), per row
        self.results[name] = torch.einsum("ok,boi,il->bkl", left.to(g), rotated, right.to(g))


class EigenCorrectedSketcher:
    """The query side of ``ekfac``: sketches ``P_outᵀ H⁻¹ dW P_in`` (whole rows; modules without factors plain)."""

    def __init__(self, sketcher: Sketcher, curvature: EKFACCurvature) -> None:
        self.sketcher, self.curvature = sketcher, curvature
        self.model, self.config = sketcher.model, sketcher.config
        self.offsets: dict[str, slice] = {}
        start = 0
        for name, (p_in, p_out) in sketcher.projections.items():
            size = p_in.shape[1] * p_out.shape[1]
            self.offsets[name] = slice(start, start + size)
            start += size
        if start != sketcher.dim:
            raise ConfigError(f"EK-FAC cannot place modules in a sketch of {sketcher.dim} numbers (found {start})")
        self._observer = _Preconditioned(sketcher, curvature)

    @property
    def dim(self) -> int:
        return self.sketcher.dim

    @property
    def module_names(self) -> list[str]:
        return self.sketcher.module_names

    def sketch(self, batch, window: int | None = None, statistics: Sequence[ModuleStatistics] = ()) -> torch.Tensor:
        if window is not None:
            raise ConfigError("EK-FAC preconditions whole query rows; windows are for training rows")
        observer = self._observer
        observer.results = {}
        sketches = self.sketcher.sketch(batch, statistics=[observer, *statistics])
        for name, sketch in observer.results.items():
            sketches[:, self.offsets[name]] = sketch.flatten(1).to(sketches)
        return sketches
