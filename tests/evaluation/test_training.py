"""The training loss with row weights: weight 1 everywhere is the plain loss, weight 0 removes a row in place."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.training import TrainSettings, batch_loss, make_model, rows_for_step

TINY = TrainSettings(hidden_size=16, num_layers=1, num_heads=2, vocab_size=50, seq_len=9, batch_size=5, steps=1,
                     learning_rate=1e-3, warmup_steps=0, weight_decay=0.0, seed=0, bf16=False)


def loss_and_grads(model: torch.nn.Module, batch: torch.Tensor,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = batch_loss(model(input_ids=batch[:, :-1]).logits, batch, weights)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), zero=st.integers(0, TINY.batch_size - 1))
def test_a_zero_weight_row_counts_as_removed_from_the_mean(seed: int, zero: int) -> None:
    """Weighted loss with row ``zero`` at 0, times B, equals the plain loss of the other rows times B − 1: the row
    adds nothing to the loss or to any gradient, and the others keep the weight they had."""
    torch.manual_seed(seed)
    model = make_model(TINY, TINY.vocab_size).double()
    batch = torch.randint(0, TINY.vocab_size, (TINY.batch_size, TINY.seq_len))
    weights = torch.ones(TINY.batch_size, dtype=torch.float64)
    weights[zero] = 0.0
    rest = torch.cat([batch[:zero], batch[zero + 1:]])
    b = TINY.batch_size
    weighted, weighted_grads = loss_and_grads(model, batch, weights)
    plain, plain_grads = loss_and_grads(model, rest)
    torch.testing.assert_close(weighted * b, plain * (b - 1), rtol=1e-10, atol=1e-12)
    for w, p in zip(weighted_grads, plain_grads, strict=True):
        torch.testing.assert_close(w * b, p * (b - 1), rtol=1e-8, atol=1e-12)
    ones, ones_grads = loss_and_grads(model, batch, torch.ones(b, dtype=torch.float64))
    unweighted, unweighted_grads = loss_and_grads(model, batch)
    torch.testing.assert_close(ones, unweighted, rtol=1e-12, atol=1e-12)
    for a, c in zip(ones_grads, unweighted_grads, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-12)


def test_rows_for_step_walks_the_order_and_shortens_the_last_step() -> None:
    assert rows_for_step(0, 3) == [0, 1, 2] and rows_for_step(2, 3) == [6, 7, 8]
    assert rows_for_step(1, 3, [9, 8, 7, 6, 5]) == [6, 5]
