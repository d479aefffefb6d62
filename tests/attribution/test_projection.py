"""Projection matrices: reproducible from the seed, distinct across modules and sides."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.projection import projection_matrix


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), dim=st.integers(1, 64), k=st.integers(1, 16))
def test_reproducible_and_distinct(seed: int, dim: int, k: int) -> None:
    a = projection_matrix(seed, "layers.0.mlp", "in", dim, k)
    assert a.shape == (dim, k)
    assert torch.equal(a, projection_matrix(seed, "layers.0.mlp", "in", dim, k))
    if dim * k > 1:
        assert not torch.equal(a, projection_matrix(seed, "layers.1.mlp", "in", dim, k))
        assert not torch.equal(a, projection_matrix(seed, "layers.0.mlp", "out", dim, k))
        assert not torch.equal(a, projection_matrix(seed + 1, "layers.0.mlp", "in", dim, k))


def test_scaled_for_unbiased_inner_products() -> None:
    p = projection_matrix(0, "m", "in", 4000, 64, torch.float64)
    assert abs(float((p * p).sum(0).mean()) - 4000 / 64) < 4000 / 64 * 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_identical_on_gpu() -> None:
    cpu = projection_matrix(7, "m", "out", 300, 16)
    gpu = projection_matrix(7, "m", "out", 300, 16, device="cuda")
    assert torch.equal(cpu, gpu.cpu())
