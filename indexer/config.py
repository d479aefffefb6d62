"""The index build configuration: a typed record saved in the index and checked on reopen."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from attribution.errors import ConfigError
from attribution.preconditioner import PreconditionMode
from attribution.scoring import ScoreMode


class IndexMismatchError(ConfigError):
    """An existing index was built with other settings than the ones asked for now."""


@dataclass(frozen=True)
class IndexConfig:
    """Everything that determines the contents of an index (saved as ``config.json``)."""

    model: str
    """Hub id (e.g. EleutherAI/pythia-70m-deduped) or local model directory."""
    data: str
    """Data spec: Megatron prefix, jsonl(.zst) glob, txt glob, or 'hf:NAME' for a HF dataset."""
    revisions: tuple[str | None, ...] = (None,)
    """Checkpoints summed over (TracIn-CP); None is the final/main revision."""
    tokenizer: str | None = None
    """Tokenizer dir or hub id (default: the model's)."""
    steps: str | None = None
    """Training-step range A:B of Megatron data to index (default: all)."""
    batch_rows: int = 1024
    """Rows per training step of the Megatron data (Pythia: 1024); read from layout.json if present."""
    k: int = 16
    seed: int = 0
    include_head: bool = False
    window: int | None = None
    mode: str = ScoreMode.COSINE.value
    precondition: str = PreconditionMode.INVERSE_SQRT.value
    damping: float = 0.1
    normalizer: str | None = None
    """Path of an Adam state (adam_state.safetensors) to normalize gradients by, or None."""
    embedding_model: str | None = None
    """Sentence-transformers model dir or id (default: the packaged all-MiniLM-L6-v2)."""
    faiss_factory: str = "Flat"
    """FAISS index_factory string; anything but Flat is re-ranked exactly from stored vectors."""
    shard_size: int = 1024
    max_tokens: int | None = None
    """Truncate text examples to this many tokens (default: the model's context)."""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("k", "shard_size", "batch_rows"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.window is not None and self.window <= 0:
            raise ConfigError(f"window must be positive, got {self.window}")
        if self.damping <= 0:
            raise ConfigError(f"damping must be positive, got {self.damping}")
        try:
            ScoreMode(self.mode)
            PreconditionMode(self.precondition)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        object.__setattr__(self, "revisions", tuple(self.revisions))

    def to_json(self) -> dict:
        return asdict(self)

    def with_absolute_paths(self) -> IndexConfig:
        """Local model, tokenizer, normalizer, embedding-model and data paths made absolute (hub ids untouched),
        so the saved index opens from any working directory."""
        return replace(self, model=_absolute(self.model), tokenizer=_absolute(self.tokenizer),
                       normalizer=_absolute(self.normalizer), embedding_model=_absolute(self.embedding_model),
                       data=self.data if self.data.startswith("hf:") else _absolute(self.data, prefix=True))

    @classmethod
    def from_json(cls, data: dict) -> IndexConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> IndexConfig:
        return cls.from_json(json.loads(path.read_text()))


def _absolute(value: str | None, prefix: bool = False) -> str | None:
    """``value`` as an absolute path when it names something local (a path, or a data prefix/glob whose folder
    exists), else unchanged (a hub id such as EleutherAI/pythia-70m-deduped)."""
    if value is None or Path(value).is_absolute():
        return value
    path = Path(value)
    if path.exists() or (prefix and path.parent != Path(".") and path.parent.is_dir()):
        return str(path.absolute())
    return value


def differing_fields(old: IndexConfig, new: IndexConfig) -> dict[str, tuple]:
    """Fields whose values differ, as ``{name: (old, new)}`` (paths compared as absolute paths)."""
    a, b = old.with_absolute_paths().to_json(), new.with_absolute_paths().to_json()
    return {name: (a[name], b[name]) for name in a if a[name] != b[name]}


def check_same(old: IndexConfig, new: IndexConfig, where: Path, allow: tuple[str, ...] = ()) -> None:
    """Refuse to reuse an index built with other settings, naming every differing field."""
    diff = {k: v for k, v in differing_fields(old, new).items() if k not in allow}
    if diff:
        listed = "; ".join(f"{k}: index has {v[0]!r}, asked for {v[1]!r}" for k, v in diff.items())
        raise IndexMismatchError(f"{where} was built with other settings ({listed}); "
                                 "use another --out, or --overwrite to rebuild it")
