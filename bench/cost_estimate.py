"""The catalog's estimate of an uncached ``unlearning`` query, beside the time such a query takes.

    python -m bench.cost_estimate [--index demo-data/index] [--index second-data/index-all] [--repeats 3]

``method: auto`` chooses between ``unlearning`` and ``gradient`` by ``service.catalog.unlearning_cost``, an estimate
timed when the index loads. This compares it with real uncached queries: each repeat opens the index afresh (so no
row's losses are cached), estimates, then times one ``unlearning`` query. The ratio estimate / measured is the
figure to read (the aim: within 0.5-2×); both timings come from one process, so a busy machine moves both.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from attribution.retrievers import Method
from indexer.store import open_index
from service.catalog import unlearning_cost


@dataclass(frozen=True)
class EstimateCheck:
    """One index's estimates against its timed queries (one of each per repeat)."""

    index: str
    rows: int
    """Rows an uncached query re-scores (the estimate's count)."""
    estimates: list[float]
    measured: list[float]

    def ratios(self) -> list[float]:
        return [e / m for e, m in zip(self.estimates, self.measured, strict=True)]

    def row(self) -> str:
        ratios = self.ratios()
        return (f"| {self.index} | {self.rows} | {statistics.median(self.estimates):.2f} | "
                f"{statistics.median(self.measured):.2f} | {statistics.median(ratios):.2f} | "
                f"{min(ratios):.2f}-{max(ratios):.2f} |")


HEADER = ("| index | rows re-scored | estimate s (median) | uncached query s (median) | estimate / query (median) "
          "| range |\n|---|---|---|---|---|---|")


def check(index: Path, repeats: int) -> EstimateCheck:
    """Estimate and time one uncached ``unlearning`` query ``repeats`` times, each on a freshly opened index."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    estimates: list[float] = []
    measured: list[float] = []
    rows = 0
    for _ in range(repeats):
        session = open_index(index)
        cost = unlearning_cost(session)
        rows = cost.rows
        prompt = session.texts_of([0])[0][:60] or "The"  # any prompt: the cost is the rows' passes, not the target's
        started = time.perf_counter()
        session.attribute(prompt, " the", k=5, method=Method.UNLEARNING)
        measured.append(time.perf_counter() - started)
        estimates.append(cost.seconds())
    return EstimateCheck(str(index), rows, estimates, measured)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, action="append",
                        help="an index directory (repeat for several; default demo-data/index)")
    parser.add_argument("--repeats", type=int, default=3, help="estimates and timed queries per index (default 3)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    indexes = args.index or [Path("demo-data/index")]
    missing = [str(p) for p in indexes if not p.is_dir()]
    if missing:
        parser.error(f"no index at {', '.join(missing)}: build one with `headwater index build` or `make demo-index`")
    print(f"\n{HEADER}")
    for index in indexes:
        print(check(index, args.repeats).row(), flush=True)


if __name__ == "__main__":
    main()
