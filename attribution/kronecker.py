"""Kronecker factors of each module's Fisher: ``A = E[x xᵀ]`` of its inputs, ``G = E[g gᵀ]`` of its output gradients.

K-FAC approximates a ``Linear``'s Fisher block by ``A ⊗ G`` (Martens & Grosse 2015). The factors come
from the sketch pass itself through the ``ModuleStatistics`` hook (the empirical Fisher: gradients of the
training labels' loss, at no extra forward or backward), or from a pass of their own whose labels are
sampled from the model's predictions (the "true" Fisher, one more forward and backward per batch).
They are kept as sums with a token count, so the statistics of shards and ranks add up exactly to those of
the whole data, and are stored as safetensors.

A side wider than ``limit`` (the output head's vocabulary side at Pythia scale: 50,304² float64 is 20 GB)
gets no factor: that side stays unpreconditioned.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from attribution.batching import TokenBatch
from attribution.errors import ConfigError
from attribution.sketch import ModuleStatistics, Sketcher


class Fisher(StrEnum):
    """Which labels the Fisher's gradients are taken with."""

    EMPIRICAL = "empirical"
    """The training labels (the sketch pass's own loss)."""
    SAMPLED = "sampled"
    """Labels drawn from the model's own predictive distribution (the true Fisher), one extra pass."""


class KroneckerStatistics:
    """Per module: ``Σ x xᵀ`` (key ``a``), ``Σ g gᵀ`` (key ``g``) over real tokens, and the token count."""

    def __init__(self, fisher: Fisher | str = Fisher.EMPIRICAL, limit: int | None = None, seed: int = 0) -> None:
        self.fisher = Fisher(fisher)
        self.limit = limit
        self.seed = seed
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.tokens: dict[str, int] = {}

    def observe(self, name: str, inputs: torch.Tensor, output_grads: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one batch of module ``name`` (the ``ModuleStatistics`` hook)."""
        keep = mask.to(torch.bool)
        sums = self.sums.setdefault(name, {})
        for side, values in (("a", inputs), ("g", output_grads)):
            if self.limit is not None and values.shape[-1] > self.limit:
                continue
            rows = values[keep]  # (real tokens, d)
            outer = (rows.T @ rows).to(torch.float64)
            sums[side] = sums[side] + outer if side in sums else outer
        self.tokens[name] = self.tokens.get(name, 0) + int(keep.sum())

    def sketch_with(self, sketcher: Sketcher, batch: TokenBatch, window: int | None = None) -> torch.Tensor:
        """``sketcher.sketch(batch, window)``, gathering this batch's statistics along the way."""
        if self.fisher is Fisher.EMPIRICAL:
            return sketcher.sketch(batch, window, statistics=[self])
        sketches = sketcher.sketch(batch, window)
        sampled_label_pass(sketcher, batch, [self], self.seed)
        return sketches

    def merge(self, other: KroneckerStatistics) -> None:
        """Add another part's statistics (a shard's, a rank's) to these."""
        if (other.fisher, other.limit) != (self.fisher, self.limit):
            raise ConfigError(f"cannot add Kronecker statistics of fisher={other.fisher.value}, limit={other.limit} "
                              f"to fisher={self.fisher.value}, limit={self.limit}; rebuild with one setting")
        for name, sides in other.sums.items():
            mine = self.sums.setdefault(name, {})
            for side, total in sides.items():
                mine[side] = mine[side] + total.to(mine[side]) if side in mine else total.clone()
            self.tokens[name] = self.tokens.get(name, 0) + other.tokens[name]

    def factors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The means ``A`` and ``G`` per module (float64, CPU); a side left out by ``limit`` is absent."""
        if not self.tokens or not any(self.tokens.values()):
            raise ConfigError("no Kronecker statistics were gathered (no real tokens seen)")
        return {name: {side: total.cpu() / self.tokens[name] for side, total in sides.items()}
                for name, sides in self.sums.items() if self.tokens[name]}

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """Write the sums (float32 by default: half the bytes, rounding far below the sampling noise) and counts."""
        tensors = {f"{side}.{name}": total.to(dtype).cpu().contiguous()
                   for name, sides in self.sums.items() for side, total in sides.items()}
        meta = {"fisher": self.fisher.value, "limit": json.dumps(self.limit), "seed": str(self.seed),
                "tokens": json.dumps(self.tokens)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> KroneckerStatistics:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        stats = cls(meta["fisher"], json.loads(meta["limit"]), int(meta["seed"]))
        stats.tokens = json.loads(meta["tokens"])
        for key, total in load_file(str(path)).items():
            side, name = key.split(".", 1)
            stats.sums.setdefault(name, {})[side] = total.to(torch.float64)
        return stats


def observe_pass(sketcher: Sketcher, batch: TokenBatch, observers: Sequence[ModuleStatistics],
                 fisher: Fisher | str = Fisher.EMPIRICAL, seed: int = 0) -> None:
    """Show ``observers`` every sketched ``Linear``'s inputs and output gradients of one batch, under the
    empirical (the sketch pass) or the sampled-label Fisher."""
    if Fisher(fisher) is Fisher.EMPIRICAL:
        sketcher.sketch(batch, statistics=observers)
    else:
        sampled_label_pass(sketcher, batch, observers, seed)


def sampled_label_pass(sketcher: Sketcher, batch: TokenBatch, observers: Sequence[ModuleStatistics],
                       seed: int = 0) -> None:
    """One forward and backward of the loss of labels sampled from the model's predictions at every target
    position; each row's labels depend only on its tokens and ``seed`` (not on the batch it is in)."""
    model = sketcher.model
    device = next(model.parameters()).device
    batch = batch.right_aligned().to(device)
    linears = {name: mod for name, mod in sketcher.modules.items() if isinstance(mod, nn.Linear)}
    with _observed(model, linears, observers, batch.attention_mask):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits[:, :-1]
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        labels = _sampled_labels(logp.detach(), batch, seed)
        nll = -logp.gather(-1, labels[..., None])[..., 0]
        (nll * batch.loss_mask[:, 1:].to(nll)).sum().backward()


def _sampled_labels(logp: torch.Tensor, batch: TokenBatch, seed: int) -> torch.Tensor:
    labels = torch.zeros(logp.shape[:2], dtype=torch.long)
    probs = logp.exp().cpu().to(torch.float64)
    for b in range(len(batch)):
        n = int(batch.attention_mask[b].sum())
        if n < 2:
            continue
        ids = batch.input_ids[b, :n].cpu().numpy().astype(np.int64)
        generator = torch.Generator().manual_seed(zlib.crc32(ids.tobytes()) ^ seed)
        labels[b, : n - 1] = torch.multinomial(probs[b, : n - 1], 1, generator=generator)[:, 0]
    return labels.to(logp.device)


@contextlib.contextmanager
def _observed(model: nn.Module, linears: dict[str, nn.Linear], observers: Sequence[ModuleStatistics],
              mask: torch.Tensor) -> Iterator[None]:
    """Hooks that show ``observers`` each module's inputs and output gradients; no parameter gets a ``.grad``."""
    saved = {p: p.requires_grad for p in model.parameters()}

    def make_leaf(module, args, output):
        return output.detach().requires_grad_(True)

    def make_hook(name: str):
        def forward_hook(module, args, output):
            x = args[0].detach()

            def grad_hook(grad: torch.Tensor) -> None:
                for observer in observers:
                    observer.observe(name, x, grad, mask)

            output.register_hook(grad_hook)

        return forward_hook

    handles = [model.get_input_embeddings().register_forward_hook(make_leaf)]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        handles += [mod.register_forward_hook(make_hook(name)) for name, mod in linears.items()]
        with torch.enable_grad():
            yield
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
