"""Unlearning ablations: push the model away from a selection of training rows, measure who gets hurt.

One trial: the summed NLL of the selected rows is differentiated once, the gradient is
scaled to a fixed norm ``‖Δθ‖ = budget`` and *added* (ascent), losses are measured on
the target, its paraphrases, related prompts, unrelated prompts and general held-out
text, and the original weights are copied back bit for bit. Never a fresh Adam (its
first step moves every weight by lr·sign(g)).

Contrastive ascent removes from the ascent direction its components along the related
prompts' gradients, so that what is shared with them is not ascended on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attribution.batching import backward_summed_nll, collate, query_tokens, token_nll, training_batch
from attribution.errors import ConfigError


class EmptySelectionError(ConfigError):
    """An ablation was asked to ascend on no training rows."""


@dataclass(frozen=True)
class Probe:
    """A (prompt, completion) whose completion loss is measured."""

    prompt: str
    completion: str


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    """Run a block that changes the weights, then put back the exact original values."""
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved[name])


def flat_gradient(model: nn.Module, batch) -> torch.Tensor:
    """∇θ of the summed loss of a batch, flattened over all parameters (the chunked loss: memory does not grow
    with the vocabulary)."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        backward_summed_nll(model, batch)
        return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad


def ascent_direction(model: nn.Module, rows: Sequence[Sequence[int]], avoid: torch.Tensor | None = None,
                     batch_size: int = 16) -> torch.Tensor:
    """Unit ascent direction on the selection's summed loss, optionally orthogonal to ``avoid`` (r, P)."""
    if not rows:
        raise EmptySelectionError("the selection is empty: nothing to ascend on")
    total = None
    for start in range(0, len(rows), batch_size):
        g = flat_gradient(model, training_batch(rows[start : start + batch_size]))
        total = g if total is None else total + g
    if avoid is not None and len(avoid):
        basis, _ = torch.linalg.qr(avoid.T)
        total = total - basis @ (basis.T @ total)
    norm = total.norm()
    if float(norm) == 0.0:
        raise EmptySelectionError("the selection's gradient is zero: nothing to ascend on")
    return total / norm


def apply_step(model: nn.Module, direction: torch.Tensor, budget: float) -> None:
    """θ ← θ + budget · direction (a move of exactly ``budget`` in parameter L2 norm)."""
    if budget <= 0:
        raise ConfigError(f"budgets must be positive, got {budget}")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.add_(direction[offset : offset + n].view_as(p).to(p.dtype), alpha=budget)
            offset += n


class LossMeter:
    """Completion losses of probes and mean per-token loss of held-out rows, batched."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int) -> None:
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def probe_batch(self, probes: Sequence[Probe]):
        rows, masks = [], []
        for probe in probes:
            ids, mask = query_tokens(self.tokenizer.encode(probe.prompt, add_special_tokens=False),
                                     self.tokenizer.encode(probe.completion, add_special_tokens=False),
                                     self.max_length)
            rows.append(ids)
            masks.append(mask)
        return collate(rows, masks)

    @torch.no_grad()
    def probe_losses(self, batch) -> torch.Tensor:
        """Per-probe summed completion NLL (nats)."""
        nll = token_nll(self.model, batch)
        return (nll * batch.loss_mask[:, 1:].to(nll)).sum(1)

    @torch.no_grad()
    def text_loss(self, batch) -> float:
        """Mean per-token NLL of held-out rows (general language-modelling loss)."""
        mask = batch.loss_mask[:, 1:]
        return float((token_nll(self.model, batch) * mask.to(torch.float32)).sum() / mask.sum())


@contextlib.contextmanager
def trainable(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad inside the block (``flat_gradient`` and ``apply_step`` then see the same
    parameters), the original flags afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def project_off(vector: torch.Tensor, avoid: torch.Tensor | None) -> torch.Tensor:
    """``vector`` minus its components in the span of the rows of ``avoid`` (r, P)."""
    if avoid is None or not len(avoid):
        return vector
    basis, _ = torch.linalg.qr(avoid.T)
    return vector - basis @ (basis.T @ vector)


def ascend(model: nn.Module, batch, steps: int, budget: float, avoid: torch.Tensor | None = None) -> None:
    """θ ← θ + Δθ with ‖Δθ‖ = ``budget`` exactly: ``steps`` normalized ascent steps of ``budget / steps`` on the
    batch's summed loss (each off ``avoid``'s span), the total move then stretched along itself to the budget.

    Call it inside :func:`restored` (and :func:`trainable`): it changes the weights in place.
    """
    if steps <= 0:
        raise ConfigError(f"ascent steps must be positive, got {steps}")
    if budget <= 0:
        raise ConfigError(f"budgets must be positive, got {budget}")
    total = None
    for _ in range(steps):
        gradient = project_off(flat_gradient(model, batch), avoid)
        norm = gradient.norm()
        if float(norm) == 0.0:
            raise EmptySelectionError("the target's gradient is zero: nothing to ascend on")
        direction = gradient / norm
        apply_step(model, direction, budget / steps)
        total = direction if total is None else total + direction
    moved = float(total.norm()) * budget / steps  # ≤ budget (triangle inequality); equal when the steps align
    if budget - moved > 0:
        apply_step(model, total / total.norm(), budget - moved)
