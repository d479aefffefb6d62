"""Token batches for the sketch pass: padding, attention masks and which tokens carry loss.

``loss_mask[b, t] = 1`` means token ``t`` of example ``b`` is a prediction target (its
NLL, predicted from position ``t - 1``, enters the loss). Queries put it on the
completion; training examples on every token after the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attribution.errors import ConfigError, HeadwaterError


class EmptyCompletionError(ConfigError):
    """A query has no completion tokens, so there is no loss to attribute."""


class ContextLengthError(ConfigError):
    """Prompt plus completion is longer than the model's context."""


class BatchMemoryError(HeadwaterError):
    """A forward/backward pass ran out of memory; nothing of the batch was written."""

    def __init__(self, rows: int, longest: int, batching: Batching) -> None:
        super().__init__(f"out of memory sketching a batch of {rows} rows of up to {longest} tokens (--batch-size "
                         f"{batching.rows}, --token-batch-size {batching.tokens}); lower --token-batch-size (peak "
                         "memory follows it), or give the process more memory. Finished shards are kept: rerun to "
                         "resume.")


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


HEAD_CHUNK_VALUES = 1 << 25
"""Logit values (positions × vocabulary) the output head computes at once in the chunked loss: 128 MB of float32,
whatever the batch, row length and vocabulary (a Pythia batch of 32 × 2,048 × 50,304 would be 13 GB whole)."""


def token_nll(model: torch.nn.Module, batch: TokenBatch, chunk_values: int | None = None) -> torch.Tensor:
    """NLL of every target token, ``(B, T - 1)``, in at least float32; weight by ``batch.loss_mask[:, 1:]``. The
    output head runs on ``chunk_values`` logit values (positions × vocabulary) at a time, so without autograd the
    ``B × T × V`` logits never exist at once (with autograd each chunk's are kept for the backward: use
    :func:`backward_summed_nll` to backpropagate within the same bound)."""
    hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids).last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    flat, targets = hidden.reshape(-1, hidden.shape[-1]), batch.input_ids[:, 1:].reshape(-1)
    step = max(1, (chunk_values or HEAD_CHUNK_VALUES) // head.out_features)
    parts = []
    for start in range(0, len(flat), step):
        logits = head(flat[start : start + step])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        parts.append(torch.nn.functional.cross_entropy(logits, targets[start : start + step], reduction="none"))
    return torch.cat(parts).view(batch.input_ids.shape[0], -1)


def position_logits(model: torch.nn.Module, input_ids: torch.Tensor, positions: slice) -> torch.Tensor:
    """Logits of a one-row batch at ``positions`` only (the head runs on those positions, not on every one: a
    2,048-token row at Pythia's vocabulary would be 412 MB of logits)."""
    hidden = model.base_model(input_ids=input_ids).last_hidden_state[0, positions]
    return model.get_output_embeddings()(hidden)


def backward_summed_nll(model: torch.nn.Module, batch: TokenBatch, chunk_values: int = HEAD_CHUNK_VALUES) -> float:
    """Backpropagate the loss-masked NLL, summed, with the output head applied to a chunk of positions at a time:
    each chunk's logits are formed, turned into its loss and backpropagated to the final hidden states before the
    next chunk, so ``B × T × V`` logits never exist at once; the body then backpropagates once. Same gradients as
    ``token_nll(...).sum().backward()`` up to float rounding (tested). Hooks on the head see one chunk at a time,
    so a sketcher of the head itself uses the unchunked loss. Returns the loss."""
    hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids).last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    leaf = hidden.detach().requires_grad_(True)
    flat = leaf.reshape(-1, leaf.shape[-1])
    targets = batch.input_ids[:, 1:].reshape(-1)
    weights = batch.loss_mask[:, 1:].reshape(-1).to(torch.float32)
    step = max(1, chunk_values // head.out_features)
    total = 0.0
    for start in range(0, len(flat), step):
        stop = start + step
        logits = head(flat[start:stop])
        nll = torch.nn.functional.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)),
                                                targets[start:stop], reduction="none")
        loss = (nll * weights[start:stop]).sum()
        if loss.requires_grad:
            loss.backward()
        total += float(loss.detach())
    if leaf.grad is not None:
        hidden.backward(leaf.grad)
    return total


@dataclass(frozen=True)
class Batching:
    """How rows are grouped into forward/backward passes: consecutive rows, at most ``rows`` of them and at most
    ``tokens`` padded tokens (rows × the longest row), so memory follows the token budget whatever the row length
    (bergson's ``token_batch_size``). A row longer than the budget gets a pass of its own."""

    rows: int = 32
    tokens: int = 8192

    def __post_init__(self) -> None:
        if self.rows <= 0:
            raise ConfigError(f"--batch-size must be positive, got {self.rows}")
        if self.tokens <= 0:
            raise ConfigError(f"--token-batch-size must be positive, got {self.tokens}")

    def spans(self, lengths: Sequence[int]) -> list[tuple[int, int]]:
        """``[start, stop)`` of each batch over rows of these lengths, in order."""
        spans, start, longest = [], 0, 0
        for i, length in enumerate(lengths):
            wider = max(longest, length)
            if i > start and ((i - start + 1) * wider > self.tokens or i - start == self.rows):
                spans.append((start, i))
                start, wider = i, length
            longest = wider
        if start < len(lengths):
            spans.append((start, len(lengths)))
        return spans


DEFAULT_BATCHING = Batching()
"""32 rows and 8,192 padded tokens per pass: the index build's defaults."""
