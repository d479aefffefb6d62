"""An approximate ``(G + λ)⁻¹`` over the model's whole flat parameter vector: K-FAC or EK-FAC blocks for its linear
layers, a diagonal for every other parameter — the preconditioner and warm start of the Newton step's solvers.

``G`` is the Gauss-Newton matrix of the mean per-row loss over a sample of training rows (:mod:`attribution.newton`);
for softmax cross-entropy it equals the Fisher, ``E_y[∇ℓ ∇ℓᵀ]`` with labels ``y`` drawn from the model's own
predictions, so one backward pass per row on sampled labels estimates it without bias.

Per ``nn.Linear`` (bias folded in as a last input column of ones), K-FAC's block is ``A ⊗ S``: ``A`` the mean of
``ā āᵀ`` over the sample's tokens, ``S`` the per-row mean of ``Σ_t g gᵀ`` (output gradients on sampled labels), so
``A ⊗ S`` carries ``G``'s scale. With their eigenvectors ``Q_A``, ``Q_S``, ``(A ⊗ S + λ)⁻¹ V = Q_S [(Q_Sᵀ V Q_A) /
(Λ + λ)] Q_Aᵀ`` with ``Λ = e_S e_Aᵀ``; EK-FAC (George et al. 2018) replaces ``Λ`` by the per-row mean of
``(Q_Sᵀ ∇_W ℓ_r Q_A)²``, the exact diagonal of the (sampled) Fisher in that basis — a second pass once the basis is
known. Parameters outside such a block (embeddings, layer norms, a layer with a side wider than ``limit`` such as
the vocabulary head at Pythia scale) get ``1 / (diag + λ)``, the diagonal being the per-row mean of squared sampled
gradients.

It is only a preconditioner: conjugate gradient still solves the exact damped Gauss-Newton system, so any
symmetric positive-definite approximation is correct; a good one only makes it converge in fewer products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attribution.batching import TokenBatch
from attribution.errors import ConfigError
from attribution.kinds import Factoring

FACTOR_LIMIT = 4096
"""Widest side (inputs + 1, or outputs) a layer may have and still get a Kronecker block; wider ones go diagonal."""

__all__ = ["FACTOR_LIMIT", "Factoring", "FactoredInverse", "LinearBlock"]


@dataclass
class LinearBlock:
    """One linear layer's factored block: its parameters' names and both sides' eigenvectors, and the block's
    eigenvalues ``(out, in + 1)`` (``(out, in)`` without a bias)."""

    weight: str
    bias: str | None
    q_in: torch.Tensor
    q_out: torch.Tensor
    eigenvalues: torch.Tensor


class _Recorder:
    """Forward hooks on the chosen linear layers: each layer's inputs (with a column of ones for a bias) and output
    gradients
    of the last pass, over the batch's real tokens."""

    def __init__(self, layers: dict[str, nn.Linear]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.handles = [layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach()
            self.inputs[name] = x if module.bias is None else torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)

            def keep(grad: torch.Tensor) -> None:
                self.grads[name] = grad.detach()

            output.register_hook(keep)
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _factored_layers(model: nn.Module, limit: int) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.in_features + 1 <= limit and m.out_features <= limit}


def _sampled_passes(model: nn.Module, sample: TokenBatch, recorder: _Recorder, seed: int):
    """For each row of ``sample``: its gradient (every parameter, by name) of the summed loss on labels drawn from the
    model's predictions; ``recorder`` holds that row's layer inputs and output gradients meanwhile. The same seed
    draws the same labels."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for row in range(len(sample)):
        keep = sample.attention_mask[row].bool()
        ids = sample.input_ids[row][keep][None]
        loss_mask = sample.loss_mask[row][keep][None, 1:]
        if ids.shape[1] < 2 or not loss_mask.any():
            continue
        with torch.enable_grad():
            logits = model(input_ids=ids).logits[:, :-1].float()
            probs = torch.softmax(logits.detach(), dim=-1).reshape(-1, logits.shape[-1]).cpu()
            labels = torch.multinomial(probs, 1, generator=generator).reshape(1, -1).to(ids.device)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
            loss = (nll * loss_mask.to(nll)).sum()
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        yield {name: (torch.zeros_like(p) if g is None else g.detach()) for (name, p), g in
               zip(params.items(), grads, strict=True)}


class FactoredInverse:
    """``v ↦ ≈ (G + λ)⁻¹ v`` over the flat parameter vector (``named_parameters`` order)."""

    def __init__(self, shapes: dict[str, torch.Size], blocks: list[LinearBlock], diagonal: dict[str, torch.Tensor],
                 damping: float, factoring: Factoring) -> None:
        self.shapes, self.blocks, self.diagonal = shapes, blocks, diagonal
        self.damping, self.factoring = damping, factoring

    @classmethod
    def fit(cls, model: nn.Module, sample: TokenBatch, damping: float, factoring: Factoring | str = Factoring.EKFAC,
            limit: int = FACTOR_LIMIT, seed: int = 0) -> FactoredInverse:
        """Fit on ``sample`` (one sampled-label backward pass per row; EK-FAC takes a second)."""
        factoring = Factoring(factoring)
        if factoring is Factoring.NONE:
            raise ConfigError("Factoring.NONE has no factored inverse to fit")
        if not math.isfinite(damping) or damping <= 0:
            raise ConfigError(f"the factored inverse needs a positive finite damping, got {damping}")
        params = dict(model.named_parameters())
        layers = _factored_layers(model, limit)
        recorder = _Recorder(layers)
        sums_a: dict[str, torch.Tensor] = {}
        sums_s: dict[str, torch.Tensor] = {}
        squares = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
        rows = tokens = 0
        try:
            for grads in _sampled_passes(model, sample, recorder, seed):
                rows += 1
                for name, g in grads.items():
                    squares[name] += g.double() ** 2
                for name in layers:
                    a = recorder.inputs[name].reshape(-1, recorder.inputs[name].shape[-1]).double()
                    s = recorder.grads[name].reshape(-1, recorder.grads[name].shape[-1]).double()
                    sums_a[name] = sums_a.get(name, 0) + a.T @ a
                    sums_s[name] = sums_s.get(name, 0) + s.T @ s
                tokens += int(next(iter(recorder.inputs.values())).shape[1]) if layers else 0
            if rows == 0:
                raise ConfigError("no sample row has two tokens and a loss: nothing to fit the factored inverse on")
            blocks = []
            for name, layer in layers.items():
                e_in, q_in = torch.linalg.eigh(sums_a[name] / tokens)
                e_out, q_out = torch.linalg.eigh(sums_s[name] / rows)
                bias = f"{name}.bias" if layer.bias is not None else None
                blocks.append(LinearBlock(f"{name}.weight", bias, q_in, q_out,
                                          torch.outer(e_out.clamp_min(0), e_in.clamp_min(0))))
            if factoring is Factoring.EKFAC and blocks:
                corrected = {b.weight: torch.zeros_like(b.eigenvalues) for b in blocks}
                for grads in _sampled_passes(model, sample, recorder, seed):
                    for block in blocks:
                        rotated = block.q_out.T @ _joined(grads, block).double() @ block.q_in
                        corrected[block.weight] += rotated ** 2
                for block in blocks:
                    block.eigenvalues = corrected[block.weight] / rows
        finally:
            recorder.close()
        covered = {b.weight for b in blocks} | {b.bias for b in blocks if b.bias}
        diagonal = {name: squares[name] / rows for name in params if name not in covered}
        return cls({name: p.shape for name, p in params.items()}, blocks, diagonal, damping, factoring)

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """``≈ (G + λ)⁻¹ vector`` (same dtype and device as ``vector``)."""
        total = sum(s.numel() for s in self.shapes.values())
        if vector.numel() != total:
            raise ConfigError(f"a vector of {vector.numel()} values does not match the model's {total} parameters")
        parts, start = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            parts[name] = vector[start : start + size].reshape(shape).double()
            start += size
        out = {}
        for name, diag in self.diagonal.items():
            out[name] = parts[name] / (diag.to(parts[name].device) + self.damping)
        for block in self.blocks:
            joined = _joined(parts, block)
            q_in, q_out = block.q_in.to(joined.device), block.q_out.to(joined.device)
            solved = q_out @ ((q_out.T @ joined @ q_in) / (block.eigenvalues.to(joined.device) + self.damping)) @ q_in.T
            if block.bias is None:
                out[block.weight] = solved
            else:
                out[block.weight], out[block.bias] = solved[:, :-1], solved[:, -1]
        return torch.cat([out[name].reshape(-1) for name in self.shapes]).to(vector.dtype)

    def describe(self) -> dict:
        return {"factoring": self.factoring.value, "blocks": len(self.blocks), "diagonal": len(self.diagonal),
                "damping": self.damping}


def _joined(tensors: dict[str, torch.Tensor], block: LinearBlock) -> torch.Tensor:
    """A layer's weight with its bias, if it has one, as a last column: ``(out, in [+ 1])``."""
    weight = tensors[block.weight]
    return weight if block.bias is None else torch.cat([weight, tensors[block.bias][:, None]], dim=1)
