"""Turn sketches into comparable vectors: preconditioning, unit norm, checkpoints, contrast.

Every mode here is linear in the query until the final normalization, which is what
makes per-token contributions and contrastive projection exact:

- ``inner_product``: score = q̃ · g̃ (with the preconditioner, ``qᵀ (F + λI)^{-1} g``).
- ``cosine`` (default): both sides scaled to unit norm after preconditioning.
- Multi-checkpoint (TracIn-CP): each checkpoint's vectors are prepared on their own and
  concatenated, so one inner product is the sum over checkpoints (cosine: their mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attribution.kinds import ScoreMode
from attribution.preconditioner import Preconditioner


def _unit(x: torch.Tensor, eps: float = 1e-30) -> tuple[torch.Tensor, torch.Tensor]:
    norms = x.norm(dim=-1, keepdim=True).clamp_min(eps)
    return x / norms, norms


def prepare_train(
    sketches: torch.Tensor, mode: ScoreMode, preconditioner: Preconditioner | None = None
) -> torch.Tensor:
    """Training-side vectors ``(..., D)`` ready for a plain inner product."""
    x = preconditioner.apply_train(sketches) if preconditioner else sketches
    return _unit(x)[0] if mode is ScoreMode.COSINE else x


def prepare_query(
    query: torch.Tensor,
    mode: ScoreMode,
    preconditioner: Preconditioner | None = None,
    controls: torch.Tensor | None = None,
    per_token: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Query vector ``(D,)`` and, if given per-token sketches ``(m, D)``, their contributions.

    ``controls`` ``(c, D)`` are sketches of control prompts (same relation, other subjects):
    the query is projected off their span, leaving what is specific to the target.
    The per-token vectors go through the same linear steps and the same scale, so
    their scores against any training vector sum to the query's score.
    """
    q = preconditioner.apply_query(query) if preconditioner else query
    tokens = preconditioner.apply_query(per_token) if (preconditioner and per_token is not None) else per_token
    if controls is not None and len(controls):
        basis = control_basis(preconditioner.apply_query(controls) if preconditioner else controls)
        q = project_off(q, basis)
        tokens = project_off(tokens, basis) if tokens is not None else None
    if mode is ScoreMode.COSINE:
        q, norm = _unit(q)
        tokens = tokens / norm if tokens is not None else None
    return q, tokens


def control_basis(controls: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``(D, r)`` of the span of the control sketches (rank-revealing)."""
    u, s, _ = torch.linalg.svd(controls.T.to(torch.float64), full_matrices=False)
    keep = s > s.max() * 1e-10
    return u[:, keep].to(controls.dtype)


def project_off(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``x`` minus its component in the span of ``basis``; works on ``(D,)`` and ``(m, D)``."""
    return x - (x @ basis) @ basis.T


def combine_checkpoints(parts: list[torch.Tensor], mode: ScoreMode,
                        weights: Sequence[float] | None = None) -> torch.Tensor:
    """Concatenate per-checkpoint prepared vectors, each side scaled by √w, so one inner product is
    ``Σ_c w_c q_c·g_c`` (TracIn-CP with the learning rate as ``w``); cosine weights are normalized to sum to 1
    (equal weights: the mean of the checkpoints' cosines)."""
    if weights is None:
        joined = torch.cat(parts, dim=-1)
        return joined / len(parts) ** 0.5 if mode is ScoreMode.COSINE else joined
    weights = [w / sum(weights) for w in weights] if mode is ScoreMode.COSINE else list(weights)
    return torch.cat([p * w**0.5 for p, w in zip(parts, weights, strict=True)], dim=-1)
