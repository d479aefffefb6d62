"""Metadata filters shared by every retriever: Pile subset and training-step range."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attribution.errors import ConfigError


@dataclass(frozen=True)
class Filters:
    """Keep examples from one ``pile_set_name`` and/or a step range (inclusive bounds)."""

    pile_set_name: str | None = None
    step_min: int | None = None
    step_max: int | None = None

    def __post_init__(self) -> None:
        if self.step_min is not None and self.step_max is not None and self.step_min > self.step_max:
            raise ConfigError(f"step_min {self.step_min} is greater than step_max {self.step_max}")

    @property
    def empty(self) -> bool:
        return self.pile_set_name is None and self.step_min is None and self.step_max is None


def allowed_rows(metadata: list[dict], filters: Filters | None) -> np.ndarray | None:
    """Row positions that pass the filters; ``None`` when nothing is filtered."""
    if filters is None or filters.empty:
        return None
    keep = []
    for row, meta in enumerate(metadata):
        if filters.pile_set_name is not None and meta.get("pile_set_name") != filters.pile_set_name:
            continue
        step = meta.get("step")
        if filters.step_min is not None and (step is None or step < filters.step_min):
            continue
        if filters.step_max is not None and (step is None or step > filters.step_max):
            continue
        keep.append(row)
    return np.asarray(keep, dtype="int64")
