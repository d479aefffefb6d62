"""The Newton-step math on a tiny float64 GPT-NeoX: Gauss-Newton products equal the explicit matrix, conjugate
gradient solves the damped system, and the loss change along a direction is exact (JVP = the gradient's dot
product = the central difference), with the weights restored bit for bit."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXForCausalLM

from attribution.batching import collate, training_batch
from attribution.errors import ConfigError
from attribution.newton import (
    GaussNewton,
    NewtonConfig,
    conjugate_gradient,
    eager_attention,
    flatten,
    loss_changes,
    loss_changes_central,
    loss_gradient,
    newton_direction,
    next_token_logits,
    parameter_mask,
    parameters_of,
    row_losses,
    unflatten,
)
from tests.attribution.conftest import one_layer_model, token_rows

rows = token_rows


@pytest.fixture(scope="module")
def model() -> GPTNeoXForCausalLM:
    return one_layer_model()


def explicit_gauss_newton(model, batch) -> torch.Tensor:
    """``G`` formed whole from the Jacobian of the logits (only for a model this small)."""
    params = parameters_of(model)

    def logits(flat: torch.Tensor) -> torch.Tensor:
        return next_token_logits(model, unflatten(flat, params), batch)

    with eager_attention(model):
        flat = flatten(params)
        jacobian = torch.autograd.functional.jacobian(logits, flat)  # (B, T-1, V, P)
        probs = torch.softmax(logits(flat), dim=-1)
    mask = batch.loss_mask[:, 1:].to(probs)
    hessian = torch.diag_embed(probs) - probs[..., :, None] * probs[..., None, :]  # (B, T-1, V, V)
    product = torch.einsum("btvp,btvw,btwq,bt->pq", jacobian, hessian, jacobian, mask)
    return product / batch.input_ids.shape[0]


def test_gauss_newton_products_equal_the_explicit_matrix(model) -> None:
    sample = training_batch(rows(1, 3, 6))
    dense = explicit_gauss_newton(model, sample)
    system = GaussNewton(model, sample, damping=0.5)
    for seed in range(3):
        v = torch.randn(system.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(system.product(v), dense @ v + 0.5 * v, rtol=1e-9, atol=1e-10)
    assert torch.allclose(dense, dense.T, atol=1e-10) and float(torch.linalg.eigvalsh(dense).min()) > -1e-10
    assert system.mean_eigenvalue(probes=64) == pytest.approx(float(dense.trace()) / system.dim, rel=0.3)


@pytest.mark.parametrize("chunk_rows", [1, 2, 5])
def test_products_taken_in_chunks_of_rows_equal_the_whole_matrix(model, chunk_rows: int) -> None:
    """A product summed over chunks of the sample's rows (the last one short) is the whole sample's."""
    sample = training_batch(rows(8, 5, 6))
    dense = explicit_gauss_newton(model, sample)
    system = GaussNewton(model, sample, damping=0.3, chunk_rows=chunk_rows)
    v = torch.randn(system.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(system.product(v), dense @ v + 0.3 * v, rtol=1e-9, atol=1e-10)
    with pytest.raises(ConfigError, match="chunk_rows > 0"):
        GaussNewton(model, sample, chunk_rows=0)


def test_conjugate_gradient_solves_the_damped_system(model) -> None:
    sample = training_batch(rows(2, 4, 6))
    system = GaussNewton(model, sample, damping=0.2)
    dense = explicit_gauss_newton(model, sample) + 0.2 * torch.eye(system.dim, dtype=torch.float64)
    target = collate(rows(3, 1, 6), [[0, 0, 0, 1, 1, 1]])
    b = loss_gradient(model, target)
    solved = conjugate_gradient(system.product, b, tol=1e-10, max_iter=system.dim)
    assert solved.residual < 1e-10 and float((dense @ solved.x - b).norm() / b.norm()) < 1e-8
    torch.testing.assert_close(solved.x, torch.linalg.solve(dense, b), rtol=1e-6, atol=1e-8)
    warm = conjugate_gradient(system.product, b, x0=solved.x, tol=1e-8)
    assert warm.iterations == 0  # a warm start at the answer needs no product
    exact_inverse = torch.linalg.inv(dense)
    preconditioned = conjugate_gradient(system.product, b, precondition=lambda r: exact_inverse @ r, tol=1e-10)
    assert preconditioned.iterations <= 2  # a perfect preconditioner answers in one step (rounding: two)
    with pytest.raises(ConfigError, match="not positive definite"):
        conjugate_gradient(lambda v: -v, b)


def test_newton_direction_records_how_it_was_found(model) -> None:
    sample, target = training_batch(rows(4, 3, 6)), collate(rows(5, 1, 6), [[0, 0, 1, 1, 1, 1]])
    found = newton_direction(model, target, sample, NewtonConfig(damping=1.0, tol=1e-7, max_iter=300))
    system = GaussNewton(model, sample, damping=found.damping)
    assert found.damping == pytest.approx(1.0 * system.mean_eigenvalue())  # relative to the mean eigenvalue
    assert float((system.product(found.x) - found.gradient).norm() / found.gradient.norm()) < 1e-6
    assert found.iterations > 0 and found.seconds > 0
    with pytest.raises(ConfigError, match="damping"):
        NewtonConfig(damping=0)


@pytest.mark.parametrize("groups", [("blocks",), ("blocks", "head"), ("embed",)])
def test_a_direction_over_some_groups_solves_their_block_of_the_system(model, groups: tuple[str, ...]) -> None:
    """With ``groups``, ``x`` is 0 off those modules' weights and solves ``(G_SS + λ) x_S = g_S`` on them (``G_SS``
    the explicit matrix's block), λ relative to that block's mean eigenvalue."""
    sample, target = training_batch(rows(6, 3, 6)), collate(rows(7, 1, 6), [[0, 0, 1, 1, 1, 1]])
    found = newton_direction(model, target, sample, NewtonConfig(damping=1.0, tol=1e-10, max_iter=500,
                                                                 groups=groups))
    mask = parameter_mask(model, groups).bool()
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.count_nonzero(found.x[~mask]) == 0
    dense = explicit_gauss_newton(model, sample)[mask][:, mask]
    exact = torch.linalg.solve(dense + found.damping * torch.eye(int(mask.sum()), dtype=torch.float64),
                               loss_gradient(model, target)[mask])
    torch.testing.assert_close(found.x[mask], exact, rtol=1e-5, atol=1e-7)
    system = GaussNewton(model, sample, mask=mask.to(torch.float64))
    assert system.mean_eigenvalue(probes=64) == pytest.approx(float(dense.trace()) / int(mask.sum()), rel=0.3)
    assert NewtonConfig(groups=("head", "blocks", "head")).groups == ("head", "blocks")
    for bad in ({"groups": ("tail",)}, {"groups": ("blocks",), "factoring": "ekfac"},
                {"groups": ("blocks",), "solver": "astra"}):
        with pytest.raises(ConfigError):
            NewtonConfig(**bad)


def test_loss_changes_are_exact_and_restore_the_weights(model) -> None:
    batch = training_batch(rows(6, 4, 7))
    direction = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(7),
                            dtype=torch.float64)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    attention = model.config._attn_implementation
    by_jvp = loss_changes(model, batch, direction)
    exact = torch.stack([loss_gradient(model, training_batch([row])) @ direction for row in rows(6, 4, 7)])
    torch.testing.assert_close(by_jvp, exact, rtol=1e-9, atol=1e-10)
    central = loss_changes_central(model, batch, direction, eps=1e-5)
    torch.testing.assert_close(central, exact, rtol=1e-4, atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name  # bit for bit
    assert model.config._attn_implementation == attention
    with torch.no_grad():
        torch.testing.assert_close(row_losses(model(batch.input_ids).logits[:, :-1], batch),
                                   row_losses(next_token_logits(model, parameters_of(model), batch), batch))
    with pytest.raises(ConfigError, match="eps"):
        loss_changes_central(model, batch, direction, eps=0)
    with pytest.raises(ConfigError, match="does not match"):
        loss_changes(model, batch, direction[:-1])
