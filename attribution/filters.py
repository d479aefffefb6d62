"""Metadata filters shared by every retriever: Pile subset and training-step range.

A packed training row can hold several documents from different subsets: its ``pile_set_names`` label
lists them all (``pile_set_name`` alone is one of them), and a subset filter keeps a row holding any of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from attribution.errors import ConfigError


@dataclass(frozen=True)
class Filters:
    """Keep examples holding text of one Pile subset and/or from a step range (inclusive bounds)."""

    pile_set_name: str | None = None
    step_min: int | None = None
    step_max: int | None = None

    def __post_init__(self) -> None:
        if self.step_min is not None and self.step_max is not None and self.step_min > self.step_max:
            raise ConfigError(f"step_min {self.step_min} is greater than step_max {self.step_max}")

    @property
    def empty(self) -> bool:
        return self.pile_set_name is None and self.step_min is None and self.step_max is None


def subsets_of(meta: dict) -> list[str]:
    """Every Pile subset a row holds: its ``pile_set_names`` label, else its one ``pile_set_name`` (or none)."""
    names = meta.get("pile_set_names")
    if names:
        return list(names)
    return [meta["pile_set_name"]] if meta.get("pile_set_name") is not None else []
