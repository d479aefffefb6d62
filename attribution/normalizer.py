"""The Adam normalizer: divide each weight gradient by √v, Adam's second moment (TrackStar, LESS).

Dividing ``dW`` elementwise by ``√v`` does not commute with the factored projection,
so we use the Adafactor factorization of ``v`` (rank one: ``v ≈ r cᵀ / mean(v)`` with
``r``, ``c`` its row and column means). Then ``dW / √v ≈ diag(1/√r') dW diag(1/√c')``,
a scaling of the output gradients and input activations that folds into the
projection matrices. This is **exact when v is rank one** and an approximation
otherwise (the approximation bergson also makes).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from attribution.errors import ConfigError


class NormalizerMismatchError(ConfigError):
    """The optimizer state does not belong to this model (missing layer or other shape)."""


def factored_scales(v: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """``(in_scale, out_scale)`` with ``out_scale[i] · in_scale[j] = 1 / √(r_i c_j / mean(v))``."""
    total = v.mean().clamp_min(eps)
    row = v.mean(dim=1).clamp_min(eps)  # over inputs: one per output unit
    col = v.mean(dim=0).clamp_min(eps)  # over outputs: one per input unit
    root = total.sqrt().sqrt()
    return root / col.sqrt(), root / row.sqrt()


def adam_scales(path: str | Path, modules: dict[str, nn.Linear]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Factored √v scales per sketched module from an ``adam_state.safetensors`` file.

    Adam's bias correction ``v / (1 - β₂^step)`` is applied when the file records it.
    """
    path = Path(path)
    if not path.is_file():
        raise NormalizerMismatchError(f"{path}: optimizer state file not found")
    state = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    correction = 1.0
    if "step" in meta and "betas" in meta:
        beta2 = json.loads(meta["betas"])[1]
        correction = 1.0 - beta2 ** int(meta["step"])
    scales = {}
    for name, mod in modules.items():
        key = f"{name}.weight.exp_avg_sq"
        if key not in state:
            raise NormalizerMismatchError(f"{path}: no second moment for layer {name!r} (key {key}); "
                                          "the optimizer state belongs to another model")
        v = state[key].to(torch.float64)
        if tuple(v.shape) != tuple(mod.weight.shape):
            raise NormalizerMismatchError(
                f"{path}: second moment of {name!r} has shape {tuple(v.shape)} but the layer's weight is "
                f"{tuple(mod.weight.shape)}; the optimizer state belongs to another model shape"
            )
        scales[name] = factored_scales(v / correction)
    return scales
