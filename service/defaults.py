"""The method a query that names none gets: the server's ``default_method`` setting, or with ``auto`` the best method
by the counterfactual evidence (``unlearning``) where this index and device answer it quickly, else ``gradient``.

``unlearning`` is the best selection on removal-and-retrain and the best estimator on the field's LDS protocol that
stores nothing beyond the default index (bench/RESULTS.md), but it costs a forward pass over every row it re-scores:
about 1 s a query on the demo, minutes on CPU at Pythia's 2,049-token rows (``bench.pythia_shape --unlearning``).
So ``auto`` keeps it only while the catalog's estimate of a query over rows not cached yet (one forward pass over a
typical row in a batch shaped as a query's, timed at load and then measured on real queries as they run, × 3 passes
× the rows a query re-scores, plus two short ascents) stays within ``AUTO_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attribution.retrievers import Method

if TYPE_CHECKING:
    from service.catalog import Catalog

AUTO = "auto"
AUTO_SECONDS = 30.0
"""Most estimated seconds of an uncached ``unlearning`` query for ``auto`` to make it the default (measured on 2 CPU
cores: ~6 s on the demo, ~150 s at Pythia-14m's shape, ~460 s at -70m's)."""
CHOICES = (AUTO, *(m.value for m in Method))


def choice_error(value: str) -> str | None:
    """Why ``value`` is no ``default_method`` setting (``auto`` or a method name), naming them; None when it is one."""
    return None if value in CHOICES else f"must be one of {', '.join(CHOICES)}, got {value!r}"


@dataclass(frozen=True)
class MethodChoice:
    method: Method
    reason: str


def default_method(setting: str, catalog: Catalog) -> MethodChoice:
    """The method of a query without one, and why (``setting``: ``auto`` or a method name, already validated)."""
    if setting != AUTO:
        return MethodChoice(Method(setting), "set by the server (default_method)")
    cost, observed = catalog.unlearning, catalog.observed.row_seconds()
    if cost.row_seconds == float("inf") and observed is None:
        return MethodChoice(Method.GRADIENT, "auto: an unlearning pass could not be timed at load (see the server "
                                             "log), so gradient")
    per_row = cost.row_seconds if observed is None else observed
    source = ("timed at load" if observed is None else
              f"measured on the last {catalog.observed.queries} unlearning queries")
    estimate = (f"an unlearning query re-scores up to {cost.rows:,} rows of ~{cost.row_tokens:,} tokens, "
                f"~{cost.seconds(per_row):.1f} s here uncached ({per_row * 1e3:.1f} ms a row and pass, {source})")
    if cost.seconds(per_row) <= AUTO_SECONDS:
        return MethodChoice(Method.UNLEARNING, f"auto: {estimate}, within {AUTO_SECONDS:.0f} s")
    return MethodChoice(Method.GRADIENT, f"auto: {estimate}, over {AUTO_SECONDS:.0f} s, so gradient (ask for "
                                         "unlearning by name: it ranks better and costs that)")
