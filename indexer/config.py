"""The index build configuration: a typed record saved in the index and checked on reopen."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from attribution.config import AttributionConfig, CurvatureConfig, ScoringConfig, from_json, to_json
from attribution.embeddings import EMBED_CHUNK_TOKENS
from attribution.errors import ConfigError
from attribution.kinds import SketchConfig
from attribution.lexical import LexicalEngine
from attribution.stores import StoreKind, store_kind
from attribution.vectors import SearchSettings


class IndexMismatchError(ConfigError):
    """An existing index was built with other settings than the ones asked for now."""


@dataclass(frozen=True)
class StorageConfig:
    """How an index is stored."""

    store: StoreKind = StoreKind.FAISS
    """How the gradient vectors are searched: faiss (a FAISS index, --faiss-factory), memmap (no index: every row
    scored exactly from the memory-mapped vectors) or faiss-gpu (the FAISS index on the GPUs)."""
    faiss_factory: str = "Flat"
    """FAISS index_factory string, e.g. Flat or IVF64,PQ16; anything but Flat is re-ranked exactly from stored
    vectors."""
    shard_size: int = 1024
    """Examples per shard (the unit of work and of resume)."""
    nprobe: int = 16
    """IVF indices: lists visited per query."""
    train_sample: int = 65536
    """Approximate indices: vectors, evenly spaced, they train on."""
    rerank: int = 100
    """Approximate indices: candidates fetched per result (× windows), re-scored exactly from the stored vectors
    (×100: recall@10 1.000 at 10^6 in 1.1 ms where ×4 found 0.39 — bench/RESULTS.md; ×400 for 10^7 and more)."""
    lexical: LexicalEngine = LexicalEngine.BM25S
    """The BM25 index: bm25s (in memory; every text at once at merge, ~8.5 GiB at 10^6 rows of 300 words) or
    tantivy (on disk, texts streamed shard by shard: for 10^7 rows and more)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", store_kind(self.store))
        try:
            object.__setattr__(self, "lexical", LexicalEngine(self.lexical))
        except ValueError:
            raise ConfigError(f"lexical must be one of {[e.value for e in LexicalEngine]}, "
                              f"got {self.lexical!r}") from None
        for name in ("shard_size", "nprobe", "train_sample", "rerank"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def search(self) -> SearchSettings:
        """How the gradient index is trained and searched."""
        return SearchSettings(nprobe=self.nprobe, train_sample=self.train_sample, rerank=self.rerank)


FLAT_NAMES: dict[str, tuple[str, ...]] = {
    "k": ("attribution", "sketch", "k"),
    "seed": ("attribution", "sketch", "seed"),
    "groups": ("attribution", "sketch", "groups"),
    "curvature": ("attribution", "curvature", "kind"),
    "precondition": ("attribution", "curvature", "kind"),  # the old name
    "damping": ("attribution", "curvature", "damping"),
    "curvature_sample": ("attribution", "curvature", "sample"),
    "precondition_sample": ("attribution", "curvature", "sample"),  # the old name
    "fisher": ("attribution", "curvature", "fisher"),
    "curvature_rows": ("attribution", "curvature", "sample_rows"),
    "factor_limit": ("attribution", "curvature", "factor_limit"),
    "mode": ("attribution", "scoring", "mode"),
    "hybrid_fusion": ("attribution", "scoring", "hybrid_fusion"),
    "hybrid_candidates": ("attribution", "scoring", "hybrid_candidates"),
    "revisions": ("attribution", "revisions"),
    "window": ("attribution", "window"),
    "normalizer": ("attribution", "normalizer"),
    "revision_weights": ("attribution", "revision_weights"),
    "store": ("storage", "store"),
    "faiss_factory": ("storage", "faiss_factory"),
    "nprobe": ("storage", "nprobe"),
    "train_sample": ("storage", "train_sample"),
    "rerank": ("storage", "rerank"),
    "lexical": ("storage", "lexical"),
    "shard_size": ("storage", "shard_size"),
}
"""Flat setting names and where each lives in the record: the keyword form of :meth:`IndexConfig.create` (tests and
scripts) and the flat config.json of indices built before the nested record. (The CLI builds the nested record
itself, field by field.)"""


@dataclass(frozen=True)
class IndexConfig:
    """Everything that determines the contents of an index (saved as ``config.json``, checked on reopen)."""

    model: str
    """Hub id (e.g. EleutherAI/pythia-70m-deduped) or local model directory."""
    data: str
    """Data spec: Megatron prefix, Parquet file/directory/glob (Pythia's preshuffled train-N.parquet), jsonl(.zst) glob,
    txt glob, or 'hf:NAME' for a HF dataset."""
    tokenizer: str | None = None
    """Tokenizer dir or hub id (default: the model's)."""
    steps: str | None = None
    """Training-step range A:B of Megatron or Parquet data to index (default: every row, a partial last step
    included)."""
    batch_rows: int = 1024
    """Rows per training step of the Megatron data (Pythia: 1024); layout.json beside the data, when present, says."""
    rows: str | None = None
    """Row range A:B of Megatron or Parquet data to index, instead of --steps."""
    max_tokens: int | None = None
    """Truncate examples to this many tokens (default: the model's context)."""
    embedding_model: str | None = None
    """Sentence-transformers model dir or id (default: the packaged all-MiniLM-L6-v2)."""
    embedding_chunk_tokens: int = EMBED_CHUNK_TOKENS
    """Rows longer than this many tokens are embedded as equal chunks of at most this many; a row scores by its best
    chunk (MiniLM reads 256 word pieces)."""
    facts: str | None = None
    """Ground truth the index answers for: a facts.jsonl of planted facts (default: the built demo's, when the model
    and data are a demo's). The service's ablations and the evaluations check against it."""
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_rows <= 0:
            raise ConfigError(f"batch_rows must be positive, got {self.batch_rows}")
        if self.embedding_chunk_tokens <= 0:
            raise ConfigError(f"embedding_chunk_tokens must be positive, got {self.embedding_chunk_tokens}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ConfigError(f"max_tokens must be positive, got {self.max_tokens}")

    @classmethod
    def create(cls, model: str, data: str, **settings) -> IndexConfig:
        """A config from flat setting names (``k=8, window=16, curvature="none"``, see ``FLAT_NAMES``)."""
        nested: dict = {"model": model, "data": data}
        if "include_head" in settings:  # the flag and the flat config.json before parameter groups
            head = settings.pop("include_head")
            groups = tuple(settings.get("groups", ("blocks",)))
            settings["groups"] = (*groups, "head") if head and "head" not in groups else groups
        for name, value in settings.items():
            path = FLAT_NAMES.get(name, (name,))
            node = nested
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        attribution = nested.pop("attribution", {})
        sketch = SketchConfig(**attribution.pop("sketch", {}))
        curvature = CurvatureConfig(**attribution.pop("curvature", {}))
        scoring = ScoringConfig(**attribution.pop("scoring", {}))
        storage = StorageConfig(**nested.pop("storage", {}))
        return cls(**nested, attribution=AttributionConfig(sketch, curvature, scoring, **attribution), storage=storage)

    def to_json(self) -> dict:
        return to_json(self)

    def with_absolute_paths(self) -> IndexConfig:
        """Local model, tokenizer, normalizer, embedding-model and data paths made absolute (hub ids untouched),
        so the saved index opens from any working directory."""
        attribution = replace(self.attribution, normalizer=_absolute(self.attribution.normalizer))
        return replace(self, model=_absolute(self.model), tokenizer=_absolute(self.tokenizer),
                       attribution=attribution, embedding_model=_absolute(self.embedding_model),
                       facts=_absolute(self.facts),
                       data=self.data if self.data.startswith("hf:") else _absolute(self.data, prefix=True))

    @classmethod
    def from_json(cls, data: dict) -> IndexConfig:
        """The saved record; a flat ``config.json`` of an older index is read through ``FLAT_NAMES``."""
        if "attribution" in data:
            return from_json(cls, data)
        known = {f.name for f in fields(cls)} | set(FLAT_NAMES) | {"include_head"}
        flat = {k: v for k, v in data.items() if k in known}
        if flat.get("revisions") is not None:
            flat["revisions"] = tuple(flat["revisions"])
        return cls.create(**flat)

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


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for name, value in record.items():
        if isinstance(value, dict) and name != "extra":
            out.update(_flatten(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


def differing_fields(old: IndexConfig, new: IndexConfig) -> dict[str, tuple]:
    """Settings whose values differ, as ``{dotted.name: (old, new)}`` (paths compared as absolute paths)."""
    a, b = _flatten(old.with_absolute_paths().to_json()), _flatten(new.with_absolute_paths().to_json())
    names = [*a, *(name for name in b if name not in a)]
    return {name: (a.get(name), b.get(name)) for name in names if a.get(name) != b.get(name)}


SEARCH_SETTINGS = ("storage.nprobe", "storage.rerank", "facts")
"""Settings that change no shard (query-time search settings, the ground-truth file), so a resumed or appended build
may change them (the new values are recorded and served)."""


def check_same(old: IndexConfig, new: IndexConfig, where: Path, allow: tuple[str, ...] = ()) -> None:
    """Refuse to reuse an index built with other settings, naming every differing field."""
    diff = {k: v for k, v in differing_fields(old, new).items() if k not in allow}
    if diff:
        listed = "; ".join(f"{k}: index has {v[0]!r}, asked for {v[1]!r}" for k, v in diff.items())
        raise IndexMismatchError(f"{where} was built with other settings ({listed}); "
                                 "use another --out, or --overwrite to rebuild it")
