"""Per-example gradient sketches by factored two-sided projection (LoGra).

For a linear layer ``y = W x``, an example's weight gradient is ``dW = Σ_t g_t x_tᵀ``
(output gradient ⊗ input activation). Projecting both sides before the sum,
``S = Σ_t (P_outᵀ g_t)(P_inᵀ x_t)ᵀ = P_outᵀ dW P_in`` (k × k per module), exactly,
without ever forming ``dW``. Forward hooks project inputs; tensor hooks on the
outputs project the output gradients as backward produces them. Parameters do not
require grad during the pass, so no ``.grad`` is computed for the sketch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

from attribution.batching import HEAD_CHUNK_VALUES, TokenBatch, backward_summed_nll
from attribution.errors import ConfigError
from attribution.kinds import SketchConfig
from attribution.modules import sketched_modules, weight_shape
from attribution.projection import projection_matrix


class ModuleStatistics(Protocol):
    """Extra per-module statistics gathered during a sketch pass (e.g. the Kronecker factors of K-FAC)."""

    def observe(self, name: str, inputs: torch.Tensor, output_grads: torch.Tensor, mask: torch.Tensor) -> None:
        """One batch of module ``name``: its inputs ``(B, T, d_in)``, the loss gradients of its outputs
        ``(B, T, d_out)`` and which positions are real tokens ``(B, T)``."""
        ...


ProjectionFold = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(module name, P_in, P_out) -> (P_in', P_out')``: a transform folded into the projections, so that
``P_out'ᵀ dW P_in'`` is, e.g., the projection of a curvature-preconditioned gradient ``G⁻¹ dW A⁻¹`` when
``P_in' = A⁻¹ P_in`` and ``P_out' = G⁻¹ P_out``."""


class Sketcher:
    """Computes gradient sketches of a model's per-example (or per-window) losses."""

    def __init__(self, model: nn.Module, config: SketchConfig, scales: dict[str, tuple] | None = None) -> None:
        """``scales`` maps a module name to ``(in_scale, out_scale)`` vectors applied before projection
        (the factored Adam normalizer); they are folded into the projection matrices."""
        self.model = model
        self.config = config
        self.head_chunk_values = HEAD_CHUNK_VALUES
        """Logit values the chunked loss forms at once (``attribution.batching.backward_summed_nll``)."""
        self.modules = sketched_modules(model, config.groups)
        weight = next(iter(self.modules.values())).weight
        self.projections: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, mod in self.modules.items():
            out_dim, in_dim = weight_shape(mod)
            p_in = projection_matrix(config.seed, name, "in", in_dim, config.k, weight.dtype, weight.device)
            p_out = projection_matrix(config.seed, name, "out", out_dim, config.k, weight.dtype, weight.device)
            if scales and name in scales:
                in_scale, out_scale = scales[name]
                p_in = in_scale.to(p_in)[:, None] * p_in
                p_out = out_scale.to(p_out)[:, None] * p_out
            self.projections[name] = (p_in, p_out)

    def folded(self, fold: ProjectionFold) -> Sketcher:
        """A sketcher of the same model whose projections are transformed by ``fold`` (e.g. the query side
        of a full-space curvature); this one is unchanged."""
        other = object.__new__(Sketcher)
        other.model, other.config, other.modules = self.model, self.config, self.modules
        other.head_chunk_values = self.head_chunk_values
        other.projections = {name: fold(name, p_in, p_out) for name, (p_in, p_out) in self.projections.items()}
        return other

    @property
    def dim(self) -> int:
        """Length of one sketch: modules × k²."""
        return len(self.modules) * self.config.k**2

    @property
    def module_names(self) -> list[str]:
        return list(self.modules)

    def project(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sketch of a direction in weight space, ``(D,)``: ``P_outᵀ X P_in`` of each sketched module's weight
        ``X`` (``weights`` maps parameter names, ``"<module>.weight"``, to tensors shaped as the weights; other
        parameters are ignored), in :meth:`sketch`'s layout. A row's sketch is its gradient's projection, so the inner
        product of the two estimates ``∇ℓ_row · X`` over these modules without bias (``E[P Pᵀ] = I``), e.g. with
        ``X`` a query's Newton direction ``(G + λ)⁻¹ ∇ℓ(query)``: the answer through a stored index."""
        parts = []
        for name, module in self.modules.items():
            key = f"{name}.weight"
            if key not in weights:
                raise ConfigError(f"the direction has no {key!r}: it must hold every sketched module's weight")
            p_in, p_out = self.projections[name]
            direction = weights[key].to(p_in)
            if tuple(direction.shape) != weight_shape(module):
                raise ConfigError(f"{key!r} is shaped {tuple(direction.shape)}, the module's weight is "
                                  f"{weight_shape(module)}")
            parts.append((p_out.T @ direction @ p_in).reshape(-1))
        return torch.cat(parts)

    def sketch(self, batch: TokenBatch, window: int | None = None,
               statistics: Sequence[ModuleStatistics] = ()) -> torch.Tensor:
        """Sketches ``(B, D)``; with ``window=w``, per window of w real tokens: ``(B, n_windows, D)``.

        Window ``i`` holds the targets at positions ``[i·w, (i+1)·w)`` of each example's own
        tokens, so windows do not depend on padding; the windows sum to the whole sketch.
        """
        if window is not None and window <= 0:
            raise ConfigError(f"window must be a positive number of tokens, got {window}")
        device = next(self.model.parameters()).device
        batch = batch.right_aligned().to(device)
        assign = self._window_assignment(batch, window)  # (B, T, n_windows)
        results: dict[str, torch.Tensor] = {}
        with self._hooks(assign, results, statistics, batch.attention_mask):
            if self.model.get_output_embeddings() in self.modules.values():
                self._loss(batch).backward()  # the head's hooks see the whole batch at once
            else:
                backward_summed_nll(self.model, batch, self.head_chunk_values)
        sketches = torch.cat([results[name].flatten(2) for name in self.modules], dim=2)  # (B, n, D)
        return sketches[:, 0] if window is None else sketches

    def _window_assignment(self, batch: TokenBatch, window: int | None) -> torch.Tensor:
        mask = batch.attention_mask.to(next(self.model.parameters()).dtype)
        if window is None:
            return mask[:, :, None]
        # The gradient flowing out of position t comes from the loss on target t + 1, so a
        # position belongs to the window of the target it predicts.
        target = batch.position_ids + 1
        count = int((batch.attention_mask.sum(1).max() + window - 1) // window)
        index = (target // window).clamp(max=count - 1)
        return nn.functional.one_hot(index, count).to(mask) * mask[:, :, None]

    def _loss(self, batch: TokenBatch) -> torch.Tensor:
        """The summed loss with the head applied to the whole batch at once (its hooks see ``(B, T, H)``)."""
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids).logits[:, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        nll = -torch.log_softmax(logits, dim=-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        return (nll * batch.loss_mask[:, 1:].to(nll)).sum()

    @contextlib.contextmanager
    def _hooks(self, assign: torch.Tensor, results: dict[str, torch.Tensor],
               statistics: Sequence[ModuleStatistics] = (), mask: torch.Tensor | None = None) -> Iterator[None]:
        handles = []
        saved = {p: p.requires_grad for p in self.model.parameters()}
        embed = self.model.get_input_embeddings()

        embed_name = next((name for name, mod in self.modules.items() if mod is embed), None)

        def make_leaf(module, args, output):  # gradients must flow although no parameter wants them
            leaf = output.detach().requires_grad_(True)
            if embed_name is not None:  # dE = Σ_t onehot(token_t) ⊗ g_t: project the token's row and g_t
                p_in, p_out = self.projections[embed_name]
                rows = p_out[args[0]]  # (B, T, k)

                def grad_hook(grad: torch.Tensor) -> None:
                    results[embed_name] = torch.einsum("btn,btk,btl->bnkl", assign, rows, grad @ p_in)

                leaf.register_hook(grad_hook)
            return leaf

        def make_hook(name: str):
            p_in, p_out = self.projections[name]

            def forward_hook(module, args, output):
                x = args[0].detach()
                x_proj = x @ p_in  # (B, T, k)

                def grad_hook(grad: torch.Tensor) -> None:
                    g_proj = grad @ p_out  # (B, T, k)
                    results[name] = torch.einsum("btn,btk,btl->bnkl", assign, g_proj, x_proj)
                    for stats in statistics:
                        stats.observe(name, x, grad, mask)

                output.register_hook(grad_hook)

            return forward_hook

        try:
            for p in self.model.parameters():
                p.requires_grad_(False)
            handles.append(embed.register_forward_hook(make_leaf))
            handles += [mod.register_forward_hook(make_hook(name)) for name, mod in self.modules.items()
                        if name != embed_name]
            with torch.enable_grad():
                yield
        finally:
            for handle in handles:
                handle.remove()
            for p, flag in saved.items():
                p.requires_grad_(flag)
