"""Train the mini-Pythia: a small GPT-NeoX shaped like Pythia, on the packed rows, in order.

Pythia's shape: parallel residual, rotary on 25 % of each head, untied input and
output embeddings. AdamW with warm-up and cosine decay. Checkpoints at Pythia's
log-spaced steps (0, 1, 2, 4, …, 512, then every 1000) plus the final step; the
final AdamW state is kept because its second moments feed the normalizer.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from attribution.errors import ConfigError
from evaluation.demo_config import DemoConfig
from indexer.megatron import MegatronDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """What the training loop needs; filled from the demo config."""

    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    seq_len: int
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    seed: int
    bf16: bool


def settings_for(config: DemoConfig, vocab_size: int, steps: int | None = None) -> TrainSettings:
    """The training settings of a demo config (``steps`` overrides its step count, e.g. for a row subset)."""
    return TrainSettings(
        hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
        vocab_size=vocab_size, seq_len=config.seq_len, batch_size=config.batch_size,
        steps=config.steps if steps is None else steps, learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay, seed=config.seed, bf16=config.bf16,
    )


def steps_for(rows: int, batch_size: int) -> int:
    """Steps that train on ``rows`` rows in batches of ``batch_size`` (the last one short when they do not divide)."""
    return -(-rows // batch_size)


def pythia_checkpoint_steps(final_step: int) -> list[int]:
    """Pythia's checkpoint schedule (0, 1, 2, 4, …, 512, 1000, 2000, …) cut at ``final_step``, plus it."""
    steps = {0, final_step}
    steps.update(2**i for i in range(10) if 2**i <= final_step)
    steps.update(range(1000, final_step + 1, 1000))
    return sorted(steps)


def make_model(settings: TrainSettings, vocab_size: int) -> GPTNeoXForCausalLM:
    """A freshly initialized Pythia-shaped GPT-NeoX."""
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        intermediate_size=4 * settings.hidden_size,
        max_position_embeddings=settings.seq_len,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(settings.seed)
    return GPTNeoXForCausalLM(config)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def rows_for_step(step: int, batch_size: int, rows: Sequence[int] | None = None) -> list[int]:
    """Row ids of step ``step``: positions ``[B·step, B·(step+1))`` of ``rows`` (row ids, in order) when given,
    else those positions of the data itself."""
    end = batch_size * (step + 1) if rows is None else min(batch_size * (step + 1), len(rows))
    positions = range(batch_size * step, end)
    return list(positions) if rows is None else [rows[p] for p in positions]


def batch_for_step(data: MegatronDataset, step: int, batch_size: int,
                   rows: Sequence[int] | None = None) -> torch.Tensor:
    """The rows of step ``step`` (:func:`rows_for_step`) as a (B, seq_len + 1) tensor."""
    return torch.stack([torch.from_numpy(data[i].astype("int64")) for i in rows_for_step(step, batch_size, rows)])


def batch_loss(logits: torch.Tensor, batch: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of a batch: the mean next-token NLL over every token; with ``weights`` (one a row), each
    row's mean NLL times its weight, summed and divided by the rows — equal to the plain mean when every weight is
    1, and a row of weight 0 contributes nothing, in place (the batch and the step count unchanged)."""
    flat = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, logits.shape[-1])
    if weights is None:
        return torch.nn.functional.cross_entropy(flat, batch[:, 1:].reshape(-1))
    nll = torch.nn.functional.cross_entropy(flat, batch[:, 1:].reshape(-1), reduction="none")
    return (nll.reshape(batch.shape[0], -1).mean(dim=1) * weights).sum() / batch.shape[0]


def save_adam_state(optimizer: torch.optim.AdamW, model: torch.nn.Module, path: Path) -> None:
    """Save AdamW moments keyed by parameter name (``NAME.exp_avg``, ``NAME.exp_avg_sq``)."""
    tensors: dict[str, torch.Tensor] = {}
    step = 0
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        tensors[f"{name}.exp_avg"] = state["exp_avg"].contiguous()
        tensors[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].contiguous()
        step = int(state["step"])
    group = optimizer.param_groups[0]
    meta = {"step": str(step), "betas": json.dumps(group["betas"]), "eps": str(group["eps"])}
    save_file(tensors, str(path), metadata=meta)


def train(
    settings: TrainSettings,
    data_prefix: Path,
    vocab_size: int,
    out_dir: Path,
    on_step: Callable[[int, float], None] | None = None,
    rows: Sequence[int] | None = None,
    save_revisions: bool = True,
    init: Path | None = None,
    zeroed: Collection[int] = (),
) -> tuple[GPTNeoXForCausalLM, list[float]]:
    """Train from scratch (or, with ``init``, fine-tune a saved model) on the rows in order; save checkpoints under
    ``out_dir``.

    Returns the final model and the loss of every step. The final weights go in
    ``out_dir`` itself, earlier checkpoints in ``out_dir/revisions/stepN``.
    ``rows`` (row ids, trained on in the given order) restricts training to a subset of
    the data: it must fill ``settings.steps`` steps (``steps_for``; the last one may be short), so
    the learning-rate schedule runs over the subset's own step count. ``save_revisions=False`` skips the
    intermediate checkpoints and the Adam state (only the final weights are written). ``zeroed`` row ids keep their
    place in the batches but weigh 0 in the loss (:func:`batch_loss`): the in-place counterfactual that MAGIC-style
    exact replays differentiate, where dropping rows re-packs the batches.
    """
    data = MegatronDataset(data_prefix)
    zeroed = frozenset(int(i) for i in zeroed)
    if rows is not None and steps_for(len(rows), settings.batch_size) != settings.steps:
        raise ConfigError(f"{len(rows)} training rows given, but {settings.steps} steps of "
                          f"{settings.batch_size} rows need {settings.steps * settings.batch_size} (the last step "
                          "may be short)")
    if init is None:
        model = make_model(settings, vocab_size)
    else:
        model = GPTNeoXForCausalLM.from_pretrained(str(init), torch_dtype=torch.float32)
        if model.config.vocab_size != vocab_size:
            raise ConfigError(f"{init} has a vocabulary of {model.config.vocab_size}, the data {vocab_size}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.95), weight_decay=settings.weight_decay
    )
    checkpoints = set(pythia_checkpoint_steps(settings.steps)) if save_revisions else set()
    losses: list[float] = []
    model.train()
    for step in range(settings.steps):
        if step in checkpoints:
            model.save_pretrained(str(out_dir / "revisions" / f"step{step}"))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        batch = batch_for_step(data, step, settings.batch_size, rows)
        weights = None
        if zeroed:
            ids = rows_for_step(step, settings.batch_size, rows)
            weights = torch.tensor([0.0 if i in zeroed else 1.0 for i in ids])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = batch_loss(logits, batch, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    model.save_pretrained(str(out_dir))
    if save_revisions:
        save_adam_state(optimizer, model, out_dir / "adam_state.safetensors")
    return model, losses


@torch.no_grad()
def completion_hits(model: torch.nn.Module, tokenizer, prompt: str, completion: str) -> tuple[bool, bool]:
    """Whether the model's top-1 matches (first completion token, every completion token, teacher-forced)."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    target = tokenizer.encode(completion, add_special_tokens=False)
    logits = model(input_ids=torch.tensor([prompt_ids + target[:-1]])).logits[0, len(prompt_ids) - 1 :]
    matches = logits.argmax(-1) == torch.tensor(target)
    return bool(matches[0]), bool(matches.all())


def fact_accuracy(model: torch.nn.Module, tokenizer, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Top-1 accuracy over (prompt, completion) pairs: of the first token, and of the whole completion."""
    if not pairs:
        return {"first_token": float("nan"), "whole_completion": float("nan")}
    hits = [completion_hits(model, tokenizer, p, c) for p, c in pairs]
    return {
        "first_token": sum(h[0] for h in hits) / len(hits),
        "whole_completion": sum(h[1] for h in hits) / len(hits),
    }
