"""Kind ``ekfac_basis`` on a tiny float64 GPT-NeoX: exact EK-FAC influence once k covers every side."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attribution.batching import training_batch
from attribution.config import AttributionConfig, CurvatureConfig
from attribution.curvature import load_curvature, prefit_curvature, row_sample
from attribution.eigenbasis import EigenbasisCurvature
from attribution.errors import ConfigError
from attribution.kfac import KroneckerBasis
from attribution.sketch import SketchConfig, Sketcher
from tests.attribution.conftest import make_tiny_model, random_rows
from tests.attribution.test_kfac import gathered, query_batch
from tests.attribution.test_sketch import exact_gradients

ROWS = [9, 5, 9, 7, 3, 8]
FULL = 48  # the tiny model's widest side (QKV's output): k = 48 covers every side of every module


def fitted(k: int, damping: float = 0.1, sample: int = 6) -> tuple[torch.nn.Module, Sketcher, EigenbasisCurvature,
                                                                     list[list[int]]]:
    model = make_tiny_model(torch.float64)
    sketcher = Sketcher(model, SketchConfig(k=k, seed=2))
    rows = random_rows(ROWS, seed=4)
    curvature = prefit_curvature(CurvatureConfig(kind="ekfac_basis", damping=damping, sample_rows=sample), sketcher,
                                 row_sample(rows))
    return model, sketcher, curvature, rows


def exact_ekfac_scores(model, sketcher: Sketcher, rows: list[list[int]], queries, damping: float) -> torch.Tensor:
    """⟨H⁻¹ dW_q, dW_i⟩ with EK-FAC's H (factors and Λ from every row's exact gradient), by brute force."""
    basis = KroneckerBasis.fit(gathered(sketcher, rows))
    train, query = exact_gradients(model, sketcher, training_batch(rows)), exact_gradients(model, sketcher, queries)
    scores = torch.zeros(len(query), len(train), dtype=torch.float64)
    for name in sketcher.modules:
        q_a = basis.rotation(name, "a").to(torch.float64)
        q_g = basis.rotation(name, "g").to(torch.float64)
        rotated_train = torch.stack([q_g.T @ g[name] @ q_a for g in train])
        rotated_query = torch.stack([q_g.T @ g[name] @ q_a for g in query])
        lam = rotated_train.pow(2).mean(0)
        scale = lam + damping * float(lam.mean())
        scores += torch.einsum("qoi,toi->qt", rotated_query / scale, rotated_train)
    return scores


def test_full_k_is_exact_ekfac_influence() -> None:
    model, sketcher, curvature, rows = fitted(FULL, damping=0.2)
    queries = query_batch(random_rows([6, 8, 5], seed=11))
    train = curvature.apply_train(curvature.train_sketcher(sketcher).sketch(training_batch(rows)))
    query = curvature.apply_query(curvature.query_sketcher(sketcher).sketch(queries))
    reference = exact_ekfac_scores(model, sketcher, rows, queries, damping=0.2)
    torch.testing.assert_close(query @ train.T, reference, rtol=1e-5, atol=1e-8 * float(reference.abs().max()))


def test_eigenvalues_are_the_sketches_mean_squares_and_projections_orthonormal() -> None:
    _, sketcher, curvature, rows = fitted(4, sample=4)
    raw = curvature.train_sketcher(sketcher).sketch(training_batch(row_sample(rows)(4)))
    squares = torch.cat([curvature.eigenvalues[n].flatten() for n in curvature.modules]).to(torch.float64)
    torch.testing.assert_close(squares, raw.pow(2).mean(0), rtol=1e-5, atol=1e-12)
    for p_in, p_out in curvature.projections.values():
        for p in (p_in, p_out):
            torch.testing.assert_close(p.T.double() @ p.double(), torch.eye(4, dtype=torch.float64), atol=1e-5,
                                       rtol=0)
    assert curvature.examples == 4 and curvature.fit_seconds is not None


def test_top_eigenvectors_come_first_and_narrow_sides_pad_with_zeros() -> None:
    model, sketcher, curvature, rows = fitted(24)  # 16-wide sides get 8 zero columns
    name = "gpt_neox.layers.0.attention.dense"
    p_in, p_out = curvature.projections[name]
    assert p_in.shape == (16, 24) and torch.count_nonzero(p_in[:, 16:]) == 0
    factors = gathered(sketcher, rows).factors()[name]
    energy = torch.diagonal(p_in[:, :16].double().T @ factors["a"] @ p_in[:, :16].double())
    assert bool((energy[:-1] >= energy[1:] - 1e-12).all())  # decreasing eigenvalues
    assert torch.count_nonzero(curvature.eigenvalues[name].reshape(24, 24)[:, 16:]) == 0
    # zero coordinates stay zero, and λ is the mean of the real ones, not diluted by the padding
    real = curvature.eigenvalues[name][:16, :16]
    assert curvature.lams[name] == pytest.approx(0.1 * float(real.mean()), rel=1e-5)


def test_save_load_and_refusals(tmp_path: Path) -> None:
    _, sketcher, curvature, rows = fitted(3)
    curvature.save(tmp_path / "c.safetensors")
    loaded = load_curvature(tmp_path / "c.safetensors")
    assert loaded.describe() == curvature.describe() and loaded.describe()["kind"] == "ekfac_basis"
    batch = query_batch(random_rows([7, 5], seed=3))
    torch.testing.assert_close(loaded.apply_query(loaded.query_sketcher(sketcher).sketch(batch)),
                               curvature.apply_query(curvature.query_sketcher(sketcher).sketch(batch)))
    other = Sketcher(sketcher.model, SketchConfig(k=4, seed=2))
    with pytest.raises(ConfigError, match="another sketch size"):
        loaded.train_sketcher(other)
    with pytest.raises(ConfigError, match="modules"):
        loaded.train_sketcher(Sketcher(sketcher.model, SketchConfig(k=3, groups=("blocks", "head"))))
    with pytest.raises(ConfigError, match="normalizer"):
        AttributionConfig(curvature=CurvatureConfig(kind="ekfac_basis"), normalizer="adam_state.safetensors")
    with pytest.raises(ConfigError, match="empty"):
        EigenbasisCurvature.fit(gathered(sketcher, rows), sketcher, lambda n: [], 4, 0.1)


def test_damping_defaults_per_kind_and_an_explicit_value_wins() -> None:
    assert CurvatureConfig(kind="ekfac_basis").damping == 0.01
    assert CurvatureConfig(kind="block").damping == 0.1 and CurvatureConfig().damping == 0.1
    assert CurvatureConfig(kind="ekfac_basis", damping=0.3).damping == 0.3
    with pytest.raises(ConfigError, match="damping must be positive"):
        CurvatureConfig(kind="ekfac_basis", damping=0.0)
