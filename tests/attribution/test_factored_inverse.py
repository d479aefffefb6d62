"""The factored inverse the Newton solvers precondition with, on a tiny float64 GPT-NeoX: it is symmetric positive
definite, EK-FAC's eigenvalues are the per-row sampled gradients' second moments in K-FAC's basis, its scale is the
Gauss-Newton matrix's, and as a preconditioner and warm start it makes conjugate gradient reach the same solution in
fewer products."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXForCausalLM

from attribution.astra import AstraSchedule
from attribution.batching import collate, training_batch
from attribution.errors import ConfigError
from attribution.factored_inverse import FactoredInverse, Factoring, _joined, _Recorder, _sampled_passes
from attribution.newton import GaussNewton, NewtonConfig, conjugate_gradient, loss_gradient, newton_direction
from tests.attribution.conftest import one_layer_model, token_rows

rows = token_rows


@pytest.fixture(scope="module")
def model() -> GPTNeoXForCausalLM:
    return one_layer_model()


@pytest.mark.parametrize("factoring", [Factoring.KFAC, Factoring.EKFAC])
def test_the_inverse_is_symmetric_positive_definite(model, factoring) -> None:
    inverse = FactoredInverse.fit(model, training_batch(rows(1, 6, 8)), damping=0.01, factoring=factoring)
    dim = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    v, w = (torch.randn(dim, generator=generator, dtype=torch.float64) for _ in range(2))
    assert float(v @ inverse(w)) == pytest.approx(float(w @ inverse(v)), rel=1e-9)
    assert float(v @ inverse(v)) > 0 and float(w @ inverse(w)) > 0
    assert inverse.describe()["blocks"] > 0 and inverse.describe()["factoring"] == factoring.value
    # the output head (24 outputs) is a block; embeddings and layer norms are diagonal
    assert any(b.weight == "lm_head.weight" for b in inverse.blocks)
    assert "gpt_neox.embed_in.weight" in inverse.diagonal


def test_ekfac_eigenvalues_are_the_rotated_gradients_second_moments(model) -> None:
    sample = training_batch(rows(2, 5, 7))
    kfac = FactoredInverse.fit(model, sample, damping=0.1, factoring=Factoring.KFAC)
    ekfac = FactoredInverse.fit(model, sample, damping=0.1, factoring=Factoring.EKFAC)
    recorder = _Recorder({})
    per_row = list(_sampled_passes(model, sample, recorder, seed=0))  # the same labels as the fit drew
    for k_block, e_block in zip(kfac.blocks, ekfac.blocks, strict=True):
        torch.testing.assert_close(k_block.q_in, e_block.q_in)
        expected = torch.stack([(e_block.q_out.T @ _joined(g, e_block) @ e_block.q_in) ** 2
                                for g in per_row]).mean(0)
        torch.testing.assert_close(e_block.eigenvalues, expected)
        # a rotation keeps the squared norm: EK-FAC's eigenvalues sum to the mean squared per-row gradient
        assert float(e_block.eigenvalues.sum()) == pytest.approx(
            sum(float((_joined(g, e_block) ** 2).sum()) for g in per_row) / len(per_row), rel=1e-9)
    for name, diagonal in ekfac.diagonal.items():
        torch.testing.assert_close(diagonal, torch.stack([g[name] ** 2 for g in per_row]).mean(0))


def test_sampled_fisher_diagonal_matches_the_gauss_newton_trace(model) -> None:
    """Labels drawn from the model make the squared gradients an unbiased estimate of G's diagonal: over many rows,
    the estimated trace is within sampling noise of the exact one."""
    sample = training_batch(rows(3, 200, 6))
    inverse = FactoredInverse.fit(model, sample, damping=0.1, factoring=Factoring.EKFAC)
    estimated = sum(float(b.eigenvalues.sum()) for b in inverse.blocks)
    estimated += sum(float(d.sum()) for d in inverse.diagonal.values())
    system = GaussNewton(model, sample)
    exact = system.mean_eigenvalue(probes=64) * system.dim
    assert estimated == pytest.approx(exact, rel=0.25)


def test_preconditioned_and_warm_started_cg_reach_the_same_solution(model) -> None:
    """Correctness, not speed: on this one-layer random model the embedding and the residual biases are nearly
    redundant, a coupling no block-diagonal inverse sees, and preconditioning takes *more* products (measured:
    ``bench/newton_solvers.py`` reports the products on the LDS cases)."""
    sample = training_batch(rows(4, 8, 8))
    target = collate(rows(5, 1, 8), [[0, 0, 0, 1, 1, 1, 1, 1]])
    b = loss_gradient(model, target)
    system = GaussNewton(model, sample)
    system.damping = 1.0 * system.mean_eigenvalue()
    plain = conjugate_gradient(system.product, b, tol=1e-9, max_iter=system.dim)
    for factoring in (Factoring.KFAC, Factoring.EKFAC):
        inverse = FactoredInverse.fit(model, sample, system.damping, factoring)
        preconditioned = conjugate_gradient(system.product, b, tol=1e-9, max_iter=system.dim, precondition=inverse)
        warm = conjugate_gradient(system.product, b, x0=inverse(b), tol=1e-9, max_iter=system.dim,
                                  precondition=inverse)
        for solved in (preconditioned, warm):
            assert solved.residual < 1e-9
            torch.testing.assert_close(solved.x, plain.x, rtol=1e-6, atol=1e-7)


def test_zero_steps_give_the_factored_inverse_alone(model) -> None:
    """``max_iter = 0`` with a warm start: ``x = P⁻¹ g``, P fitted on the sample at the relative damping, and the
    residual it reports is that ``x``'s in the exact damped system (one product)."""
    sample, target = training_batch(rows(8, 6, 8)), collate(rows(9, 1, 8), [[0, 0, 1, 1, 1, 1, 1, 1]])
    found = newton_direction(model, target, sample, NewtonConfig(damping=0.1, factoring="ekfac", warm_start=True,
                                                                  max_iter=0))
    system = GaussNewton(model, sample)
    assert found.damping == pytest.approx(0.1 * system.mean_eigenvalue())
    inverse = FactoredInverse.fit(model, sample, found.damping, "ekfac")
    torch.testing.assert_close(found.x, inverse(found.gradient), rtol=1e-12, atol=0)
    system.damping = found.damping
    exact = float((system.product(found.x) - found.gradient).norm() / found.gradient.norm())
    assert found.iterations == 0 and found.products == 1 and found.residual == pytest.approx(exact, rel=1e-9)
    assert found.residual > 1e-3  # a factored inverse is not the exact one on this model
    for bad in (dict(max_iter=0), dict(max_iter=0, factoring="ekfac"),
                dict(max_iter=0, factoring="ekfac", warm_start=True, solver="astra"), dict(max_iter=-1)):
        with pytest.raises(ConfigError, match="0 steps|max_iter >= 0"):
            NewtonConfig(**bad)


def test_newton_direction_with_astra_approaches_the_cg_solution(model) -> None:
    sample, target = training_batch(rows(6, 8, 8)), collate(rows(7, 1, 8), [[0, 0, 1, 1, 1, 1, 1, 1]])
    exact = newton_direction(model, target, sample, NewtonConfig(damping=10.0, tol=1e-10, max_iter=500))
    # full-batch steps: preconditioned heavy ball, which converges to the CG solution
    schedule = AstraSchedule(steps=300, rows=8, lr=0.3, momentum=0.5, decay=1.0, decay_every=100)
    astra = newton_direction(model, target, sample, NewtonConfig(damping=10.0, solver="astra", factoring="ekfac",
                                                                  astra=schedule))
    assert astra.residual < 1e-6 and astra.iterations == 300
    assert float((astra.x - exact.x).norm() / exact.x.norm()) < 1e-5
    # minibatch steps (3 rows of 8) with the warm start still end nearer the solution than where they began
    noisy = newton_direction(model, target, sample, NewtonConfig(
        damping=10.0, solver="astra", factoring="ekfac", warm_start=True,
        astra=AstraSchedule(steps=60, rows=3, lr=0.1, momentum=0.5)))
    warm = float((FactoredInverse.fit(model, sample, exact.damping, "ekfac")(exact.gradient)
                  - exact.x).norm())
    assert float((noisy.x - exact.x).norm()) < warm
    assert noisy.products == round(60 * 3 / 8) + 1


def test_bad_settings_are_refused(model) -> None:
    with pytest.raises(ConfigError, match="warm start needs a factoring"):
        NewtonConfig(warm_start=True)
    with pytest.raises(ConfigError, match="factoring must be one of"):
        NewtonConfig(factoring="shampoo")
    with pytest.raises(ConfigError, match="positive finite damping"):
        FactoredInverse.fit(model, training_batch(rows(1, 2, 4)), damping=0.0)
    with pytest.raises(ConfigError, match="momentum"):
        AstraSchedule(momentum=1.0)
