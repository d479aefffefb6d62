"""Preconditioning, cosine, contrastive projection, per-token views and checkpoint sums."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.errors import ConfigError
from attribution.preconditioner import CovarianceAccumulator, Preconditioner, PreconditionMode
from attribution.scoring import ScoreMode, combine_checkpoints, prepare_query, prepare_train


def data(seed: int, n: int = 40, d: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["inverse", "inverse_sqrt"])
def test_preconditioned_scores_equal_the_dense_formula(mode: str) -> None:
    train = data(0)
    acc = CovarianceAccumulator(12)
    acc.add(train[:25])
    other = CovarianceAccumulator(12)
    other.add(train[25:])
    acc.merge(other)  # partial sums from two shards
    pre = Preconditioner.fit(acc, mode, damping=0.1)
    cov = train.T @ train / len(train)
    lam = 0.1 * float(torch.linalg.eigvalsh(cov).mean())
    assert pre.lam == pytest.approx(lam)
    query = data(1, n=1)[0]
    dense = query @ torch.linalg.inv(cov + lam * torch.eye(12, dtype=torch.float64)) @ train.T
    q, _ = prepare_query(query, ScoreMode.INNER_PRODUCT, pre)
    torch.testing.assert_close(prepare_train(train, ScoreMode.INNER_PRODUCT, pre) @ q, dense)


def test_save_and_load(tmp_path: Path) -> None:
    acc = CovarianceAccumulator(12)
    acc.add(data(2))
    pre = Preconditioner.fit(acc, "inverse_sqrt", 0.3)
    pre.save(tmp_path / "p.safetensors")
    back = Preconditioner.load(tmp_path / "p.safetensors")
    assert back.mode is PreconditionMode.INVERSE_SQRT and back.damping == 0.3 and back.lam == pre.lam
    assert torch.equal(back.matrix, pre.matrix)


def test_the_matrix_is_converted_once_per_dtype() -> None:
    acc = CovarianceAccumulator(12)
    acc.add(data(3))
    pre = Preconditioner.fit(acc, "inverse_sqrt", 0.1)
    query32, query64 = data(4, n=2).float(), data(4, n=2)
    first = pre.apply_query(query32)
    assert first.dtype == torch.float32
    torch.testing.assert_close(first, query32 @ pre.matrix.float())
    assert pre.matrix_like(query32) is pre.matrix_like(query32)  # kept, not converted again
    assert pre.apply_train(query64).dtype == torch.float64
    torch.testing.assert_close(pre.apply_train(query64), query64 @ pre.matrix)


def test_bad_preconditioner_settings() -> None:
    acc = CovarianceAccumulator(3)
    with pytest.raises(ConfigError, match="zero sketches"):
        Preconditioner.fit(acc, "inverse")
    acc.add(torch.ones(2, 3))
    with pytest.raises(ConfigError, match="damping must be positive"):
        Preconditioner.fit(acc, "inverse", damping=0)
    with pytest.raises(ValueError):
        Preconditioner.fit(acc, "sideways")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(list(ScoreMode)), controls=st.integers(0, 3),
       precondition=st.booleans())
def test_per_token_contributions_sum_to_the_score(
    seed: int, mode: ScoreMode, controls: int, precondition: bool
) -> None:
    train, tokens = data(seed, n=20), data(seed + 1, n=4)
    pre = None
    if precondition:
        acc = CovarianceAccumulator(12)
        acc.add(train)
        pre = Preconditioner.fit(acc, "inverse_sqrt")
    ctrl = data(seed + 2, n=controls) if controls else None
    q, per_token = prepare_query(tokens.sum(0), mode, pre, ctrl, per_token=tokens)
    vectors = prepare_train(train, mode, pre)
    torch.testing.assert_close((per_token @ vectors.T).sum(0), vectors @ q)
    if mode is ScoreMode.COSINE:
        assert float(q.norm()) == pytest.approx(1.0)


def test_contrastive_query_is_orthogonal_to_the_controls() -> None:
    target, controls = data(3, n=1)[0], data(4, n=3)
    q, _ = prepare_query(target, ScoreMode.INNER_PRODUCT, None, controls)
    torch.testing.assert_close(controls @ q, torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    # The part of the target outside the controls' span is untouched.
    assert float((target - q) @ q) == pytest.approx(0.0, abs=1e-9)


def test_checkpoint_sum_is_tracin_cp() -> None:
    q1, q2, g1, g2 = data(5, n=1)[0], data(6, n=1)[0], data(7, n=3), data(8, n=3)
    ip = ScoreMode.INNER_PRODUCT
    joined = combine_checkpoints([g1, g2], ip) @ combine_checkpoints([q1, q2], ip)
    torch.testing.assert_close(joined, g1 @ q1 + g2 @ q2)
    cos = ScoreMode.COSINE
    unit = combine_checkpoints([prepare_train(g1, cos), prepare_train(g2, cos)], cos) @ combine_checkpoints(
        [prepare_query(q1, cos)[0], prepare_query(q2, cos)[0]], cos)
    first = prepare_train(g1, cos) @ prepare_query(q1, cos)[0]
    expected = (first + prepare_train(g2, cos) @ prepare_query(q2, cos)[0]) / 2
    torch.testing.assert_close(unit, expected)


@given(w1=st.floats(0.01, 10.0), w2=st.floats(0.01, 10.0))
@settings(max_examples=30, deadline=None)
def test_weighted_checkpoints_scale_each_checkpoints_score(w1: float, w2: float) -> None:
    q1, q2, g1, g2 = data(5, n=1)[0], data(6, n=1)[0], data(7, n=3), data(8, n=3)
    ip = ScoreMode.INNER_PRODUCT
    joined = combine_checkpoints([g1, g2], ip, (w1, w2)) @ combine_checkpoints([q1, q2], ip, (w1, w2))
    torch.testing.assert_close(joined, w1 * (g1 @ q1) + w2 * (g2 @ q2))
    cos = ScoreMode.COSINE
    parts_g = [prepare_train(g1, cos), prepare_train(g2, cos)]
    parts_q = [prepare_query(q1, cos)[0], prepare_query(q2, cos)[0]]
    weighted = combine_checkpoints(parts_g, cos, (w1, w2)) @ combine_checkpoints(parts_q, cos, (w1, w2))
    expected = (w1 * (parts_g[0] @ parts_q[0]) + w2 * (parts_g[1] @ parts_q[1])) / (w1 + w2)
    torch.testing.assert_close(weighted, expected)
