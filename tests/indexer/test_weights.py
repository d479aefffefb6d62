"""The index records a fingerprint of the model's weights; other weights are refused when serving and verifying."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attribution.errors import ModelLoadError
from attribution.models import load_model, load_tokenizer, weights_fingerprint
from headwater.cli import app
from indexer.build import build_index
from indexer.config import IndexConfig, IndexMismatchError
from indexer.manifest import read_manifest
from indexer.runner import Rank
from indexer.store import open_index

runner = CliRunner()


def test_fingerprint_follows_the_weights_not_the_dtype(tiny_demo: Path) -> None:
    model = load_model(tiny_demo / "model")
    same = weights_fingerprint(model)
    for dtype in (torch.bfloat16, torch.float16):  # an index built in half precision opens with a float32 model
        built = weights_fingerprint(load_model(tiny_demo / "model", dtype=str(dtype).removeprefix("torch.")))
        assert built == weights_fingerprint(model, dtype) != same
    revision = sorted((tiny_demo / "model" / "revisions").iterdir())[0].name
    assert weights_fingerprint(load_model(tiny_demo / "model", revision=revision)) != same
    with torch.no_grad():
        next(model.parameters()).mul_(1.001)  # a fine-tune moves every value a little
    assert weights_fingerprint(model) != same


def test_other_weights_are_refused_when_serving_and_verifying(tiny_demo: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_demo / "model", model)
    out = tmp_path / "index"
    config = IndexConfig.create(str(model), str(tiny_demo / "data" / "document"), k=4, shard_size=64, steps="0:8")
    build_index(config, out, Rank())
    assert read_manifest(out).weights is not None
    result = runner.invoke(app, ["index", "verify", str(out)])
    assert result.exit_code == 0 and "weights match" in result.output, result.output
    revision = sorted((model / "revisions").iterdir())[0]
    shutil.copy(revision / "model.safetensors", model / "model.safetensors")  # another model's weights copied over
    with pytest.raises(IndexMismatchError, match=r"model.safetensors\) are not those the index was built with"):
        open_index(out)
    result = runner.invoke(app, ["index", "verify", str(out)])
    assert result.exit_code == 1 and "are not those the index was built with" in result.output
    assert "model.safetensors" in result.output
    result = runner.invoke(app, ["index", "verify", str(out), "--no-weights"])
    assert result.exit_code == 0  # the files themselves are intact


def test_a_misspelled_model_directory_is_said_at_once(tiny_demo: Path) -> None:
    wrong = str(tiny_demo / "modle")
    with pytest.raises(ModelLoadError, match=r"'.*modle': no such directory; .* holds \[.*'model'"):
        load_model(wrong)
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_tokenizer(wrong)
    result = runner.invoke(app, ["index", "build", "--model", wrong, "--data", str(tiny_demo / "data" / "document"),
                                 "--out", str(tiny_demo.parent / "never")])
    assert result.exit_code == 2 and "no such directory" in result.output and "huggingface" not in result.output


def test_fingerprint_of_a_tensor_past_float32_positions() -> None:
    """Pythia's embeddings hold more than 2^24 values, where float32 positions round past the end."""
    big = torch.nn.Linear(1, 2**24 + 3, bias=False)
    with torch.no_grad():
        big.weight.zero_()
        big.weight[-1] = 1.0
    changed = weights_fingerprint(big)
    with torch.no_grad():
        big.weight[-1] = 0.0
    assert weights_fingerprint(big) != changed  # the last value is sampled
