"""K-FAC and EK-FAC on a tiny float64 GPT-NeoX: factors, Kronecker inverse, eigenvalue correction, query routes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attribution.batching import TokenBatch, collate, training_batch
from attribution.config import CurvatureConfig
from attribution.curvature import fit_curvature, load_curvature, new_statistics, prefit_curvature, row_sample
from attribution.encoder import Checkpoint, GradientEncoder
from attribution.errors import ConfigError
from attribution.kfac import EKFACCurvature, KFACCurvature
from attribution.kronecker import Fisher, KroneckerStatistics, sampled_label_pass
from attribution.sketch import SketchConfig, Sketcher
from tests.attribution.conftest import VOCAB, make_tiny_model, random_rows
from tests.attribution.test_sketch import exact_gradients, projected

ROWS = [9, 5, 9, 7, 3, 8]


def gathered(sketcher: Sketcher, rows: list[list[int]], fisher: Fisher = Fisher.EMPIRICAL,
             batch: int = 3) -> KroneckerStatistics:
    stats = KroneckerStatistics(fisher)
    for start in range(0, len(rows), batch):
        stats.sketch_with(sketcher, training_batch(rows[start : start + batch]))
    return stats


def exact_factors(model, sketcher: Sketcher, rows: list[list[int]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A = mean x xᵀ and G = mean g gᵀ over every token, one row at a time through plain autograd."""
    sums = {name: [0.0, 0.0] for name in sketcher.modules}
    tokens = 0
    for row in rows:
        ids = torch.tensor([row])
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(name, seen=seen):
            def forward(module, args, output):
                output.retain_grad()
                seen[name] = (args[0][0].detach(), output)
            return forward

        handles = [m.register_forward_hook(hook(n)) for n, m in sketcher.modules.items()]
        logits = model(input_ids=ids).logits[0, :-1]
        torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").backward()
        for handle in handles:
            handle.remove()
        for name, (x, out) in seen.items():
            g = out.grad[0]
            sums[name][0] = sums[name][0] + x.T @ x
            sums[name][1] = sums[name][1] + g.T @ g
        tokens += len(row)
    model.zero_grad()
    return {name: (a / tokens, g / tokens) for name, (a, g) in sums.items()}


@pytest.fixture
def setup():
    model = make_tiny_model(torch.float64)
    sketcher = Sketcher(model, SketchConfig(k=3, seed=2))
    rows = random_rows(ROWS, seed=4)
    return model, sketcher, rows


def test_factors_are_the_token_second_moments_and_add_up_across_shards(setup, tmp_path: Path) -> None:
    model, sketcher, rows = setup
    whole = gathered(sketcher, rows, batch=len(rows))
    shards = gathered(sketcher, rows[:2], batch=1)
    shards.merge(gathered(sketcher, rows[2:], batch=4))
    exact = exact_factors(model, sketcher, rows)
    for stats in (whole, shards):
        factors = stats.factors()
        assert set(factors) == set(sketcher.modules)
        for name, (a, g) in exact.items():
            torch.testing.assert_close(factors[name]["a"], a, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(factors[name]["g"], g, rtol=1e-9, atol=1e-12)
    whole.save(tmp_path / "s64.safetensors", dtype=torch.float64)
    back = KroneckerStatistics.load(tmp_path / "s64.safetensors")
    assert back.tokens == whole.tokens and back.fisher is whole.fisher
    for name, sides in whole.sums.items():
        for side, total in sides.items():
            assert torch.equal(back.sums[name][side], total)
    whole.save(tmp_path / "s32.safetensors")  # the default, as shards store them
    back = KroneckerStatistics.load(tmp_path / "s32.safetensors")
    name = next(iter(whole.sums))
    torch.testing.assert_close(back.sums[name]["a"], whole.sums[name]["a"], rtol=1e-6, atol=1e-9)


def test_kfac_equals_the_exact_kronecker_inverse(setup) -> None:
    model, sketcher, rows = setup
    kfac = KFACCurvature.fit(gathered(sketcher, rows), damping=0.2)
    factors = exact_factors(model, sketcher, rows)
    name = "gpt_neox.layers.1.attention.dense"  # a small layer: a 256×256 Kronecker product
    a, g = factors[name]
    lam_a = 0.2 * float(torch.linalg.eigvalsh(a).mean())
    lam_g = 0.2 * float(torch.linalg.eigvalsh(g).mean())
    assert kfac.lam(name, "a") == pytest.approx(lam_a, rel=1e-5)
    assert kfac.lam(name, "g") == pytest.approx(lam_g, rel=1e-5)
    eye_a, eye_g = torch.eye(a.shape[0], dtype=a.dtype), torch.eye(g.shape[0], dtype=g.dtype)
    kron = torch.kron(g + lam_g * eye_g, a + lam_a * eye_a)  # acts on row-major vec(dW) as dW ↦ G' dW A'
    dw = exact_gradients(model, sketcher, training_batch(rows[:1]))[0][name]
    dense = torch.linalg.solve(kron, dw.flatten()).reshape(dw.shape)
    factored = kfac.inverse(name, "g") @ dw @ kfac.inverse(name, "a")
    torch.testing.assert_close(factored, dense, rtol=1e-4, atol=1e-8 * float(dense.abs().max()))


def query_batch(rows: list[list[int]]) -> TokenBatch:
    masks = [[0] * (len(r) - 2) + [1, 1] for r in rows]  # loss on the last two tokens, like a completion
    return collate(rows, masks)


def test_kfac_folded_query_equals_preconditioning_then_projecting(setup) -> None:
    model, sketcher, rows = setup
    kfac = KFACCurvature.fit(gathered(sketcher, rows), damping=0.1)
    batch = query_batch(random_rows([6, 8], seed=9))
    folded = kfac.query_sketcher(sketcher).sketch(batch)
    for b, exact in enumerate(exact_gradients(model, sketcher, batch)):
        transformed = {n: kfac.inverse(n, "g") @ dw @ kfac.inverse(n, "a") for n, dw in exact.items()}
        reference = projected(sketcher, transformed)
        assert float((folded[b] - reference).norm() / reference.norm()) < 1e-6
    torch.testing.assert_close(kfac.apply_train(folded), folded)  # stored training sketches stay as they are


def test_ekfac_eigenvalues_are_the_per_example_second_moments_in_the_eigenbasis(setup) -> None:
    model, sketcher, rows = setup
    stats = gathered(sketcher, rows)
    ekfac = EKFACCurvature.fit(stats, sketcher, row_sample(rows), sample=len(rows), damping=0.1, batch_size=4)
    assert ekfac.examples == len(rows)
    exact = exact_gradients(model, sketcher, training_batch(rows))
    for name in sketcher.modules:
        q_a = ekfac.basis.rotation(name, "a").to(torch.float64)
        q_g = ekfac.basis.rotation(name, "g").to(torch.float64)
        moments = torch.stack([(q_g.T @ grads[name] @ q_a) ** 2 for grads in exact]).mean(0)
        torch.testing.assert_close(ekfac.eigenvalues[name].to(torch.float64), moments, rtol=1e-5,
                                   atol=1e-6 * float(moments.max()))


def test_ekfac_query_route_equals_preconditioning_then_projecting(setup) -> None:
    model, sketcher, rows = setup
    ekfac = EKFACCurvature.fit(gathered(sketcher, rows), sketcher, row_sample(rows), sample=4, damping=0.1)
    assert ekfac.examples == 4
    batch = query_batch(random_rows([6, 8, 5], seed=11))
    routed = ekfac.query_sketcher(sketcher).sketch(batch)
    for b, exact in enumerate(exact_gradients(model, sketcher, batch)):
        transformed = {}
        for name, dw in exact.items():
            q_a = ekfac.basis.rotation(name, "a").to(dw)
            q_g = ekfac.basis.rotation(name, "g").to(dw)
            scale = ekfac.eigenvalues[name].to(dw) + ekfac.lams[name]
            transformed[name] = q_g @ ((q_g.T @ dw @ q_a) / scale) @ q_a.T
        reference = projected(sketcher, transformed)
        assert float((routed[b] - reference).norm() / reference.norm()) < 1e-6
    with pytest.raises(ConfigError, match="whole query rows"):
        ekfac.query_sketcher(sketcher).sketch(batch, window=4)


class CharTokenizer:
    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1 + ord(c) % (VOCAB - 1) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(96 + i % 26) for i in ids)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
@pytest.mark.parametrize("mode", ["cosine", "inner_product"])
def test_per_token_contributions_sum_to_the_query_score(setup, kind: str, mode: str) -> None:
    model, sketcher, rows = setup
    config = CurvatureConfig(kind=kind, sample_rows=4)
    curvature = fit_curvature([], sketcher.dim, config, sketcher=sketcher, statistics=gathered(sketcher, rows),
                              rows=row_sample(rows))
    encoder = GradientEncoder([Checkpoint(model, sketcher, curvature)], CharTokenizer(), mode)
    query = encoder.encode_query("abcdef", "xyz", controls=[("bbcdef", "xyq")])
    train = encoder.encode_rows(rows)
    torch.testing.assert_close(query.per_token.sum(0) @ train.T, query.vector @ train.T)
    assert encoder.checkpoints[0].query_sketcher is encoder.checkpoints[0].query_sketcher  # built once


def test_sampled_fisher_labels_depend_on_the_rows_only(setup) -> None:
    model, sketcher, rows = setup
    one = gathered(sketcher, rows, Fisher.SAMPLED, batch=len(rows))
    other = gathered(sketcher, list(reversed(rows)), Fisher.SAMPLED, batch=2)
    empirical = gathered(sketcher, rows)
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h"
    torch.testing.assert_close(one.sums[name]["g"], other.sums[name]["g"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(one.sums[name]["a"], empirical.sums[name]["a"], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(one.sums[name]["g"], empirical.sums[name]["g"])
    assert all(p.grad is None for p in model.parameters())


def sampled(sketcher: Sketcher, rows: list[list[int]], batch: int, chunk_values: int) -> KroneckerStatistics:
    stats = KroneckerStatistics(Fisher.SAMPLED)
    for start in range(0, len(rows), batch):
        sampled_label_pass(sketcher, training_batch(rows[start : start + batch]), [stats], chunk_values=chunk_values)
    return stats


def test_the_sampled_fisher_head_runs_on_chunks_of_positions(setup) -> None:
    """The head sees at most chunk_values // V positions at a time; a row in one chunk draws the whole-batch pass's
    labels; with chunks of two positions the labels still depend on the rows only, and the input side is exact."""
    model, sketcher, rows = setup
    seen: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        small = sampled(sketcher, rows, batch=3, chunk_values=2 * VOCAB)
    finally:
        handle.remove()
    assert max(seen) == 2 and sum(seen) == sum(len(r) - 1 for r in rows)  # every target position, 2 at a time
    with_head = Sketcher(model, SketchConfig(k=3, seed=2, groups=("blocks", "head")))
    whole = sampled(with_head, rows, batch=3, chunk_values=2 * VOCAB)  # an observed head sees the whole batch
    one_chunk = sampled(sketcher, rows, batch=3, chunk_values=max(ROWS) * VOCAB)
    reordered = sampled(sketcher, list(reversed(rows)), batch=2, chunk_values=2 * VOCAB)
    empirical = gathered(sketcher, rows)
    for name in sketcher.modules:
        torch.testing.assert_close(one_chunk.sums[name]["g"], whole.sums[name]["g"], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(small.sums[name]["g"], reordered.sums[name]["g"], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(small.sums[name]["a"], empirical.sums[name]["a"], rtol=1e-9, atol=1e-12)
        assert small.tokens[name] == empirical.tokens[name]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_kinds_save_and_load(setup, kind: str, tmp_path: Path) -> None:
    model, sketcher, rows = setup
    config = CurvatureConfig(kind=kind, damping=0.3, sample_rows=3)
    fitted = fit_curvature([], sketcher.dim, config, sketcher=sketcher, statistics=gathered(sketcher, rows),
                           rows=row_sample(rows))
    fitted.save(tmp_path / "c.safetensors")
    loaded = load_curvature(tmp_path / "c.safetensors")
    description = loaded.describe()
    assert description == fitted.describe() and description["kind"] == kind and description["damping"] == 0.3
    assert description["bytes"] > 0 and description["fit_seconds"] is not None
    batch = query_batch(random_rows([7, 5], seed=3))
    torch.testing.assert_close(loaded.query_sketcher(sketcher).sketch(batch),
                               fitted.query_sketcher(sketcher).sketch(batch))


def test_factor_limit_leaves_wide_sides_unpreconditioned(setup) -> None:
    model, sketcher, rows = setup
    stats = KroneckerStatistics(limit=16)  # hidden 16: the 32-wide MLP and 48-wide QKV sides get no factor
    stats.sketch_with(sketcher, training_batch(rows))
    kfac = KFACCurvature.fit(stats, 0.1)
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h"
    assert set(kfac.basis.eig[name]) == {"a"} and kfac.inverse(name, "g") is None
    p_in, p_out = sketcher.projections[name]
    assert torch.equal(kfac.fold(name, p_in, p_out)[1], p_out)


def test_bad_settings_and_missing_inputs(setup) -> None:
    _, sketcher, _ = setup
    for bad in (dict(kind="kfac-someday"), dict(kind="kfac", damping=0), dict(kind="ekfac", damping=-1.0),
                dict(fisher="true"), dict(sample_rows=0), dict(factor_limit=0)):
        with pytest.raises(ConfigError):
            CurvatureConfig(**bad)
    with pytest.raises(ConfigError, match="statistics"):
        fit_curvature([torch.randn(4, sketcher.dim)], sketcher.dim, CurvatureConfig(kind="kfac"))
    with pytest.raises(ConfigError, match="rows"):
        fit_curvature([], sketcher.dim, CurvatureConfig(kind="ekfac"), sketcher=sketcher,
                      statistics=new_statistics(CurvatureConfig(kind="ekfac")))
    assert new_statistics(CurvatureConfig(kind="block")) is None
    with pytest.raises(ConfigError, match="cannot add"):
        KroneckerStatistics(Fisher.SAMPLED).merge(KroneckerStatistics())


def test_whitened_kfac_folds_the_inverse_square_root_into_both_sides(setup) -> None:
    model, sketcher, rows = setup
    config = CurvatureConfig(kind="kfac_whitened", damping=0.2, sample_rows=4)
    whitened = prefit_curvature(config, sketcher, row_sample(rows))
    kfac = KFACCurvature.fit(gathered(sketcher, row_sample(rows)(4)), damping=0.2)
    assert whitened.describe()["kind"] == "kfac_whitened" and whitened.fit_seconds is not None
    batch = query_batch(random_rows([6, 8], seed=9))
    train = whitened.train_sketcher(sketcher).sketch(batch)
    query = whitened.query_sketcher(sketcher).sketch(batch)
    torch.testing.assert_close(train, query)  # one fold, both sides
    for b, exact in enumerate(exact_gradients(model, sketcher, batch)):
        half = {}
        for name, dw in exact.items():
            half[name] = whitened.inverse(name, "g") @ dw @ whitened.inverse(name, "a")
            inv = kfac.inverse(name, "g") @ dw @ kfac.inverse(name, "a")  # ⟨half, half⟩ = ⟨H⁻¹dW, dW⟩
            assert float((half[name] * half[name]).sum()) == pytest.approx(float((inv * dw).sum()), rel=1e-6)
        reference = projected(sketcher, half)
        assert float((train[b] - reference).norm() / reference.norm()) < 1e-6
    assert prefit_curvature(CurvatureConfig(kind="kfac"), sketcher, row_sample(rows)) is None
