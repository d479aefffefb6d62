"""Load a causal LM and its tokenizer from a hub id + revision or from a local directory.

One function serves ``EleutherAI/pythia-70m-deduped`` at ``revision="step3000"`` and the
demo's own checkpoints: a local model directory holds the final weights, earlier
checkpoints live under ``revisions/stepN/`` and ``training.json`` names the final step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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


FINGERPRINT_VALUES = 1024
"""Values of each weight tensor, evenly spaced, that :func:`weights_fingerprint` hashes."""


def weights_fingerprint(model: torch.nn.Module, dtype: torch.dtype | None = None) -> str:
    """A short hash of the model's weights: every tensor's name and shape and ``FINGERPRINT_VALUES`` evenly spaced
    values in ``dtype`` (default: the model's own). Record the dtype with the hash and pass it when checking: a
    float32 load of a checkpoint, cast to the float16 or bfloat16 an index was built in, gives exactly the values that
    build saw. Other weights (another model, revision, fine-tune) change it; cheap at any size, it may miss an edit of
    a few single values."""
    dtype = dtype or weights_dtype(model)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        count = min(flat.numel(), FINGERPRINT_VALUES)
        # integer positions: float32 ones round past the end of tensors over 2^24 values (Pythia's embeddings)
        picks = torch.arange(count, dtype=torch.int64) * max(flat.numel() - 1, 0) // max(count - 1, 1)
        values = flat[picks.to(flat.device)].to("cpu")
        values = values.to(dtype) if values.is_floating_point() else values
        digest.update(f"{name}{tuple(tensor.shape)}{values.dtype}".encode())
        digest.update(values.view(INT_OF_WIDTH[values.element_size()]).numpy().tobytes())
    return digest.hexdigest()[:16]


INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
"""The integer dtype of each element size, to read any tensor's bytes (numpy has no bfloat16)."""


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def looks_local(name: str) -> bool:
    """True for a model argument meant as a path: absolute, ``./``/``~``-relative, deeper than ``org/name``, or
    inside a folder that exists here (``demo-data/modle``); hub ids are ``org/name`` or ``name``."""
    path = Path(os.path.expanduser(name))
    return (path.is_absolute() or name.startswith((".", "~")) or len(path.parts) > 2
            or (len(path.parts) == 2 and path.parent.is_dir()))


def missing_path_error(name: str, what: str) -> ModelLoadError:
    """A path that does not exist, said at once (rather than asking the hub for it), with what its folder holds."""
    parent = Path(os.path.expanduser(name)).parent
    nearby = sorted(p.name for p in parent.iterdir())[:12] if parent.is_dir() else []
    hint = f"; {parent} holds {nearby}" if nearby else ""
    return ModelLoadError(f"cannot load {what} {name!r}: no such directory{hint}")


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
    local = Path(os.path.expanduser(str(name_or_path)))
    if local.exists():
        source, hub_revision = str(resolve_local_revision(local, revision)), None
    elif looks_local(str(name_or_path)):
        raise missing_path_error(str(name_or_path), "model")
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
    local = Path(os.path.expanduser(str(name_or_path)))
    if not local.exists() and looks_local(str(name_or_path)):
        raise missing_path_error(str(name_or_path), "tokenizer")
    try:
        if local.exists():
            return AutoTokenizer.from_pretrained(str(local))
        return AutoTokenizer.from_pretrained(str(name_or_path), revision=revision)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load tokenizer from {name_or_path!r}: {err}") from err
