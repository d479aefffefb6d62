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
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from attribution.batching import HEAD_CHUNK_VALUES, TokenBatch
from attribution.errors import ConfigError
from attribution.kinds import Fisher
from attribution.sketch import ModuleStatistics, Sketcher


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
                       seed: int = 0, chunk_values: int = HEAD_CHUNK_VALUES) -> None:
    """One forward and backward of the loss of labels sampled from the model's predictions at every target
    position; each row's labels depend only on its tokens and ``seed`` (not on the batch it is in). The output
    head runs on at most ``chunk_values`` logit values at a time (one row's positions at a time), so ``B × T × V``
    logits never exist at once — unless the head itself is observed: its hooks must see the whole batch."""
    model = sketcher.model
    device = next(model.parameters()).device
    batch = batch.right_aligned().to(device)
    linears = {name: mod for name, mod in sketcher.modules.items() if isinstance(mod, nn.Linear)}
    with _observed(model, linears, observers, batch.attention_mask):
        if model.get_output_embeddings() in linears.values():
            _backward_sampled_whole(model, batch, seed)
        else:
            _backward_sampled_chunks(model, batch, seed, chunk_values)


def _row_generator(ids: torch.Tensor, seed: int) -> torch.Generator:
    """The label sampler of one row: seeded by its tokens and ``seed`` only."""
    return torch.Generator().manual_seed(zlib.crc32(ids.cpu().numpy().astype(np.int64).tobytes()) ^ seed)


def _draw(logp: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per position from ``exp(logp)`` (positions × vocabulary), on ``logp``'s device."""
    probs = logp.detach().exp().cpu().to(torch.float64)
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logp.device)


def _backward_sampled_whole(model: nn.Module, batch: TokenBatch, seed: int) -> None:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits[:, :-1]
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    labels = torch.zeros(logp.shape[:2], dtype=torch.long, device=logp.device)
    for b in range(len(batch)):
        n = int(batch.attention_mask[b].sum())
        if n >= 2:
            labels[b, : n - 1] = _draw(logp[b, : n - 1], _row_generator(batch.input_ids[b, :n], seed))
    nll = -logp.gather(-1, labels[..., None])[..., 0]
    (nll * batch.loss_mask[:, 1:].to(nll)).sum().backward()


def _backward_sampled_chunks(model: nn.Module, batch: TokenBatch, seed: int, chunk_values: int) -> None:
    """The head on one row's positions at a time, at most ``chunk_values`` logit values each: each chunk's labels
    are drawn, its loss backpropagated to the final hidden states, and the body then backpropagates once (as
    ``attribution.batching.backward_summed_nll``). A row that fits one chunk draws exactly the labels of the
    whole-batch pass."""
    hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids).last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    leaf = hidden.detach().requires_grad_(True)
    weights = batch.loss_mask[:, 1:]
    step = max(1, chunk_values // head.out_features)
    for b in range(len(batch)):
        n = int(batch.attention_mask[b].sum())
        if n < 2:
            continue
        generator = _row_generator(batch.input_ids[b, :n], seed)
        for start in range(0, n - 1, step):
            stop = min(start + step, n - 1)
            logits = head(leaf[b, start:stop])
            logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            nll = -logp.gather(-1, _draw(logp, generator)[:, None])[:, 0]
            (nll * weights[b, start:stop].to(nll)).sum().backward()
    if leaf.grad is not None:
        hidden.backward(leaf.grad)


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
