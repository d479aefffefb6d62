"""The names of an index directory's working files, in one place (a published build's: :mod:`indexer.manifest`).

::

    OUT/
      work/                      the first part: its settings and shards
        config.json              the IndexConfig the shards were made with (checked on resume)
        published.json           the shards the current build merged
        .merge.lock              held by the one process merging
        curvature-prefit-C.safetensors   (manifest.prefit_file)
        shard-00000/             one shard: ids.npy, sketch-C.npy, embeddings.npy, meta.parquet, and done.json
                                 (its record and checksums, written last: a shard without it is unfinished)
        .tmp-shard-00000-…/      a shard being written
        parts/01/                an appended part: config.json, part.json (its id offset), shard-*/
      builds/ID/                 published builds
      current                    the served build
"""

from __future__ import annotations

from pathlib import Path

WORK = "work"
PARTS = "parts"
CONFIG = "config.json"
PART_RECORD = "part.json"
PUBLISHED = "published.json"
MERGE_LOCK = ".merge.lock"
SHARDS = "shard-*"
"""Glob of the shard directories of a part."""
TMP_SHARDS = ".tmp-shard-*"
DONE = "done.json"
IDS = "ids.npy"
SHARD_EMBEDDINGS = "embeddings.npy"
META = "meta.parquet"


def work_dir(out: Path) -> Path:
    """The first part's directory (and the build's working directory)."""
    return Path(out) / WORK


def parts_dir(out: Path) -> Path:
    """Where appended parts live."""
    return work_dir(out) / PARTS


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


SKETCH_PREFIX = "sketch-"
"""Prefix of a shard's sketch files (:func:`sketch_file`)."""


def sketch_file(checkpoint: int) -> str:
    """A shard's sketches of checkpoint ``checkpoint``."""
    return f"{SKETCH_PREFIX}{checkpoint}.npy"
