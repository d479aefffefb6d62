"""TracIn-CP checkpoint weights: the learning rate after each revision, from the demo or Pythia's schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attribution.errors import ConfigError
from evaluation.schedules import PYTHIA_WARMUP, learning_rate_after, revision_weights
from evaluation.training import TrainSettings, learning_rate


def test_demo_weights_are_its_learning_rates(tiny_demo: Path) -> None:
    model = str(tiny_demo / "model")
    config = json.loads((tiny_demo / "model" / "training.json").read_text())["config"]
    settings = TrainSettings(**{k: config[k] for k in TrainSettings.__dataclass_fields__})
    weights = revision_weights("lr", model, ("step2", "step8", None))
    assert weights == (learning_rate(2, settings), learning_rate(8, settings), learning_rate(settings.steps - 1,
                                                                                              settings))
    assert revision_weights(None, model, (None,)) is None
    assert revision_weights("1,2.5", model, ("step8", None)) == (1.0, 2.5)


def test_pythia_shape_warms_up_then_decays_to_a_tenth() -> None:
    model = "EleutherAI/pythia-70m-deduped"
    warm, peak, final = (learning_rate_after(model, f"step{s}") for s in (10, PYTHIA_WARMUP, 143000))
    assert warm < peak and peak == pytest.approx(1.0, rel=1e-3) and final == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize(("spec", "model", "revisions", "message"), [
    ("lr", "some/other-model", (None,), "no learning-rate schedule known"),
    ("lr", "EleutherAI/pythia-70m", ("main",), "is not stepN"),
    ("fast", "EleutherAI/pythia-70m", (None,), "'lr' or comma-separated numbers"),
    ("nan", "EleutherAI/pythia-70m", (None,), "must be finite"),
])
def test_bad_weights_are_clear_errors(spec: str, model: str, revisions: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        revision_weights(spec, model, revisions)
