"""Load a causal LM and its tokenizer from a hub id + revision or from a local directory.

One function serves ``EleutherAI/pythia-70m-deduped`` at ``revision="step3000"`` and the
demo's own checkpoints: a local model directory holds the final weights, earlier
checkpoints live under ``revisions/stepN/`` and ``training.json`` names the final step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from attribution.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

PYTHIA_70M = "EleutherAI/pythia-70m-deduped"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_local_revision(path: Path, revision: str | None) -> Path:
    """Map a revision name to the directory holding its weights inside a local model dir."""
    if revision in (None, "main", "final"):
        return path
    candidate = path / "revisions" / revision
    if candidate.is_dir():
        return candidate
    info = path / "training.json"
    if info.is_file() and json.loads(info.read_text()).get("final_revision") == revision:
        return path
    known = sorted(p.name for p in (path / "revisions").glob("*")) if (path / "revisions").is_dir() else []
    raise ModelLoadError(f"{path}: no revision {revision!r}; local revisions are {known} plus 'main'")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept a dtype or its name."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    """Accept 'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def load_model(
    name_or_path: str | Path,
    revision: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
) -> PreTrainedModel:
    """Load a causal LM in eval mode from a hub id (with optional revision) or a local directory."""
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    local = Path(name_or_path)
    if local.exists():
        source, hub_revision = str(resolve_local_revision(local, revision)), None
    else:
        source, hub_revision = str(name_or_path), revision
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=hub_revision, dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {name_or_path!r} at revision {revision!r}: {err}") from err
    log.info("loaded %s (revision %s) as %s on %s", name_or_path, revision, torch_dtype, torch_device)
    return model.to(torch_device).eval()


def load_tokenizer(name_or_path: str | Path, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved with a model (hub id or local directory)."""
    local = Path(name_or_path)
    try:
        if local.exists():
            return AutoTokenizer.from_pretrained(str(local))
        return AutoTokenizer.from_pretrained(str(name_or_path), revision=revision)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load tokenizer from {name_or_path!r}: {err}") from err
