"""Curvature-refined query directions and exact scores along them, in the model's full parameter space.

A first-order query direction is the target's loss gradient ``g``. The Newton step refines it to
``x = (G + λ)⁻¹ g``, with ``G`` the Gauss-Newton matrix of the training loss over a sample of training rows
(for softmax cross-entropy, the Fisher): ``G v = mean over rows of Σ_t J_tᵀ (diag(p_t) − p_t p_tᵀ) J_t v``, where
``J_t`` is the Jacobian of position t's logits in the parameters. ``G`` is never formed: each product is one
forward-mode pass (``J v``) and one reverse-mode pass (``Jᵀ u``), and conjugate gradient solves the damped system
from those products alone (bergson's EK-FAC + CG, in spirit). A training row is then scored by how its loss changes
along ``x`` — exactly, by forward-mode differentiation (one pass per batch of rows), or by a central difference
``(ℓ(θ+εx) − ℓ(θ−εx)) / 2ε`` — with no projection anywhere.

This module is the math: the products, the solver and the scores (issue #25, items 1-2); wiring them into the
retrievers, the index's recall stage and the LDS tables comes next. Forward-mode differentiation needs the eager
attention kernel (PyTorch's fused CPU attention has no forward-mode derivative), which :func:`eager_attention`
switches to for the duration of a call. Logits are formed whole (``B × T × V``) per chunk of rows: a product
takes :data:`PRODUCT_CHUNK_ROWS` sample rows at a time, scores take ``batch_rows``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from attribution.ascent import restored
from attribution.astra import AstraSchedule, astra_solve
from attribution.batching import TokenBatch, training_batch
from attribution.config import coerce_enum
from attribution.errors import ConfigError
from attribution.factored_inverse import FactoredInverse, Factoring
from attribution.kinds import group_names
from attribution.modules import sketched_modules

Vector = torch.Tensor
"""A flat vector over every parameter of the model, in ``named_parameters`` order."""
PRODUCT_CHUNK_ROWS = 64
"""Sample rows whose logits a Gauss-Newton product forms at once (their ``B × T × V`` logits and tangents bound its
memory; the products of the chunks are summed)."""


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the block with the model's plain (eager) attention, which forward-mode differentiation can go through;
    the model's own choice is put back after."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if config is not None and before is not None:
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        if config is not None and before is not None:
            config._attn_implementation = before


def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters, detached (the point the products and scores are taken at)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def flatten(tensors: dict[str, torch.Tensor]) -> Vector:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(vector: Vector, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``vector`` cut into tensors shaped as ``like``'s (same names, same order)."""
    total = sum(t.numel() for t in like.values())
    if total != vector.numel():
        raise ConfigError(f"a vector of {vector.numel()} values does not match the model's {total} parameters")
    out, start = {}, 0
    for name, tensor in like.items():
        out[name] = vector[start : start + tensor.numel()].view_as(tensor)
        start += tensor.numel()
    return out


def next_token_logits(model: nn.Module, params: dict[str, torch.Tensor], batch: TokenBatch) -> torch.Tensor:
    """Logits predicting each next token, ``(B, T - 1, V)``, of the model with ``params`` in place of its own."""
    out = functional_call(model, params, (), {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                                              "position_ids": batch.position_ids})
    return out.logits[:, :-1]


def row_losses(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Each row's summed NLL over its loss-masked target tokens, ``(B,)``."""
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.input_ids[:, 1:], reduction="none")
    return (nll * batch.loss_mask[:, 1:].to(nll)).sum(1)


def loss_gradient(model: nn.Module, batch: TokenBatch) -> Vector:
    """∇θ of the batch's summed loss (every loss-masked token of every row), flat."""
    params = parameters_of(model)

    def total(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return row_losses(next_token_logits(model, p, batch), batch).sum()

    with eager_attention(model):  # the kernels the products and scores use
        return flatten(torch.func.grad(total)(params))


def parameter_mask(model: nn.Module, groups: tuple[str, ...]) -> Vector:
    """1 on the weights of the modules a sketch of ``groups`` covers (blocks: the blocks' Linear layers; embed; head:
    :func:`attribution.modules.sketched_modules`), 0 on every other parameter (biases and norms included), flat."""
    weights = {f"{name}.weight" for name in sketched_modules(model, groups)}
    params = parameters_of(model)
    return flatten({name: torch.full_like(p, float(name in weights)) for name, p in params.items()})


class GaussNewton:
    """Products with ``G + λ``: ``G`` the Gauss-Newton matrix of the mean per-row loss over ``sample`` (training
    rows), at the model's current parameters; with a ``mask``, its block on the masked coordinates (``M G M``, the
    system of a direction that moves those parameters only)."""

    def __init__(self, model: nn.Module, sample: TokenBatch, damping: float = 0.0, mask: Vector | None = None,
                 chunk_rows: int = PRODUCT_CHUNK_ROWS) -> None:
        if not math.isfinite(damping) or damping < 0:
            raise ConfigError(f"damping must be a finite number >= 0, got {damping}")
        if chunk_rows <= 0:
            raise ConfigError(f"a Gauss-Newton product needs chunk_rows > 0, got {chunk_rows}")
        self.model, self.sample, self.damping, self.mask = model, sample, damping, mask
        self.chunk_rows = chunk_rows
        self.params = parameters_of(model)
        self.size = sum(p.numel() for p in self.params.values())
        """Length of the flat vectors the products take."""
        self.dim = self.size if mask is None else int(mask.sum())
        """Dimension of the system: the parameters it acts on."""
        self.products = 0

    def product(self, vector: Vector) -> Vector:
        """``(G + λ) v``: one forward-mode pass for ``J v``, one reverse-mode pass for ``Jᵀ u`` (masked on both sides
        with a mask)."""
        self.products += 1
        if self.mask is not None:
            vector = vector * self.mask.to(vector)

        tangent = unflatten(vector, self.params)
        rows = self.sample.input_ids.shape[0]
        out = torch.zeros_like(vector)
        with eager_attention(self.model):
            for start in range(0, rows, self.chunk_rows):
                chunk = sample_rows(self.sample, torch.arange(start, min(start + self.chunk_rows, rows)))

                def logits(p: dict[str, torch.Tensor], chunk: TokenBatch = chunk) -> torch.Tensor:
                    return next_token_logits(self.model, p, chunk)

                values, jv = jvp(logits, (self.params,), (tangent,))
                probs = torch.softmax(values, dim=-1)
                hjv = probs * jv - probs * (probs * jv).sum(-1, keepdim=True)  # (diag(p) − p pᵀ) J v, per position
                hjv = hjv * chunk.loss_mask[:, 1:, None].to(hjv)
                _, pullback = vjp(logits, self.params)
                (gv,) = pullback(hjv)
                out += flatten(gv)
        out = out / rows
        return (out if self.mask is None else out * self.mask.to(out)) + self.damping * vector

    def mean_eigenvalue(self, probes: int = 4, seed: int = 0) -> float:
        """``trace(G) / dim`` estimated with Rademacher probes (Hutchinson), for damping relative to it (with a mask:
        its block's)."""
        generator = torch.Generator().manual_seed(seed)
        damping, self.damping, total = self.damping, 0.0, 0.0
        first = next(iter(self.params.values()))
        try:
            for _ in range(probes):
                v = (torch.randint(0, 2, (self.size,), generator=generator) * 2 - 1).to(first.dtype).to(first.device)
                total += float(v @ self.product(v))
        finally:
            self.damping = damping
        return total / probes / self.dim


@dataclass(frozen=True)
class Solution:
    """What conjugate gradient returned: ``x``, the iterations it took and its relative residual
    ``‖A x − b‖ / ‖b‖``."""

    x: Vector
    iterations: int
    residual: float


def conjugate_gradient(apply: Callable[[Vector], Vector], b: Vector, x0: Vector | None = None,
                       precondition: Callable[[Vector], Vector] | None = None, tol: float = 1e-6,
                       max_iter: int = 100) -> Solution:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` known only through ``apply(v) = A v``; ``x0`` warm
    starts it and ``precondition(r) ≈ A⁻¹ r`` (e.g. EK-FAC's inverse) speeds it up. Stops when the relative residual
    is below ``tol`` or after ``max_iter`` products."""
    if max_iter <= 0 or not tol > 0:
        raise ConfigError(f"conjugate gradient needs max_iter > 0 and tol > 0, got {max_iter} and {tol}")
    norm_b = float(b.norm())
    if norm_b == 0:
        return Solution(torch.zeros_like(b), 0, 0.0)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    z = precondition(r) if precondition is not None else r
    p, rz = z.clone(), float(r @ z)
    for iteration in range(1, max_iter + 1):
        if float(r.norm()) / norm_b < tol:
            return Solution(x, iteration - 1, float(r.norm()) / norm_b)
        ap = apply(p)
        curvature = float(p @ ap)
        if curvature <= 0:
            raise ConfigError("conjugate gradient met a direction of non-positive curvature: the matrix is not "
                              "positive definite (raise the damping)")
        alpha = rz / curvature
        x, r = x + alpha * p, r - alpha * ap
        z = precondition(r) if precondition is not None else r
        rz, previous = float(r @ z), rz
        p = z + (rz / previous) * p
    return Solution(x, max_iter, float(r.norm()) / norm_b)


class Solver(StrEnum):
    """How the damped Gauss-Newton system is solved."""

    CG = "cg"
    """Conjugate gradient over the whole sample: one full product a step (bergson's EK-FAC + CG)."""
    ASTRA = "astra"
    """Momentum SGD with curvature products over small random batches of the sample (:mod:`attribution.astra`)."""


@dataclass(frozen=True)
class NewtonConfig:
    """How the query direction is refined."""

    damping: float = 0.1
    """λ relative to ``G``'s mean eigenvalue (``relative``) or absolute."""
    relative: bool = True
    tol: float = 1e-4
    """Relative residual at which conjugate gradient stops."""
    max_iter: int = 50
    """Most Gauss-Newton products; 0 (with a warm start) takes none: ``x`` is the factored inverse's ``P⁻¹ g``
    alone, the factoring fitted on every sample row (an EK-FAC influence over every parameter)."""
    factoring: Factoring = Factoring.NONE
    """Factored approximation of ``(G + λ)⁻¹`` fitted on the sample (:mod:`attribution.factored_inverse`): CG's
    preconditioner and ASTRA's step preconditioner; none, kfac or ekfac."""
    warm_start: bool = False
    """Start the solver from the factored inverse's ``x₀ = P⁻¹ g`` instead of 0 (needs a factoring)."""
    solver: Solver = Solver.CG
    astra: AstraSchedule = field(default_factory=AstraSchedule)
    """ASTRA's schedule (``solver = astra``)."""
    groups: tuple[str, ...] | None = None
    """The parameters the direction moves: every one (None), or the weights of these sketch groups' modules only
    (:func:`parameter_mask`: e.g. blocks and head, what a peer that tracks those modules sees); conjugate gradient
    without a factored preconditioner only."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.damping) or self.damping <= 0:
            raise ConfigError(f"newton damping must be a positive finite number, got {self.damping}")
        if self.max_iter < 0 or not 0 < self.tol < 1:
            raise ConfigError(f"newton needs max_iter >= 0 and 0 < tol < 1, got {self.max_iter} and {self.tol}")
        coerce_enum(self, "factoring", Factoring)
        coerce_enum(self, "solver", Solver)
        if self.warm_start and self.factoring is Factoring.NONE:
            raise ConfigError("a newton warm start needs a factoring (kfac or ekfac) to start from")
        if self.max_iter == 0 and (not self.warm_start or self.solver is not Solver.CG):
            raise ConfigError("newton with 0 steps is the warm start alone: it needs a warm start (and a factoring) "
                              "and conjugate gradient")
        if self.groups is not None:
            object.__setattr__(self, "groups", group_names(self.groups))
            if self.solver is not Solver.CG or self.factoring is not Factoring.NONE:
                raise ConfigError("a newton direction over some parameter groups is solved by plain conjugate "
                                  "gradient (no factoring, no ASTRA)")


@dataclass(frozen=True)
class NewtonDirection:
    """A refined query direction and how it was found."""

    x: Vector
    gradient: Vector
    damping: float
    """The absolute λ used."""
    iterations: int
    """Conjugate-gradient steps, or ASTRA steps."""
    residual: float
    """``‖(G + λ) x − g‖ / ‖g‖`` over the whole sample (for ASTRA: one extra product to report it)."""
    seconds: float
    products: int = 0
    """Gauss-Newton products over the whole sample, or their equivalent in rows (ASTRA's batches)."""


def sample_rows(batch: TokenBatch, picks: torch.Tensor) -> TokenBatch:
    """The rows ``picks`` of ``batch``."""
    return TokenBatch(batch.input_ids[picks], batch.attention_mask[picks], batch.loss_mask[picks])


class NewtonSolver:
    """Newton directions ``x = (G + λ)⁻¹ g`` for any number of targets over one sample: the damping (relative to
    ``G``'s mean eigenvalue) and the factored preconditioner are found once, on the first target."""

    def __init__(self, model: nn.Module, sample: TokenBatch, config: NewtonConfig = NewtonConfig(),
                 precondition: Callable[[Vector], Vector] | None = None) -> None:
        self.model, self.sample, self.config = model, sample, config
        self.mask = None if config.groups is None else parameter_mask(model, config.groups)
        self.system = GaussNewton(model, sample, mask=self.mask)
        self._precondition = precondition
        self._ready = False

    def _prepare(self) -> None:
        if self._ready:
            return
        config, system = self.config, self.system
        system.damping = config.damping * system.mean_eigenvalue() if config.relative else config.damping
        if self._precondition is None and config.factoring is not Factoring.NONE:
            self._precondition = FactoredInverse.fit(self.model, self.sample, system.damping, config.factoring)
        self._ready = True

    def direction(self, target: TokenBatch) -> NewtonDirection:
        """``target``'s Newton direction, by ``config.solver``."""
        started = time.perf_counter()
        self._prepare()
        config, system, model, sample = self.config, self.system, self.model, self.sample
        gradient = loss_gradient(model, target)
        if self.mask is not None:
            gradient = gradient * self.mask.to(gradient)
        dtype, b = gradient.dtype, gradient.double()
        before = system.products

        def apply(v: Vector) -> Vector:  # the solver's recurrences in float64: float32 ones lose orthogonality
            return system.product(v.to(dtype)).double()

        def residual(x: Vector) -> float:  # one extra product over the whole sample
            return float((apply(x) - b).norm() / b.norm()) if float(b.norm()) > 0 else 0.0

        precondition = self._precondition
        inverse = None if precondition is None else (lambda r: precondition(r.to(dtype)).double())
        x0 = inverse(b) if config.warm_start and inverse is not None else None
        if config.solver is Solver.ASTRA:
            def apply_batch(v: Vector, picks: torch.Tensor) -> Vector:
                return GaussNewton(model, sample_rows(sample, picks), system.damping).product(v.to(dtype)).double()

            solved = astra_solve(apply_batch, b, len(sample), config.astra, inverse, x0)
            products = round(config.astra.steps * min(config.astra.rows, len(sample)) / len(sample)) + 1
            return NewtonDirection(solved.x.to(dtype), gradient, system.damping, solved.steps, residual(solved.x),
                                   time.perf_counter() - started, products)
        if config.max_iter == 0:  # the factored inverse alone; one product to report how far it is from the system
            assert x0 is not None  # NewtonConfig: 0 steps need a warm start, which needs a factoring
            return NewtonDirection(x0.to(dtype), gradient, system.damping, 0, residual(x0),
                                   time.perf_counter() - started, system.products - before)
        found = conjugate_gradient(apply, b, x0=x0, tol=config.tol, max_iter=config.max_iter, precondition=inverse)
        return NewtonDirection(found.x.to(dtype), gradient, system.damping, found.iterations, found.residual,
                               time.perf_counter() - started, system.products - before)


def newton_direction(model: nn.Module, target: TokenBatch, sample: TokenBatch, config: NewtonConfig = NewtonConfig(),
                     precondition: Callable[[Vector], Vector] | None = None) -> NewtonDirection:
    """``x = (G + λ)⁻¹ g``: ``g`` the target's loss gradient, ``G`` the Gauss-Newton matrix over ``sample``; solved
    by ``config.solver``, preconditioned by ``precondition`` or else by ``config.factoring`` fitted on ``sample``
    (:class:`NewtonSolver` does this once for many targets)."""
    return NewtonSolver(model, sample, config, precondition).direction(target)


def loss_changes(model: nn.Module, batch: TokenBatch, direction: Vector) -> torch.Tensor:
    """Each row's loss change along ``direction``, exactly: ``d/dε ℓ_i(θ + ε x)`` at ε = 0, ``(B,)``, by one
    forward-mode pass (first order)."""
    params = parameters_of(model)

    def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return row_losses(next_token_logits(model, p, batch), batch)

    with eager_attention(model):
        _, change = jvp(losses, (params,), (unflatten(direction, params),))
    return change.detach()


@torch.no_grad()
def loss_changes_central(model: nn.Module, batch: TokenBatch, direction: Vector, eps: float) -> torch.Tensor:
    """Each row's ``(ℓ(θ + εx) − ℓ(θ − εx)) / 2ε``, ``(B,)``: two forward passes, no derivative (second-order accurate;
    at a finite ε it also sees what a first-order score misses). The weights are put back bit for bit."""
    if not math.isfinite(eps) or eps <= 0:
        raise ConfigError(f"eps must be a positive finite step, got {eps}")
    base = {name: p.clone() for name, p in parameters_of(model).items()}  # copies: the weights change below
    step = unflatten(direction, base)
    losses = []
    with restored(model):
        for sign in (1.0, -1.0):
            for name, p in model.named_parameters():
                p.copy_(base[name] + sign * eps * step[name])
            losses.append(row_losses(next_token_logits(model, parameters_of(model), batch), batch))
    return (losses[0] - losses[1]) / (2 * eps)


def score_rows(model: nn.Module, rows: list[list[int]], direction: Vector, batch_rows: int = 64) -> torch.Tensor:
    """Every training row's exact loss change along ``direction`` (:func:`loss_changes`), ``batch_rows`` at a time;
    with ``direction = (G + λ)⁻¹ ∇ℓ(query)`` this is the row's influence estimate (positive: training on the row
    lowered the query's loss)."""
    if batch_rows <= 0:
        raise ConfigError(f"batch_rows must be positive, got {batch_rows}")
    parts = [loss_changes(model, training_batch(rows[start : start + batch_rows]), direction)
             for start in range(0, len(rows), batch_rows)]
    return torch.cat(parts) if parts else torch.zeros(0)
