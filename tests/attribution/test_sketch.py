"""Gradient sketches equal projected exact per-example gradients, and are invariant to batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution.batching import TokenBatch, collate, training_batch
from attribution.errors import ConfigError
from attribution.modules import NoLinearModulesError
from attribution.sketch import SketchConfig, Sketcher
from tests.attribution.conftest import make_tiny_model, random_rows


def exact_gradients(model, sketcher: Sketcher, batch: TokenBatch) -> list[dict[str, torch.Tensor]]:
    """Per-example weight gradients from autograd, one example at a time."""
    out = []
    for b in range(len(batch)):
        n = int(batch.attention_mask[b].sum())
        ids = batch.input_ids[b : b + 1, :n]
        model.zero_grad()
        logits = model(input_ids=ids).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        (nll * batch.loss_mask[b, 1:n].to(nll)).sum().backward()
        out.append({name: mod.weight.grad.clone() for name, mod in sketcher.modules.items()})
    model.zero_grad()
    return out


def projected(sketcher: Sketcher, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    parts = []
    for name in sketcher.module_names:
        p_in, p_out = sketcher.projections[name]
        parts.append((p_out.T @ grads[name] @ p_in).flatten())
    return torch.cat(parts)


GROUPS = [("blocks",), ("blocks", "head"), ("embed",), ("head",), ("blocks", "embed", "head")]


@pytest.mark.parametrize("groups", GROUPS)
def test_sketch_equals_projected_exact_gradient(tiny_model, groups: tuple[str, ...]) -> None:
    sketcher = Sketcher(tiny_model, SketchConfig(k=5, seed=3, groups=groups))
    rows = random_rows([12, 7, 12, 3])
    batch = collate(rows, [[0] + [1] * (len(r) - 1) for r in rows])
    batch.loss_mask[2, :6] = 0  # a query-like example: loss on its last tokens only
    sketches = sketcher.sketch(batch)
    assert sketches.shape == (4, sketcher.dim) and sketcher.dim == len(sketcher.modules) * 25
    exact = [projected(sketcher, g) for g in exact_gradients(tiny_model, sketcher, batch)]
    for b, reference in enumerate(exact):
        assert float((sketches[b] - reference).norm() / reference.norm()) < 1e-8
    gram = sketches @ sketches.T
    exact_gram = torch.stack(exact) @ torch.stack(exact).T
    torch.testing.assert_close(gram, exact_gram, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("groups", [("blocks",), ("embed",)])
def test_the_chunked_loss_gives_the_same_sketches_at_any_chunk_size(tiny_model, groups: tuple[str, ...]) -> None:
    """The output head applied one position (or a few) at a time: same sketches as the whole batch at once."""
    rows = random_rows([12, 7, 12, 3])
    batch = collate(rows, [[0] + [1] * (len(r) - 1) for r in rows])
    sketcher = Sketcher(tiny_model, SketchConfig(k=5, seed=3, groups=groups))
    whole = sketcher.sketch(batch, window=4)
    vocab = tiny_model.get_output_embeddings().out_features
    for positions in (1, 5):
        sketcher.head_chunk_values = positions * vocab
        torch.testing.assert_close(sketcher.sketch(batch, window=4), whole, rtol=1e-10, atol=1e-12)


def test_no_parameter_gradients_and_flags_restored(tiny_model) -> None:
    tiny_model.gpt_neox.embed_in.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    Sketcher(tiny_model, SketchConfig(k=3)).sketch(training_batch(random_rows([6, 6])))
    assert all(p.grad is None for p in tiny_model.parameters())
    assert flags == {n: p.requires_grad for n, p in tiny_model.named_parameters()}


def test_large_k_tracks_exact_cosines() -> None:
    model = make_tiny_model(torch.float64, hidden=16)
    sketcher = Sketcher(model, SketchConfig(k=128, seed=0))
    batch = training_batch(random_rows([10] * 12, seed=5))
    sketches = sketcher.sketch(batch)
    flat = [torch.cat([g.flatten() for g in grads.values()]) for grads in exact_gradients(model, sketcher, batch)]
    exact = torch.nn.functional.normalize(torch.stack(flat), dim=1)
    approx = torch.nn.functional.normalize(sketches, dim=1)
    iu = torch.triu_indices(12, 12, 1)
    pearson = np.corrcoef((exact @ exact.T)[iu[0], iu[1]], (approx @ approx.T)[iu[0], iu[1]])[0, 1]
    assert pearson >= 0.95


def test_invariant_to_batch_size_padding_side_and_order() -> None:
    model = make_tiny_model(torch.float32)
    sketcher = Sketcher(model, SketchConfig(k=6, seed=1))
    rows = random_rows([9, 4, 11, 7, 2, 11])
    whole = sketcher.sketch(training_batch(rows))
    singles = torch.cat([sketcher.sketch(training_batch([r])) for r in rows])
    left = sketcher.sketch(training_batch(rows, padding_side="left"))
    perm = [3, 0, 5, 1, 4, 2]
    shuffled = sketcher.sketch(training_batch([rows[i] for i in perm]))
    scale = float(whole.abs().max())
    torch.testing.assert_close(singles, whole, atol=1e-5 * scale, rtol=1e-5)
    torch.testing.assert_close(left, whole, atol=1e-5 * scale, rtol=1e-5)
    torch.testing.assert_close(shuffled, whole[perm], atol=1e-5 * scale, rtol=1e-5)


def test_windows_split_the_sum_and_ignore_padding(tiny_model) -> None:
    sketcher = Sketcher(tiny_model, SketchConfig(k=4))
    rows = random_rows([12, 5, 9])
    whole = sketcher.sketch(training_batch(rows))
    windows = sketcher.sketch(training_batch(rows), window=4)
    assert windows.shape == (3, 3, sketcher.dim)
    torch.testing.assert_close(windows.sum(1), whole)
    left = sketcher.sketch(training_batch(rows, padding_side="left"), window=4)
    torch.testing.assert_close(left, windows)
    assert float(windows[1, 2].abs().max()) == 0.0  # 5 tokens (targets 1..4) fill windows 0 and 1 only


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        SketchConfig(k=0)
    with pytest.raises(ConfigError, match="window"):
        Sketcher(make_tiny_model(), SketchConfig(k=2)).sketch(training_batch([[1, 2, 3]]), window=0)


def test_model_without_linear_blocks() -> None:
    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Embedding(4, 4), torch.nn.LayerNorm(4)])

    with pytest.raises(NoLinearModulesError, match="no nn.Linear layers inside its blocks"):
        Sketcher(Bag(), SketchConfig(k=2))


class GradientOuterProducts:
    """A ModuleStatistics that rebuilds each example's exact weight gradient Σ_t g_t x_tᵀ from what it sees."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def observe(self, name: str, inputs: torch.Tensor, output_grads: torch.Tensor, mask: torch.Tensor) -> None:
        assert mask.shape == inputs.shape[:2] == output_grads.shape[:2]
        self.grads[name] = torch.einsum("bt,bto,bti->boi", mask.to(inputs), output_grads, inputs)


def test_statistics_hook_sees_each_modules_inputs_and_output_gradients(tiny_model) -> None:
    sketcher = Sketcher(tiny_model, SketchConfig(k=4))
    rows = random_rows([9, 5, 9])
    batch = training_batch(rows)
    stats = GradientOuterProducts()
    plain = sketcher.sketch(batch)
    torch.testing.assert_close(sketcher.sketch(batch, statistics=[stats]), plain)  # the hook changes nothing
    assert set(stats.grads) == set(sketcher.modules)
    for b, exact in enumerate(exact_gradients(tiny_model, sketcher, batch)):
        for name in sketcher.modules:
            torch.testing.assert_close(stats.grads[name][b], exact[name], rtol=1e-8, atol=1e-12)


def test_folded_projections_sketch_the_transformed_gradient(tiny_model) -> None:
    """Folding A into P_in and G into P_out sketches P_outᵀ Gᵀ dW A P_in: the query-side route of a full-space
    curvature equals preconditioning the gradient, then projecting."""
    sketcher = Sketcher(tiny_model, SketchConfig(k=3, seed=1))
    generator = torch.Generator().manual_seed(5)
    mats = {name: (torch.randn(m.in_features, m.in_features, generator=generator, dtype=torch.float64),
                   torch.randn(m.out_features, m.out_features, generator=generator, dtype=torch.float64))
            for name, m in sketcher.modules.items()}
    folded = sketcher.folded(lambda name, p_in, p_out: (mats[name][0] @ p_in, mats[name][1] @ p_out))
    batch = training_batch(random_rows([8, 6]))
    sketches = folded.sketch(batch)
    for b, exact in enumerate(exact_gradients(tiny_model, sketcher, batch)):
        transformed = {name: mats[name][1].T @ exact[name] @ mats[name][0] for name in exact}
        reference = projected(sketcher, transformed)
        assert float((sketches[b] - reference).norm() / reference.norm()) < 1e-8
    torch.testing.assert_close(sketcher.sketch(batch), Sketcher(tiny_model, SketchConfig(k=3, seed=1)).sketch(batch))


@pytest.mark.parametrize("groups", GROUPS)
def test_a_projected_direction_is_laid_out_as_a_sketch(tiny_model, groups: tuple[str, ...]) -> None:
    """``project`` of a row's whole loss gradient (every parameter, by name) is that row's sketch: the same modules,
    the same layout; parameters the sketch leaves out (biases, norms) are ignored."""
    from attribution.newton import loss_gradient, parameters_of, unflatten

    sketcher = Sketcher(tiny_model, SketchConfig(k=4, seed=2, groups=groups))
    for row in random_rows([9, 5], seed=3):
        batch = training_batch([row])
        gradient = unflatten(loss_gradient(tiny_model, batch), parameters_of(tiny_model))
        reference = sketcher.sketch(batch)[0]  # the sketch's attention kernel, not the eager one: ~1e-8 apart
        assert float((sketcher.project(gradient) - reference).norm() / reference.norm()) < 1e-6


def test_projected_inner_products_are_unbiased(tiny_model) -> None:
    """``E[project(a) · project(b)] = a · b`` over the sketched modules (Gaussian projections, entries N(0, 1/k)):
    the mean over 400 projection seeds at k = 4 is within 5 % of the exact inner product."""
    generator = torch.Generator().manual_seed(7)
    modules = Sketcher(tiny_model, SketchConfig(k=4)).modules
    a, b = ({f"{name}.weight": torch.randn(m.weight.shape, generator=generator, dtype=torch.float64)
             for name, m in modules.items()} for _ in range(2))
    b = {key: value + 0.5 * a[key] for key, value in b.items()}  # correlated, so the mean is far from 0
    exact = sum(float((a[key] * b[key]).sum()) for key in a)
    estimates = []
    for seed in range(400):
        sketcher = Sketcher(tiny_model, SketchConfig(k=4, seed=seed))
        estimates.append(float(sketcher.project(a) @ sketcher.project(b)))
    assert abs(np.mean(estimates) - exact) < 0.05 * abs(exact)


def test_projecting_a_direction_without_a_sketched_weight_is_refused(tiny_model) -> None:
    sketcher = Sketcher(tiny_model, SketchConfig(k=3))
    weights = {f"{name}.weight": m.weight.detach() for name, m in sketcher.modules.items()}
    first = next(iter(weights))
    with pytest.raises(ConfigError, match="has no"):
        sketcher.project({key: value for key, value in weights.items() if key != first})
    with pytest.raises(ConfigError, match="is shaped"):
        sketcher.project({**weights, first: weights[first].T})
