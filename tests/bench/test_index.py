"""The synthetic vectors of bench/index.py: every block and the queries come from the same fixed clusters."""

from __future__ import annotations

import numpy as np

from bench.index import CENTRES, centres, synthetic


def test_blocks_and_queries_share_the_fixed_centres() -> None:
    dim = 256
    fixed = centres(dim) / np.linalg.norm(centres(dim), axis=1, keepdims=True)
    assert fixed.shape == (CENTRES, dim) and np.array_equal(centres(dim), centres(dim))
    for seed in (1, 2, 10_000):  # two blocks of a large set and the query seed
        vectors = synthetic(300, dim, seed=seed)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        nearest = (vectors @ fixed.T).max(axis=1)
        assert nearest.min() > 0.7  # each vector lies near one of the fixed centres (a random one: ~0.2)
    assert not np.array_equal(synthetic(10, dim, seed=1), synthetic(10, dim, seed=2))
