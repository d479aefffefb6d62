"""The differentiated replay of training: it trains as the trainer does, and its metagradients are the derivatives
of the trained model's query loss in the row weights (checked against retraining with a weight moved either way)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from attribution.errors import ConfigError
from attribution.newton import flatten, parameters_of, unflatten
from evaluation.replay import Replay, SafeSqrt, magic_scores, replay_of
from evaluation.training import TrainSettings, steps_for, train
from indexer.megatron import write_dataset

VOCAB = 40
ROWS = 10
ORDER = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7, 1, 3, 5, 7, 9, 0]
"""Training order: 16 rows (some twice) in 4 steps of 4."""


def tiny_settings(steps: int) -> TrainSettings:
    return TrainSettings(hidden_size=16, num_layers=1, num_heads=2, vocab_size=VOCAB, seq_len=8, batch_size=4,
                         steps=steps, learning_rate=2e-2, warmup_steps=2, weight_decay=0.01, seed=0, bf16=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    prefix = tmp_path_factory.mktemp("replay") / "document"
    # Tokens from 0..29 only: the embeddings of 30..39 never get a gradient (their AdamW moments stay exactly 0).
    write_dataset(prefix, [rng.integers(0, 30, 9) for _ in range(ROWS)], dtype=np.uint16)
    return prefix


SETTINGS = tiny_settings(steps_for(len(ORDER), 4))


def same_function(replay: Replay, theta: torch.Tensor, model: torch.nn.Module) -> None:
    """The replayed weights compute what the trained model computes. (Weights are compared through the outputs: a
    key bias's gradient is rounding noise — attention is blind to it outside the rotary dimensions — and AdamW
    scales that noise up to full steps, so such elements differ between any two float32 runs without changing a
    logit.)"""
    tokens = torch.as_tensor(np.random.default_rng(3).integers(0, 30, (3, 9)))
    with torch.no_grad():
        expected = model(input_ids=tokens).logits
        found = functional_call(replay.model, unflatten(theta, parameters_of(replay.model)),
                                args=(), kwargs={"input_ids": tokens}).logits
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)
    different = (theta - flatten(parameters_of(model))).abs() > 1e-5
    assert different.float().mean() < 0.01


def test_the_forward_sweep_trains_as_the_trainer_does(data: Path, tmp_path: Path) -> None:
    model, _ = train(SETTINGS, data, VOCAB, tmp_path / "full", rows=ORDER, save_revisions=False)
    replay = replay_of(SETTINGS, data, VOCAB, ORDER)
    same_function(replay, replay.final_weights(), model)


def test_a_zero_weight_matches_the_in_place_retrain(data: Path, tmp_path: Path) -> None:
    model, _ = train(SETTINGS, data, VOCAB, tmp_path / "zeroed", rows=ORDER, save_revisions=False, zeroed={1, 6})
    replay = replay_of(SETTINGS, data, VOCAB, ORDER)
    same_function(replay, replay.final_weights({1: 0.0, 6: 0.0}), model)
    full, _ = train(SETTINGS, data, VOCAB, tmp_path / "full", rows=ORDER, save_revisions=False)
    with pytest.raises(AssertionError):  # the check can tell the zeroed run from the full one
        same_function(replay, replay.final_weights({1: 0.0, 6: 0.0}), full)


def test_metagradients_are_the_derivative_of_the_trained_query_loss(data: Path) -> None:
    """In float64: ∂L_q/∂w_i from the reverse sweep equals the central difference of retraining with row i's weight
    at 1 ± h, for rows seen once and twice, on two queries. h must be small: AdamW's first steps move each weight by
    about ±lr whatever the size of its gradient, so a weight whose gradient is near 0 flips its step at a small
    change of w (at h = 1e-4 the difference is off by 3× here; at 1e-6 it agrees to 1e-4)."""
    replay = replay_of(SETTINGS, data, VOCAB, ORDER, dtype=torch.float64)
    rng = np.random.default_rng(1)
    queries = [torch.as_tensor(rng.integers(0, 30, (1, 9))) for _ in range(2)]
    found = replay.metagradients(queries, ROWS)
    h = 1e-7
    for row in (1, 2, 7):  # 1 and 7 appear twice, 2 once
        plus, minus = replay.final_weights({row: 1 + h}), replay.final_weights({row: 1 - h})
        for q, query in enumerate(queries):
            difference = float(replay.loss(plus, query, None) - replay.loss(minus, query, None)) / (2 * h)
            assert found[q, row] == pytest.approx(difference, rel=1e-3, abs=1e-7)
    assert np.all(np.isfinite(found))
    assert np.abs(found).max() > 0


def test_magic_scores_are_minus_the_metagradient_and_rows_never_trained_on_score_zero(data: Path) -> None:
    replay = replay_of(tiny_settings(2), data, VOCAB, ORDER[:8], dtype=torch.float64)
    queries = np.random.default_rng(2).integers(0, 30, (2, 9))
    scores = magic_scores(replay, queries, ROWS)
    metagradients = replay.metagradients([torch.as_tensor(q[None]) for q in queries], ROWS)
    np.testing.assert_allclose(scores, -metagradients)
    unseen = sorted(set(range(ROWS)) - set(ORDER[:8]))
    assert unseen and np.all(scores[:, unseen] == 0)


def test_a_replay_refuses_rows_that_do_not_fill_its_steps(data: Path) -> None:
    with pytest.raises(ConfigError, match="do not fill"):
        replay_of(SETTINGS, data, VOCAB, ORDER[:8])


def test_safe_sqrt_has_a_zero_derivative_at_zero() -> None:
    x = torch.tensor([0.0, 4.0], dtype=torch.float64, requires_grad=True)
    SafeSqrt.apply(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.25]


def test_from_step_differentiates_only_the_later_steps_row_weights(data: Path) -> None:
    """From step 2 on: rows seen only later keep their whole metagradient, rows seen only earlier get none."""
    replay = replay_of(SETTINGS, data, VOCAB, ORDER, dtype=torch.float64)
    queries = [torch.as_tensor(np.random.default_rng(4).integers(0, 30, (1, 9)))]
    full, later = replay.metagradients(queries, ROWS), replay.metagradients(queries, ROWS, from_step=2)
    np.testing.assert_allclose(later[:, [8, 7]], full[:, [8, 7]], rtol=1e-8)  # steps 2-3 only
    assert np.all(later[:, [4, 2, 6]] == 0) and np.all(full[:, [4, 2, 6]] != 0)  # steps 0-1 only
    assert replay.trajectory_bytes(2) == replay.trajectory_bytes() // 2
    with pytest.raises(ConfigError, match="from_step"):
        replay.metagradients(queries, ROWS, from_step=SETTINGS.steps)


def test_a_row_twice_in_one_batch_sums_both_derivatives(data: Path) -> None:
    """Row 2 fills two places of step 0's batch and one of step 1's: its metagradient is the derivative of moving
    all three weights together (central difference, float64)."""
    order = [2, 2, 5, 0, 1, 3, 2, 4]
    replay = replay_of(tiny_settings(2), data, VOCAB, order, dtype=torch.float64)
    query = torch.as_tensor(np.random.default_rng(5).integers(0, 30, (1, 9)))
    found = replay.metagradients([query], ROWS)
    h = 1e-7
    for row in (2, 5):
        plus, minus = replay.final_weights({row: 1 + h}), replay.final_weights({row: 1 - h})
        difference = float(replay.loss(plus, query, None) - replay.loss(minus, query, None)) / (2 * h)
        assert found[0, row] == pytest.approx(difference, rel=1e-3, abs=1e-7)


def test_a_bf16_training_is_not_replayed(data: Path) -> None:
    with pytest.raises(ConfigError, match="bf16"):
        replay_of(replace(SETTINGS, bf16=True), data, VOCAB, ORDER)
