"""A stochastic solver for the damped Gauss-Newton system, in the manner of ASTRA (Wang et al., 2025; bergson's
``Astra.refine``): minimise ``f(x) = ½ xᵀ (G + λ) x − gᵀ x`` by momentum SGD whose steps are preconditioned by a
factored inverse (EK-FAC) and whose curvature products each take a small random batch of the sample rows, so a step
costs a fraction of one full product. Its fixed point is conjugate gradient's ``x = (G + λ)⁻¹ g``; it trades CG's
exactness per product for cheap noisy steps, which pays where the sample is large.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attribution.errors import ConfigError

Vector = torch.Tensor


@dataclass(frozen=True)
class AstraSchedule:
    """ASTRA's step schedule (bergson's defaults: 300 steps of 16 rows, lr 0.1, momentum 0.9, × 0.9 every 100)."""

    steps: int = 300
    rows: int = 16
    """Sample rows drawn for each step's curvature product."""
    lr: float = 0.1
    momentum: float = 0.9
    decay: float = 0.9
    decay_every: int = 100

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.rows <= 0 or self.decay_every <= 0:
            raise ConfigError(f"ASTRA needs steps, rows and decay_every > 0, got {self.steps}, {self.rows}, "
                              f"{self.decay_every}")
        for name in ("lr", "decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"ASTRA's {name} must be a positive finite number, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"ASTRA's momentum must be in [0, 1), got {self.momentum}")


@dataclass(frozen=True)
class AstraResult:
    x: Vector
    steps: int
    objectives: tuple[float, float]
    """``f`` at the start and at the end, on the last step's batch (lower is better; a rise means divergence)."""


def astra_solve(apply_batch: Callable[[Vector, torch.Tensor], Vector], b: Vector, rows: int, schedule: AstraSchedule,
                precondition: Callable[[Vector], Vector] | None = None, x0: Vector | None = None,
                seed: int = 0) -> AstraResult:
    """Momentum SGD on ``½ xᵀ A x − bᵀ x``; ``apply_batch(v, picks)`` is ``A v`` with the curvature over the sample
    rows ``picks`` (and the damping added), ``rows`` the sample's size."""
    if rows <= 0:
        raise ConfigError("ASTRA needs at least one sample row")
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    velocity = torch.zeros_like(b)
    lr = schedule.lr
    first = last = float("nan")
    for step in range(schedule.steps):
        picks = torch.randperm(rows, generator=generator)[: min(schedule.rows, rows)]
        ax = apply_batch(x, picks)
        if step == 0:
            first = float(0.5 * (x @ ax) - b @ x)
        residual = ax - b
        direction = precondition(residual) if precondition is not None else residual
        velocity = schedule.momentum * velocity + direction
        x = x - lr * velocity
        if not torch.isfinite(x).all():
            raise ConfigError(f"ASTRA diverged at step {step + 1} with lr {schedule.lr}: lower the learning rate")
        if (step + 1) % schedule.decay_every == 0:
            lr *= schedule.decay
        if step == schedule.steps - 1:
            last = float(0.5 * (x @ apply_batch(x, picks)) - b @ x)
    return AstraResult(x, schedule.steps, (first, last))
