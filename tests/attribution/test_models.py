"""Model loading: local checkpoints by revision, hub ids through the same function, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attribution.errors import ConfigError, ModelLoadError
from attribution.models import PYTHIA_70M, load_model, load_tokenizer


def test_dtype_and_eval_mode(tiny_demo: Path) -> None:
    model = load_model(tiny_demo / "model", dtype="float64")
    assert next(model.parameters()).dtype == torch.float64 and not model.training
    tokenizer = load_tokenizer(tiny_demo / "model")
    assert tokenizer.eos_token == "<|endoftext|>"


def test_unknown_local_revision_lists_the_known_ones(tiny_demo: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no revision 'step999'; local revisions are \['step0'"):
        load_model(tiny_demo / "model", revision="step999")


def test_hub_id_goes_through_the_same_function_and_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="EleutherAI/pythia-70m-deduped.*step3000"):
        load_model(PYTHIA_70M, revision="step3000")


def test_bad_dtype_and_device(tiny_demo: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        load_model(tiny_demo / "model", dtype="float8")
    with pytest.raises(ConfigError, match="unknown device"):
        load_model(tiny_demo / "model", device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_model(tiny_demo / "model", device="cuda")
