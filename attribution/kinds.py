"""The closed sets of names of the core (curvature kinds, score modes, Fisher labels, parameter groups) and the
sketch record: plain Python, no torch, so that configs — and the CLI's ``--help`` — import in milliseconds. The
modules that implement each one import it from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from attribution.errors import ConfigError


class Fisher(StrEnum):
    """Which labels the Fisher's gradients are taken with."""

    EMPIRICAL = "empirical"
    """The training labels (the sketch pass's own loss)."""
    SAMPLED = "sampled"
    """Labels drawn from the model's own predictive distribution (the true Fisher), one extra pass."""


class PreconditionMode(StrEnum):
    """The curvature kinds (``attribution.curvature.KINDS`` fits and loads each)."""

    NONE = "none"
    INVERSE = "inverse"
    """Global D×D ``(F + λI)^{-1}`` of the sketch covariance, on the training side."""
    INVERSE_SQRT = "inverse_sqrt"
    """Global D×D ``(F + λI)^{-1/2}`` of the sketch covariance, on both sides."""
    BLOCK = "block"
    """Per-module k²×k² blocks of the sketch covariance, ``(F_m + λ_m I)^{-1/2}`` on both sides."""
    KFAC = "kfac"
    """K-FAC ``(A + λ_A I)^{-1} ⊗ (G + λ_G I)^{-1}`` on the query's gradient before projection."""
    EKFAC = "ekfac"
    """EK-FAC: K-FAC's eigenbasis with eigenvalues fitted on per-example gradients, on the query side."""
    KFAC_WHITENED = "kfac_whitened"
    """K-FAC^(−½) folded into both sides' projections (whitened sketches; fitted before the sketch pass)."""
    EKFAC_BASIS = "ekfac_basis"
    """Sketches in K-FAC's eigenbasis (top-k eigenvectors per side), EK-FAC's Λ^(−½) on both sides (prefit)."""


class ScoreMode(StrEnum):
    INNER_PRODUCT = "inner_product"
    COSINE = "cosine"


class ModuleGroup(StrEnum):
    """A group of parameters whose gradients are sketched."""

    BLOCKS = "blocks"
    """Every nn.Linear inside the transformer blocks."""
    EMBED = "embed"
    """The input embedding (its gradient is sparse: only the rows of the tokens present)."""
    HEAD = "head"
    """The output head (vocab × hidden, the largest layer)."""


@dataclass(frozen=True)
class SketchConfig:
    """How gradients are sketched; saved with every index and checked on reopen."""

    k: int = 16
    """Projection dimension per side; each module contributes k × k numbers."""
    seed: int = 0
    """Seed of the projection matrices."""
    groups: tuple[ModuleGroup, ...] = (ModuleGroup.BLOCKS,)
    """Parameter groups sketched: blocks (every Linear in the transformer blocks), embed (input embedding),
    head (output head)."""

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ConfigError(f"projection dimension k must be positive, got {self.k}")
        groups = (self.groups,) if isinstance(self.groups, str) else tuple(self.groups)
        try:
            groups = tuple(dict.fromkeys(ModuleGroup(g) for g in groups))
        except ValueError as err:
            raise ConfigError(f"groups must be among {[g.value for g in ModuleGroup]}, got {list(groups)}") from err
        if not groups:
            raise ConfigError("sketch at least one parameter group (blocks, embed, head)")
        object.__setattr__(self, "groups", groups)


def group_names(groups: Sequence[ModuleGroup | str] | str) -> tuple[str, ...]:
    """``groups`` checked and ordered as a sketch takes them (:class:`SketchConfig`), as plain names (for the configs
    that name parameter groups beside a sketch's)."""
    return tuple(g.value for g in SketchConfig(groups=groups).groups)


class Factoring(StrEnum):
    """How the Newton solvers approximate ``(G + λ)⁻¹`` to precondition and warm-start."""

    NONE = "none"
    """No preconditioner (plain conjugate gradient); a stochastic solver then steps along the raw residual."""
    KFAC = "kfac"
    """K-FAC blocks: eigenvalues the products of the two factors' eigenvalues."""
    EKFAC = "ekfac"
    """EK-FAC blocks: K-FAC's eigenbasis, eigenvalues corrected to the per-row gradients' second moments in it."""
