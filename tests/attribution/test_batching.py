"""Row batching by a token budget, the chunked loss, and the memory error that names the flag to lower."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.batching import Batching, backward_summed_nll, position_logits, token_nll, training_batch
from attribution.errors import ConfigError
from tests.attribution.conftest import make_tiny_model, random_rows


@given(st.lists(st.integers(1, 3000), max_size=60), st.integers(1, 40), st.integers(1, 20000))
@settings(max_examples=200, deadline=None)
def test_spans_cover_every_row_in_order_within_the_budget(lengths: list[int], rows: int, tokens: int) -> None:
    spans = Batching(rows=rows, tokens=tokens).spans(lengths)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(lengths)))
    for a, b in spans:
        assert 0 < b - a <= rows
        assert b - a == 1 or (b - a) * max(lengths[a:b]) <= tokens  # only a lone row may exceed the budget


def test_pythia_rows_batch_by_tokens_and_short_rows_by_rows() -> None:
    assert Batching(rows=32, tokens=8192).spans([2049] * 10) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert Batching(rows=32, tokens=8192).spans([129] * 70) == [(0, 32), (32, 64), (64, 70)]


@pytest.mark.parametrize(("rows", "tokens", "flag"), [(0, 10, "--batch-size"), (4, 0, "--token-batch-size")])
def test_bad_budgets_name_their_flag(rows: int, tokens: int, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        Batching(rows=rows, tokens=tokens)


def test_chunked_loss_backpropagates_what_the_whole_loss_does() -> None:
    model = make_tiny_model(torch.float64)
    batch = training_batch(random_rows([9, 5, 9]))
    whole = token_nll(model, batch)
    (whole * batch.loss_mask[:, 1:].to(whole)).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    vocab = model.get_output_embeddings().out_features
    loss = backward_summed_nll(model, batch, chunk_values=2 * vocab)  # two positions at a time
    assert loss == pytest.approx(float((whole * batch.loss_mask[:, 1:].to(whole)).sum().detach()))
    for name, grad in expected.items():  # the head's own weights included
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-9, atol=1e-12)


def test_the_chunked_head_gives_the_whole_logits_nll() -> None:
    """token_nll with 7 positions of the vocabulary at a time equals the NLL of the whole logits at once."""
    model = make_tiny_model(torch.float64)
    batch = training_batch(random_rows([9, 6, 12]))
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits[:, :-1]
    whole = -torch.log_softmax(logits, dim=-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    vocab = model.get_output_embeddings().out_features
    torch.testing.assert_close(token_nll(model, batch, chunk_values=7 * vocab), whole, rtol=1e-10, atol=1e-12)


def test_position_logits_are_the_whole_rows_logits_there() -> None:
    model = make_tiny_model()
    ids = torch.tensor(random_rows([9], seed=1))
    whole = model(input_ids=ids).logits[0]
    for positions in (slice(3, -1), slice(-1, None), slice(0, None)):
        torch.testing.assert_close(position_logits(model, ids, positions), whole[positions], rtol=1e-9, atol=1e-12)
