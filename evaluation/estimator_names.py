"""One grammar for the gradient family's estimator names, shared by every evaluation table.

``FAMILY/KIND[@K][@dD]``: FAMILY says how stored gradient sketches are scored — ``gradient`` (cosine, TrackStar-like),
``gradient-ip`` (inner product, influence-like), ``tracin`` (TracIn-CP, cosine at each checkpoint, summed weighted by
the learning rate) and ``tracin-ip`` (TracIn-CP by inner product); KIND is a curvature kind
(:class:`attribution.preconditioner.PreconditionMode`); ``@K`` a projection size per side of its own and ``@dD`` a
damping of its own, where the table allows them. The same name means the same thing in field-protocol LDS
(:mod:`evaluation.field_lds`) and in fact tracing (bench/quality).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attribution.errors import ConfigError
from attribution.preconditioner import PreconditionMode
from attribution.scoring import ScoreMode

GRADIENT_FAMILIES: dict[str, tuple[ScoreMode, bool]] = {
    "gradient": (ScoreMode.COSINE, False),
    "gradient-ip": (ScoreMode.INNER_PRODUCT, False),
    "tracin": (ScoreMode.COSINE, True),
    "tracin-ip": (ScoreMode.INNER_PRODUCT, True),
}
"""Each family's scoring and whether it sums over checkpoints (TracIn-CP)."""
GRAMMAR = ("gradient/KIND, gradient-ip/KIND, tracin/KIND or tracin-ip/KIND (KIND one of "
           f"{[m.value for m in PreconditionMode]})")


@dataclass(frozen=True)
class GradientName:
    """A parsed gradient-family name."""

    mode: ScoreMode
    kind: PreconditionMode
    tracin: bool = False
    k: int | None = None
    """Projection size per side (``@K``); None: the table's."""
    damping: float | None = None
    """Damping (``@dD``); None: the table's or the kind's default."""


def is_gradient_name(name: str) -> bool:
    """Whether ``name`` belongs to the gradient family (its part before ``/`` is one of :data:`GRADIENT_FAMILIES`)."""
    return name.partition("@")[0].partition("/")[0] in GRADIENT_FAMILIES and "/" in name


def parse_gradient_name(name: str, options: bool = True, what: str = "estimator") -> GradientName:
    """The parsed name, or a :class:`ConfigError` naming the grammar (``options=False``: ``@`` options refused;
    ``what``: the error's word for an estimator)."""
    base, *extra = name.strip().split("@")
    family, _, kind = base.partition("/")
    allowed = (", then optionally @K, a projection size, and @dD, a damping" if options
               else "; no @ options here (the table's own flags set the projection and damping)")
    error = ConfigError(f"unknown {what} {name!r}: {GRAMMAR}{allowed}")
    if family not in GRADIENT_FAMILIES or kind not in {m.value for m in PreconditionMode} or (extra and not options):
        raise error
    k: int | None = None
    damping: float | None = None
    for option in extra:
        if option.isdigit() and int(option) > 0 and k is None:
            k = int(option)
        elif option.startswith("d") and damping is None:
            try:
                damping = float(option[1:])
            except ValueError:
                raise error from None
            if not (damping > 0 and math.isfinite(damping)):
                raise error
        else:
            raise error
    mode, tracin = GRADIENT_FAMILIES[family]
    return GradientName(mode, PreconditionMode(kind), tracin, k, damping)
