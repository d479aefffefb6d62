"""Seeded random projection matrices, regenerated from (seed, module name, side, shape).

They are never stored: the manifest records the seed and dimensions, and any machine
(CPU or GPU) regenerates bit-identical matrices, because they are drawn on the CPU in
float64 from a generator seeded by a hash of the key, then cast and moved.
"""

from __future__ import annotations

import hashlib
import math

import torch


def projection_seed(seed: int, module: str, side: str, dim: int, k: int) -> int:
    """A 63-bit generator seed derived from the full key."""
    digest = hashlib.sha256(f"{seed}|{module}|{side}|{dim}|{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def projection_matrix(
    seed: int,
    module: str,
    side: str,
    dim: int,
    k: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A ``(dim, k)`` Gaussian matrix with entries N(0, 1/k), so projected inner products are unbiased."""
    generator = torch.Generator(device="cpu").manual_seed(projection_seed(seed, module, side, dim, k))
    matrix = torch.randn(dim, k, generator=generator, dtype=torch.float64) / math.sqrt(k)
    return matrix.to(dtype=dtype, device=device)
