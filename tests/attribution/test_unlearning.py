"""The ``unlearning`` retriever: ascent to an exact ‖Δθ‖, weights restored bit for bit, batch-invariant row
losses, the control correction, candidates on large row sets, evidence, settings and bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from attribution.ascent import Probe, ascend, flat_gradient, restored, trainable
from attribution.batching import ContextLengthError, collate, token_nll, training_batch
from attribution.config import AttributionConfig, Correction, CurvatureConfig, Direction, RowScore, UnlearningConfig
from attribution.errors import ConfigError
from attribution.filters import Filters
from attribution.newton import NewtonConfig, loss_changes, loss_gradient, newton_direction
from attribution.retrievers import Method, Query
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from attribution.unlearning import (
    best_window,
    central_changes,
    corrected,
    newton_solver,
    newton_step,
    row_losses,
    score_every_row,
)
from evaluation.demo_session import demo_session
from evaluation.metrics import first_gold_rank, recall_at
from indexer.groundtruth import Fact, load_facts
from tests.attribution.conftest import random_rows


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def identical(model, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, saved[name]) for name, p in model.named_parameters())


@pytest.fixture(scope="module")
def session(tiny_demo: Path) -> AttributionSession:
    return demo_session(tiny_demo, AttributionConfig(sketch=SketchConfig(k=6), curvature=CurvatureConfig(sample=64)))


@pytest.fixture(scope="module")
def facts(tiny_demo: Path) -> list[Fact]:
    return [f for f in load_facts(tiny_demo) if f.gold_rows]


def query_batch(prompt_len: int = 5, completion_len: int = 3, seed: int = 1):
    ids = random_rows([prompt_len + completion_len], seed)[0]
    return collate([ids], [[0] * prompt_len + [1] * completion_len])


@pytest.mark.parametrize("steps", [1, 3])
def test_ascent_moves_the_weights_by_exactly_the_budget_and_restores_them(tiny_model, steps: int) -> None:
    start, saved = flat_params(tiny_model), snapshot(tiny_model)
    with trainable(tiny_model), restored(tiny_model):
        ascend(tiny_model, query_batch(), steps, 0.3)
        assert float((flat_params(tiny_model) - start).norm()) == pytest.approx(0.3, rel=1e-9)
    assert identical(tiny_model, saved)


def test_the_first_step_goes_up_the_target_loss(tiny_model) -> None:
    batch = query_batch()
    with torch.no_grad():
        before = float((token_nll(tiny_model, batch) * batch.loss_mask[:, 1:]).sum())
    with trainable(tiny_model), restored(tiny_model):
        ascend(tiny_model, batch, 1, 0.05)
        with torch.no_grad():
            after = float((token_nll(tiny_model, batch) * batch.loss_mask[:, 1:]).sum())
    assert after > before


def test_contrastive_ascent_stays_off_the_controls_span(tiny_model) -> None:
    start = flat_params(tiny_model)
    with trainable(tiny_model):
        avoid = torch.stack([flat_gradient(tiny_model, query_batch(seed=s)) for s in (2, 3)])
    with trainable(tiny_model), restored(tiny_model):
        ascend(tiny_model, query_batch(), 1, 0.2, avoid=avoid)
        moved = flat_params(tiny_model) - start
    assert float((avoid @ moved).abs().max()) < 1e-9 * float(avoid.norm())


def test_restored_even_when_the_block_fails_and_flags_come_back(tiny_model) -> None:
    saved, head = snapshot(tiny_model), tiny_model.get_output_embeddings().weight
    head.requires_grad_(False)
    with pytest.raises(RuntimeError), trainable(tiny_model), restored(tiny_model):
        ascend(tiny_model, query_batch(), 2, 1.0)
        raise RuntimeError("mid-query failure")
    assert identical(tiny_model, saved)
    assert not head.requires_grad
    head.requires_grad_(True)


def test_bad_ascent_settings_are_refused(tiny_model) -> None:
    with pytest.raises(ConfigError):
        ascend(tiny_model, query_batch(), 0, 0.5)
    with pytest.raises(ConfigError):
        ascend(tiny_model, query_batch(), 1, 0.0)


def test_row_losses_do_not_depend_on_batching_or_order(tiny_model) -> None:
    rows = random_rows([9, 6, 12, 3, 7])
    one_by_one = row_losses(tiny_model, rows, batch_tokens=1)
    together = row_losses(tiny_model, rows, batch_tokens=1000)
    reversed_ = row_losses(tiny_model, rows[::-1], batch_tokens=20)[::-1]
    for a, b, c, row in zip(one_by_one, together, reversed_, rows, strict=True):
        assert len(a) == len(row) - 1
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_correction_regresses_out_what_the_control_explains() -> None:
    base = [np.zeros(3) for _ in range(4)]
    shift = [np.full(3, v) for v in (0.0, 1.0, 2.0, 3.0)]
    specific = [np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0]), np.array([0.0, 3.0, 0.0]), np.zeros(3)]
    after = [2 * s + x for s, x in zip(shift, specific, strict=True)]  # twice the fragility, plus one real hit
    scores = [d.mean() for d in corrected(after, base, [b + s for b, s in zip(base, shift, strict=True)])]
    assert int(np.argmax(scores)) == 2
    assert [d.mean() for d in corrected(after, base, None)] == [a.mean() for a in after]
    anti = [b - s for b, s in zip(base, shift, strict=True)]  # a control that tells nothing positive: slope 0
    assert [d.mean() for d in corrected(after, base, anti)] == [a.mean() for a in after]


def test_best_window_is_the_largest_increase() -> None:
    delta = np.array([0.0, 0.1, 2.0, 3.0, 0.0, -1.0])
    assert best_window(delta, 2) == (3, 5)  # delta[j] is token j + 1's loss
    assert best_window(delta, 50) == (1, 7)


def test_search_restores_the_weights_bit_for_bit(session: AttributionSession, facts: list[Fact]) -> None:
    model = session.encoder.checkpoints[-1].model
    saved = snapshot(model)
    fact = facts[0]
    controls = [(r.prompt, r.completion) for r in fact.related] + [(fact.related[0].prompt, None)]
    for settings in (UnlearningConfig(), UnlearningConfig(contrastive=True, steps=2, budget=2.0)):
        session.attribute(fact.prompt, fact.completion, k=5, method="unlearning", unlearning=settings)
        session.attribute(fact.prompt, fact.completion, k=5, method="unlearning", controls=controls,
                          unlearning=settings)
    assert identical(model, saved)
    assert all(p.requires_grad for p in model.parameters())


def test_results_carry_the_per_token_loss_increase(session: AttributionSession, facts: list[Fact]) -> None:
    results = session.attribute(facts[0].prompt, facts[0].completion, k=7, method="unlearning")
    assert [r.rank for r in results] == list(range(1, 8)) and len({r.example_id for r in results}) == 7
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    retriever = session.retriever(Method.UNLEARNING)
    for r in results:
        assert len(r.loss_increase) == len(r.row_tokens) == len(retriever.tokens(session.ids.tolist().index(
            r.example_id))) - 1
        assert np.mean(r.loss_increase) == pytest.approx(r.score, abs=1e-5)
        start, end = r.token_span
        assert 1 <= start < end <= len(r.row_tokens) + 1 and end - start == min(16, len(r.row_tokens))
    assert retriever.timings["rows"] == len(session)  # the tiny demo is scored whole
    assert {"candidates", "reference", "target", "evidence"} <= retriever.timings.keys()


def test_window_scores_are_the_best_windows_mean(session: AttributionSession, facts: list[Fact]) -> None:
    settings = UnlearningConfig(score=RowScore.WINDOW, window=8)
    results = session.attribute(facts[0].prompt, facts[0].completion, k=5, method="unlearning", unlearning=settings)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    for r in results:
        start, end = r.token_span
        assert end - start == 8
        assert np.mean(r.loss_increase[start - 1 : end - 1]) == pytest.approx(r.score, abs=1e-5)
        assert r.score >= max(np.convolve(r.loss_increase, np.ones(8) / 8, mode="valid")) - 1e-5


def test_it_finds_the_rows_that_state_the_fact(session: AttributionSession, facts: list[Fact]) -> None:
    ranks = [first_gold_rank([r.example_id for r in session.attribute(f.prompt, f.completion, k=20,
                                                                      method="unlearning")], f.gold_rows)
             for f in facts]
    assert recall_at(ranks, 10) >= 0.6  # chance is about 0.1 (one to three gold rows among 192)


def test_scores_do_not_depend_on_the_cache_or_the_candidates(session: AttributionSession,
                                                             facts: list[Fact]) -> None:
    fact = facts[1]
    none = UnlearningConfig(correction=Correction.NONE)
    cold = {r.example_id: r.score for r in session.attribute(fact.prompt, fact.completion, k=10, method="unlearning",
                                                             unlearning=none)}
    warm = {r.example_id: r.score for r in session.attribute(fact.prompt, fact.completion, k=10, method="unlearning",
                                                             unlearning=none)}
    assert cold == pytest.approx(warm)
    rerank = replace(none, exhaustive_rows=10, candidates=20)  # 192 rows > 10: re-rank the sources' top 20
    found = session.attribute(fact.prompt, fact.completion, k=10, method="unlearning", unlearning=rerank)
    retriever = session.retriever(Method.UNLEARNING)
    assert 20 <= retriever.timings["rows"] <= 60
    for r in found:
        if r.example_id in cold:
            assert r.score == pytest.approx(cold[r.example_id], abs=1e-5)
    pool = set()
    for method in ("gradient", "bm25", "embedding"):
        pool |= {r.example_id for r in session.attribute(fact.prompt, fact.completion, k=20, method=method)}
    assert {r.example_id for r in found} <= pool


@pytest.mark.parametrize("score", [RowScore.MEAN, RowScore.WINDOW])
def test_every_row_scored_at_once_equals_the_retrievers_scores(session: AttributionSession, facts: list[Fact],
                                                                score: RowScore) -> None:
    """``score_every_row`` (what LDS sums) is the retriever's exhaustive score of each row, for several targets at
    once (their base and probe-ascent losses shared)."""
    config = UnlearningConfig(score=score)
    retriever = session.retriever(Method.UNLEARNING)
    rows = [retriever.tokens(r).tolist() for r in range(retriever.n)]
    chosen = facts[:2]
    targets = [retriever.meter.probe_batch([Probe(f.prompt, f.completion)]) for f in chosen]
    every = score_every_row(retriever.model, rows, targets, config)
    assert every.shape == (2, retriever.n)
    for fact, scores in zip(chosen, every, strict=True):
        hits = retriever.search(Query(fact.prompt, fact.completion, unlearning=config), k=15)
        assert [h.score for h in hits] == pytest.approx([float(scores[h.row]) for h in hits], abs=1e-5)
        assert sorted(scores, reverse=True)[:15] == pytest.approx([h.score for h in hits], abs=1e-5)


def test_filters_and_greedy_completions(session: AttributionSession, facts: list[Fact]) -> None:
    rows = session.attribute(facts[0].prompt, facts[0].completion, k=4, method="unlearning",
                             filters=Filters(step_min=3, step_max=5))
    assert rows and all(3 <= r.metadata["step"] <= 5 for r in rows)
    rerank = UnlearningConfig(exhaustive_rows=0, candidates=10)
    rows = session.attribute(facts[0].prompt, facts[0].completion, k=4, method="unlearning",
                             filters=Filters(pile_set_name="Planted Facts"), unlearning=rerank)
    assert rows and all("Planted Facts" in (r.metadata.get("pile_set_names") or [r.metadata["pile_set_name"]])
                        for r in rows)  # rows may mix subsets
    greedy = session.attribute(facts[0].prompt, None, k=3, method="unlearning")
    assert greedy[0].completion


def test_bad_settings_and_queries(session: AttributionSession, facts: list[Fact]) -> None:
    for bad in ({"steps": 0}, {"budget": 0.0}, {"budget": float("nan")}, {"budget": float("inf")},
                {"candidates": 0}, {"batch_tokens": -1}, {"exhaustive_rows": -1}, {"correction": "sometimes"},
                {"steps": 1.5}, {"window": True}, {"score": "median"}):
        with pytest.raises(ConfigError):
            UnlearningConfig(**bad)
    retriever = session.retriever(Method.UNLEARNING)
    with pytest.raises(ConfigError):
        retriever.search(Query(facts[0].prompt, facts[0].completion), 0)
    with pytest.raises(ContextLengthError):
        retriever.search(Query("word " * 400, " x"), 3)
    assert AttributionConfig.from_json(AttributionConfig().to_json()) == AttributionConfig()
    assert AttributionConfig.from_json({}).unlearning == UnlearningConfig()  # indices saved before it open


def test_central_changes_are_the_exact_directional_derivative_and_restore_the_weights(tiny_model) -> None:
    """``direction = newton`` reads a row's change as ``(ℓ(θ + Δθ) − ℓ(θ − Δθ)) / 2``: summed over the row's tokens
    it is budget × the row's exact directional derivative (forward mode) up to O(budget³), on a float64 model."""
    rows = random_rows([9, 6, 12], seed=3)
    direction = torch.randn(flat_params(tiny_model).numel(), generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
    direction /= direction.norm()
    saved = snapshot(tiny_model)
    budget = 1e-3
    changes = central_changes(tiny_model, direction, rows, UnlearningConfig(budget=budget))
    assert identical(tiny_model, saved)
    assert [len(c) for c in changes] == [len(r) - 1 for r in rows]
    exact = loss_changes(tiny_model, training_batch(rows), direction) * budget
    assert [float(c.sum()) for c in changes] == pytest.approx(exact.tolist(), rel=1e-5, abs=1e-12)


def test_the_newton_step_is_the_unit_refined_direction_off_the_controls(tiny_model) -> None:
    target, sample = query_batch(seed=2), training_batch(random_rows([10, 10, 10, 10], seed=4))
    settings = UnlearningConfig(direction=Direction.NEWTON, newton_iterations=50)
    solver = newton_solver(tiny_model, sample, settings)
    step = newton_step(tiny_model, target, solver)
    config = NewtonConfig(damping=settings.newton_damping, max_iter=50)
    x = newton_direction(tiny_model, target, sample, config).x
    assert float(step.norm()) == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(step, x / x.norm(), atol=1e-9)
    avoid = torch.stack([loss_gradient(tiny_model, query_batch(seed=s)) for s in (5, 6)])
    off = newton_step(tiny_model, target, solver, avoid)
    assert float(off.norm()) == pytest.approx(1.0, abs=1e-9)
    assert (avoid @ off).abs().max() < 1e-9 * avoid.norm()


@pytest.mark.parametrize("factoring", ["kfac", "ekfac"])
def test_a_factored_newton_step_reaches_the_same_direction(tiny_model, factoring: str) -> None:
    """``newton_factoring`` preconditions and warm-starts conjugate gradient: run to convergence, the step is the
    plain solver's."""
    target, sample = query_batch(seed=2), training_batch(random_rows([10, 10, 10, 10], seed=4))
    plain = UnlearningConfig(direction=Direction.NEWTON, newton_iterations=200)
    factored = UnlearningConfig(direction=Direction.NEWTON, newton_iterations=200, newton_factoring=factoring)
    want = newton_step(tiny_model, target, newton_solver(tiny_model, sample, plain))
    solver = newton_solver(tiny_model, sample, factored)
    got = newton_step(tiny_model, target, solver)
    assert solver.config.warm_start and solver.config.factoring == factoring
    assert float((got - want).norm()) < 1e-3  # unit vectors; CG stops at a relative residual of 1e-4
    with pytest.raises(ConfigError, match="newton_factoring"):
        UnlearningConfig(newton_factoring="shampoo")


def test_newton_search_restores_the_weights_and_scores_as_every_row_at_once(session: AttributionSession,
                                                                             facts: list[Fact]) -> None:
    model = session.encoder.checkpoints[-1].model
    saved = snapshot(model)
    config = UnlearningConfig(direction=Direction.NEWTON)
    fact = facts[0]
    controls = [(r.prompt, r.completion) for r in fact.related]
    results = session.attribute(fact.prompt, fact.completion, k=8, method="unlearning", unlearning=config)
    session.attribute(fact.prompt, fact.completion, k=8, method="unlearning", unlearning=config, controls=controls)
    assert identical(model, saved) and all(p.requires_grad for p in model.parameters())
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    for r in results:
        assert np.mean(r.loss_increase) == pytest.approx(r.score, abs=1e-5)
    retriever = session.retriever(Method.UNLEARNING)
    rows = [retriever.tokens(r).tolist() for r in range(retriever.n)]
    target = retriever.meter.probe_batch([Probe(fact.prompt, fact.completion)])
    every = score_every_row(retriever.model, rows, [target], config)[0]
    assert sorted(every, reverse=True)[:8] == pytest.approx([r.score for r in results], abs=1e-5)


def test_newton_finds_the_rows_that_state_the_fact(session: AttributionSession, facts: list[Fact]) -> None:
    config = UnlearningConfig(direction=Direction.NEWTON)
    ranks = [first_gold_rank([r.example_id for r in session.attribute(f.prompt, f.completion, k=20,
                                                                      method="unlearning", unlearning=config)],
                             f.gold_rows)
             for f in facts]
    assert recall_at(ranks, 10) >= 0.6  # chance is about 0.1 (one to three gold rows among 192)


def test_bad_newton_settings_are_refused() -> None:
    for bad in ({"direction": "sideways"}, {"newton_rows": 0}, {"newton_iterations": 0}, {"newton_damping": 0.0},
                {"newton_damping": float("nan")}, {"newton_rows": 2.5}):
        with pytest.raises(ConfigError):
            UnlearningConfig(**bad)
    assert UnlearningConfig(direction="newton").direction is Direction.NEWTON
