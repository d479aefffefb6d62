"""Checkpoint weights for TracIn-CP: the learning rate the optimizer used right after each revision.

A demo model records its schedule in ``training.json``; Pythia's is public (GPT-NeoX configs: linear
warm-up over 1 % of 143,000 steps, cosine decay to 10 % of the peak), so a hub id naming Pythia
gets that shape. Only ratios matter: scores are scaled, not the model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from pathlib import Path

from attribution.errors import ConfigError
from evaluation.training import TrainSettings, learning_rate

PYTHIA_STEPS = 143_000
PYTHIA_WARMUP = 1_430


def revision_step(revision: str | None, final_step: int) -> int:
    """The training step of ``stepN`` (``None``: the final model)."""
    if revision is None:
        return final_step
    found = re.fullmatch(r"step(\d+)", revision)
    if found is None:
        raise ConfigError(f"revision {revision!r} is not stepN")
    return int(found.group(1))


def schedule_of(model: str) -> TrainSettings:
    """The learning-rate schedule a model was trained with: its ``training.json`` (the demo), or Pythia's."""
    info = Path(model) / "training.json"
    if info.is_file():
        config = json.loads(info.read_text())["config"]
        return TrainSettings(**{f.name: config[f.name] for f in fields(TrainSettings)})
    if "pythia" in model.lower():
        return TrainSettings(hidden_size=0, num_layers=0, num_heads=0, vocab_size=0, seq_len=2048, batch_size=1024,
                             steps=PYTHIA_STEPS, learning_rate=1.0, warmup_steps=PYTHIA_WARMUP, weight_decay=0.0,
                             seed=0, bf16=False)
    raise ConfigError(f"no learning-rate schedule known for {model} (no training.json, not Pythia): give "
                      "--revision-weights as comma-separated numbers")


def learning_rate_after(model: str, revision: str | None) -> float:
    """The learning rate of the step right after ``revision`` (None: the last step) of the model's schedule."""
    settings = schedule_of(model)
    last = settings.steps - 1
    return learning_rate(min(revision_step(revision, last), last), settings)


def revision_weights(spec: str | None, model: str, revisions: tuple[str | None, ...]) -> tuple[float, ...] | None:
    """``--revision-weights``: None (equal), ``lr`` (the schedule's rate after each revision) or numbers."""
    if spec is None:
        return None
    if spec.strip() == "lr":
        return tuple(learning_rate_after(model, r) for r in revisions)
    try:
        weights = tuple(float(w) for w in spec.split(","))
    except ValueError as err:
        raise ConfigError(f"--revision-weights must be 'lr' or comma-separated numbers, got {spec!r}") from err
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"--revision-weights must be finite, got {spec!r}")
    return weights
