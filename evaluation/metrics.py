"""Retrieval metrics against ground truth: recall@k and mean reciprocal rank."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def first_gold_rank(ranked_ids: Sequence[int], gold: Iterable[int]) -> int | None:
    """1-based rank of the first gold id in a ranking, or ``None`` if none is retrieved."""
    wanted = set(gold)
    for rank, example_id in enumerate(ranked_ids, start=1):
        if example_id in wanted:
            return rank
    return None


def recall_at(ranks: Sequence[int | None], k: int) -> float:
    """Share of queries with a gold example in the top k."""
    return sum(r is not None and r <= k for r in ranks) / len(ranks) if ranks else float("nan")


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    """Mean of 1/rank of the first gold example (0 when none is retrieved)."""
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks) if ranks else float("nan")
