"""Exact replay of training, differentiated: each query's loss as a function of every training row's loss weight.

MAGIC (Ilyas & Engstrom, 2025; bergson's ``magic`` module) scores training data by the *metagradient*
``∂ L_q(θ_T) / ∂ w_i``: the derivative of a query's loss after training with respect to the weight ``w_i`` of row
``i``'s loss in every batch it appears in (all weights 1 in the real run). Removing a set ``S`` of rows in place —
weight 0, the batches and step count unchanged (``evaluation.training.train(zeroed=...)``) — changes the query loss
by ``−Σ_{i∈S} ∂L_q/∂w_i`` to first order, with no assumption that training converged: the derivative runs back
through every optimizer step. It is the field's ceiling row (bergson's board: 0.93 LDS, where EK-FAC + CG reads
0.69), not a method one can serve: it replays training once a query.

How: a forward sweep trains exactly as :func:`evaluation.training.train` does — the same init, row order, loss,
gradient clipping to norm 1, warm-up and cosine schedule and AdamW update (written out here as plain tensor math, so
the same function can be differentiated) — and keeps each step's weights and AdamW moments. A reverse sweep then
carries each query's cotangent ``(λ_θ, λ_m, λ_v)`` back through the steps, one vector-Jacobian product per step
(second order through the loss: a Hessian-vector product inside it), collecting each batch row's ``∂L_q/∂w``.
Memory: three copies of every parameter per step. Cost: about four training runs' worth of passes per query.

One care point: ``√v`` has an infinite derivative at 0, and AdamW's second moment is exactly 0 for parameters that
have had no gradient yet (embeddings of tokens not seen); their updates do not depend on any row weight, so
:class:`SafeSqrt` gives them a zero derivative instead of ``∞ · 0 = NaN``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call
from transformers import GPTNeoXForCausalLM

from attribution.errors import ConfigError
from attribution.newton import eager_attention, flatten, parameters_of, unflatten
from evaluation.training import (
    TrainSettings,
    batch_for_step,
    batch_loss,
    learning_rate,
    make_model,
    rows_for_step,
    steps_for,
)
from indexer.megatron import MegatronDataset

log = logging.getLogger(__name__)

BETAS = (0.9, 0.95)
"""AdamW's betas in :func:`evaluation.training.train`."""
EPS = 1e-8
"""AdamW's epsilon (PyTorch's default, which the trainer keeps)."""
MAX_NORM = 1.0
"""The trainer's gradient clipping norm."""


class SafeSqrt(torch.autograd.Function):
    """``√x`` whose derivative is 0 where ``x`` is 0 (see the module docstring), ``1 / (2√x)`` elsewhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 (autograd's context)
        root = x.sqrt()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (root,) = ctx.saved_tensors
        return torch.where(root > 0, grad / (2 * root.clamp_min(torch.finfo(root.dtype).tiny)), torch.zeros_like(grad))


@dataclass(frozen=True)
class Replay:
    """One training run as a differentiable function of its row weights."""

    model: GPTNeoXForCausalLM
    settings: TrainSettings
    data: MegatronDataset
    rows: Sequence[int]
    """Row ids in training order (:func:`evaluation.text_case.training_order`)."""
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.settings.bf16:
            raise ConfigError("replay: bf16 training is not replayed exactly; train the case in float32")
        if steps_for(len(self.rows), self.settings.batch_size) != self.settings.steps:
            raise ConfigError(f"replay: {len(self.rows)} rows do not fill {self.settings.steps} steps of "
                              f"{self.settings.batch_size}")

    def batch(self, step: int) -> tuple[torch.Tensor, list[int]]:
        """Step ``step``'s token batch and its row ids."""
        return (batch_for_step(self.data, step, self.settings.batch_size, self.rows),
                rows_for_step(step, self.settings.batch_size, self.rows))

    def loss(self, theta: torch.Tensor, batch: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The training loss of ``batch`` at the flat weights ``theta`` (row ``weights`` as in :func:`batch_loss`)."""
        params = unflatten(theta, self.like)
        logits = functional_call(self.model, params, args=(), kwargs={"input_ids": batch[:, :-1]}).logits
        return batch_loss(logits, batch, weights)

    @property
    def like(self) -> dict[str, torch.Tensor]:
        """The model's parameters by name: the shapes a flat weight vector is cut into."""
        return parameters_of(self.model)

    def step(self, step: int, theta: torch.Tensor, m: torch.Tensor, v: torch.Tensor, batch: torch.Tensor,
             weights: torch.Tensor | None, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training step as tensor math: clip the gradient to norm 1, then AdamW (decoupled weight decay, bias
        correction) at the schedule's learning rate; returns the new ``(theta, m, v)``."""
        if not theta.requires_grad:
            theta = theta.detach().requires_grad_()
        (g,) = torch.autograd.grad(self.loss(theta, batch, weights), theta, create_graph=create_graph)
        g = g * torch.clamp(MAX_NORM / (g.norm() + 1e-6), max=1.0)
        lr = learning_rate(step, self.settings)
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        correction1 = 1 - BETAS[0] ** (step + 1)
        correction2 = math.sqrt(1 - BETAS[1] ** (step + 1))
        decayed = theta * (1 - lr * self.settings.weight_decay)
        return decayed - (lr / correction1) * m / (SafeSqrt.apply(v) / correction2 + EPS), m, v

    def trajectory_bytes(self, from_step: int = 0) -> int:
        """Memory :meth:`metagradients` keeps: every differentiated step's weights and two AdamW moments."""
        numbers = sum(p.numel() for p in self.model.parameters())
        return 3 * (self.settings.steps - from_step) * numbers * torch.finfo(self.dtype).bits // 8

    def initial(self) -> torch.Tensor:
        return flatten(self.like).to(self.dtype).clone()

    def final_weights(self, row_weights: dict[int, float] | None = None) -> torch.Tensor:
        """The flat weights after training with ``row_weights`` (row id → loss weight; others 1)."""
        return self.forward_sweep(row_weights)[0]

    def forward_sweep(self, row_weights: dict[int, float] | None = None, keep_from: int | None = None
                      ) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Train with ``row_weights`` (row id → loss weight; others 1): the final flat weights, and each step's
        ``(θ, m, v)`` before it from step ``keep_from`` on (none kept when None)."""
        kept: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        theta = self.initial()
        m, v = torch.zeros_like(theta), torch.zeros_like(theta)
        for step in range(self.settings.steps):
            if keep_from is not None and step >= keep_from:
                kept[step] = (theta, m, v)
            batch, ids = self.batch(step)
            weights = None if not row_weights else torch.tensor([row_weights.get(i, 1.0) for i in ids],
                                                                  dtype=self.dtype)
            theta, m, v = (t.detach() for t in self.step(step, theta, m, v, batch, weights, create_graph=False))
        return theta, kept

    def check_from_step(self, from_step: int) -> None:
        """A clear error unless ``from_step`` is one of the training's steps."""
        if not 0 <= from_step < self.settings.steps:
            raise ConfigError(f"replay: from_step must be in [0, {self.settings.steps}), got {from_step}")

    def metagradients(self, query_batches: Sequence[torch.Tensor], data_rows: int, from_step: int = 0) -> np.ndarray:
        """``(queries, data_rows)``: ``∂ L_q(θ_T) / ∂ w_i`` for every query chunk batch (each ``(n, seq + 1)``, its
        loss the mean next-token NLL) and every row id ``i`` (rows never trained on stay 0). ``from_step`` > 0
        differentiates only the row weights of steps ``from_step`` on (the reverse sweep stops there; a row's
        earlier appearances count as fixed), which also keeps only those steps' trajectory."""
        self.check_from_step(from_step)
        with eager_attention(self.model):
            started = time.perf_counter()
            theta, trajectory = self.forward_sweep(keep_from=from_step)
            log.info("replay: forward sweep of %d steps in %.1f s", self.settings.steps, time.perf_counter() - started)
            cotangents = [self.query_gradient(theta, q) for q in query_batches]
            lam = [(g, torch.zeros_like(g), torch.zeros_like(g)) for g in cotangents]
            out = np.zeros((len(query_batches), data_rows), dtype=np.float64)
            started = time.perf_counter()
            for step in reversed(range(from_step, self.settings.steps)):
                batch, ids = self.batch(step)
                inputs = tuple(t.detach().requires_grad_() for t in trajectory.pop(step))  # freed as it goes
                weights = torch.ones(len(ids), dtype=self.dtype, requires_grad=True)
                outputs = self.step(step, *inputs, batch, weights, create_graph=True)
                for q, cotangent in enumerate(lam):
                    *back, dw = torch.autograd.grad(outputs, (*inputs, weights), grad_outputs=cotangent,
                                                    retain_graph=q < len(lam) - 1, allow_unused=True)
                    lam[q] = tuple(torch.zeros_like(x) if b is None else b for b, x in zip(back, inputs, strict=True))
                    np.add.at(out[q], ids, dw.detach().double().numpy())
                if step % max(1, self.settings.steps // 4) == 0:
                    log.info("replay: reverse sweep at step %d of %d, %.0f s", step, self.settings.steps,
                             time.perf_counter() - started)
            log.info("replay: reverse sweep for %d queries in %.1f s", len(lam), time.perf_counter() - started)
        return out

    @torch.no_grad()
    def query_losses(self, theta: torch.Tensor, queries: np.ndarray) -> np.ndarray:
        """Each query chunk's mean next-token NLL at the flat weights ``theta``."""
        return np.asarray([float(self.loss(theta, torch.as_tensor(q[None], dtype=torch.long), None)) for q in queries])

    def query_gradient(self, theta: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """``∇θ`` of the mean next-token NLL of ``chunks`` at the flat weights ``theta``."""
        theta = theta.detach().requires_grad_()
        (g,) = torch.autograd.grad(self.loss(theta, chunks, None), theta)
        return g


def replay_of(settings: TrainSettings, data_prefix: Path, vocab_size: int, rows: Sequence[int],
              init: Path | None = None, dtype: torch.dtype = torch.float32) -> Replay:
    """The replay of ``evaluation.training.train(settings, data_prefix, vocab_size, ..., rows=rows, init=init)``."""
    if init is None:
        model = make_model(settings, vocab_size)
    else:
        model = GPTNeoXForCausalLM.from_pretrained(str(init), torch_dtype=torch.float32)
    model = model.to(dtype)
    model.train()
    return Replay(model, settings, MegatronDataset(data_prefix), list(rows), dtype)


def magic_scores(replay: Replay, queries: np.ndarray, data_rows: int, from_step: int = 0) -> np.ndarray:
    """``(queries, data_rows)`` MAGIC scores of each held-out chunk: ``−∂L_q/∂w_i`` (from step ``from_step`` on),
    so that a row whose weight lowers the query's loss scores high (the convention of every LDS estimator: predicted
    loss = −Σ kept scores)."""
    batches = [torch.as_tensor(q[None], dtype=torch.long) for q in queries]
    return -replay.metagradients(batches, data_rows, from_step)
