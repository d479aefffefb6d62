"""Tiny GPT-NeoX models built from a config in code (no files, no network)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

VOCAB = 50


def make_tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0, hidden: int = 16) -> GPTNeoXForCausalLM:
    """A 2-layer Pythia-shaped GPT-NeoX with random weights."""
    config = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=32, rotary_pct=0.25,
        use_parallel_residual=True, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config).to(dtype).eval()


@pytest.fixture
def tiny_model() -> GPTNeoXForCausalLM:
    return make_tiny_model()


def random_rows(lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


SOLVER_VOCAB = 24
"""Vocabulary of :func:`one_layer_model`, whose Gauss-Newton matrix can be formed whole."""


def one_layer_model() -> GPTNeoXForCausalLM:
    """A 1-layer, 8-wide float64 GPT-NeoX small enough for exact solves (the Newton-step and preconditioner tests)."""
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=SOLVER_VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=16, max_position_embeddings=32, rotary_pct=0.25)
    return GPTNeoXForCausalLM(config).double().eval()


def token_rows(seed: int, count: int, length: int) -> list[list[int]]:
    """``count`` random rows of ``length`` tokens of :func:`one_layer_model`'s vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, SOLVER_VOCAB, (count, length), generator=generator).tolist()
