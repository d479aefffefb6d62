"""Token batches for the sketch pass: padding, attention masks and which tokens carry loss.

``loss_mask[b, t] = 1`` means token ``t`` of example ``b`` is a prediction target (its
NLL, predicted from position ``t - 1``, enters the loss). Queries put it on the
completion; training examples on every token after the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attribution.errors import ConfigError


class EmptyCompletionError(ConfigError):
    """A query has no completion tokens, so there is no loss to attribute."""


class ContextLengthError(ConfigError):
    """Prompt plus completion is longer than the model's context."""


@dataclass
class TokenBatch:
    """Padded token ids with attention, position and loss masks, all ``(B, T)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted over real tokens only, so left padding does not shift rotary phases."""
        return (self.attention_mask.cumsum(1) - 1).clamp(min=0)

    def right_aligned(self) -> TokenBatch:
        """The same batch with every example's tokens moved to the left edge (padding on the right).

        Left padding leaves pad positions with no visible key, which some attention kernels
        turn into NaN that then leaks through ``0 × NaN``; the sketch pass right-aligns first.
        """
        order = torch.argsort(1 - self.attention_mask, dim=1, stable=True)  # real tokens first, in order
        return TokenBatch(
            self.input_ids.gather(1, order), self.attention_mask.gather(1, order), self.loss_mask.gather(1, order)
        )

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def collate(
    sequences: Sequence[Sequence[int]],
    loss_masks: Sequence[Sequence[int]],
    pad_id: int = 0,
    padding_side: str = "right",
) -> TokenBatch:
    """Pad sequences (and their loss masks) to a common length on the chosen side."""
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    loss = torch.zeros((len(sequences), width), dtype=torch.float32)
    for b, (seq, mask) in enumerate(zip(sequences, loss_masks, strict=True)):
        n = len(seq)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[b, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        attention[b, cols] = 1
        loss[b, cols] = torch.as_tensor(list(mask), dtype=torch.float32)
    return TokenBatch(ids, attention, loss)


def training_batch(rows: Sequence[Sequence[int]], pad_id: int = 0, padding_side: str = "right") -> TokenBatch:
    """Training examples: every token after the first is a target (Pythia: input row[:-1], labels row[1:])."""
    return collate(rows, [[0] + [1] * (len(r) - 1) for r in rows], pad_id, padding_side)


def query_tokens(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_length: int) -> tuple[list, list]:
    """Token ids and loss mask for one (prompt, completion) query, validated."""
    if len(completion_ids) == 0:
        raise EmptyCompletionError("the completion is empty: give at least one token to attribute")
    if len(prompt_ids) == 0:
        raise ConfigError("the prompt is empty: the first completion token needs a prompt token to predict it from")
    total = len(prompt_ids) + len(completion_ids)
    if total > max_length:
        raise ContextLengthError(
            f"prompt ({len(prompt_ids)} tokens) + completion ({len(completion_ids)} tokens) = {total} tokens "
            f"exceeds the model's context of {max_length}; shorten the prompt"
        )
    return list(prompt_ids) + list(completion_ids), [0] * len(prompt_ids) + [1] * len(completion_ids)


def token_nll(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """NLL of every target token, ``(B, T - 1)``, in at least float32; weight by ``batch.loss_mask[:, 1:]``."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return -torch.log_softmax(logits, dim=-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
