"""One shard of an index build: read examples, sketch, embed, and write them atomically.

A shard lives in ``work/shard-NNNNN/`` with:

- ``ids.npy`` (int64), ``sketch-C.npy`` (float32 raw sketches of checkpoint C: ``(n, D)``
  or ``(n, W, D)``), ``embeddings.npy`` (float16, unit norm), ``meta.parquet`` (metadata + text, the schema
  of :mod:`indexer.metadata`);
- ``done.json``: count, first/last id and each file's size and sha256, written last.

It is written under ``work/.tmp-shard-NNNNN/`` and renamed when complete, so a killed
build leaves either a whole shard or a temporary directory that the next run deletes.
Raw sketches are kept in float32 so that the preconditioner, fitted at merge, sees
exact values; prepared vectors are stored in float16 by the merge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.errors import CorruptShardError
from indexer.workdir import DONE, IDS, META, SHARD_EMBEDDINGS, shard_name, sketch_file


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class ShardContents:
    """What a shard holds once computed."""

    ids: np.ndarray
    sketches: list[np.ndarray]
    embeddings: np.ndarray
    meta: pa.Table


def write_shard(work: Path, index: int, contents: ShardContents) -> Path:
    """Write a shard under a temporary name and rename it into place."""
    final = work / shard_name(index)
    tmp = work / f".tmp-{shard_name(index)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_npy(tmp / IDS, contents.ids)
    for c, sketch in enumerate(contents.sketches):
        write_npy(tmp / sketch_file(c), sketch)
    write_npy(tmp / SHARD_EMBEDDINGS, contents.embeddings)
    pq.write_table(contents.meta, tmp / META)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
    done = {"shard": index, "count": int(len(contents.ids)), "files": files,
            "first_id": int(contents.ids[0]) if len(contents.ids) else None,
            "last_id": int(contents.ids[-1]) if len(contents.ids) else None}
    (tmp / DONE).write_text(json.dumps(done, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def shard_is_complete(path: Path) -> bool:
    return (path / DONE).is_file()


def verify_shard(path: Path, checksums: bool = True) -> dict:
    """Check a shard's files against its ``done.json``; return that record."""
    done_path = path / DONE
    if not done_path.is_file():
        raise CorruptShardError(f"{path}: incomplete shard (no done.json); rerun the build to redo it")
    done = json.loads(done_path.read_text())
    for name, info in done["files"].items():
        file = path / name
        if not file.is_file():
            raise CorruptShardError(f"{file}: missing; rerun the build to redo shard {done['shard']}")
        if file.stat().st_size != info["bytes"]:
            raise CorruptShardError(f"{file}: {file.stat().st_size} bytes, expected {info['bytes']} (truncated?)")
        if checksums and sha256_file(file) != info["sha256"]:
            raise CorruptShardError(f"{file}: checksum mismatch; the file is corrupt, delete {path} and rebuild")
    return done


def load_shard_array(path: Path, name: str) -> np.ndarray:
    """Memory-map one array of a shard."""
    try:
        return np.load(path / name, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CorruptShardError(f"{path / name}: unreadable ({err}); delete {path} and rebuild") from err
