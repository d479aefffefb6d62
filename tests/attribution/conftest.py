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
