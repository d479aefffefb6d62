"""Index builds end to end: shards on every rank, then one merge that publishes the build.

With torchrun (a ``gloo``/``nccl`` process group), ranks meet at a barrier and rank 0
merges. Slurm array tasks cannot meet: each writes its shards and ``headwater index
merge DIR`` runs once afterwards (e.g. as a dependent job).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch.distributed as dist

from attribution.batching import DEFAULT_BATCHING, Batching
from attribution.embeddings import TextEmbedder
from attribution.errors import ConfigError
from attribution.vectors import new_faiss_index
from indexer.config import IndexConfig
from indexer.errors import CorruptShardError
from indexer.manifest import read_manifest
from indexer.merge import merge, prune_builds
from indexer.parts import part_dirs, plan_append
from indexer.runner import Progress, Rank, ShardRunner, make_encoder

log = logging.getLogger(__name__)


def process_group_ready() -> bool:
    """Join torchrun's process group when launched by torchrun; True when one exists."""
    if dist.is_available() and dist.is_initialized():
        return True
    if "MASTER_ADDR" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
        return True
    return False


def build_index(config: IndexConfig, out: Path, rank: Rank, *, overwrite: bool = False,
                batching: Batching = DEFAULT_BATCHING, device: str = "cpu", dtype: str = "float32",
                merge_after: bool = True, append: bool = False,
                progress: Progress | None = None) -> Path | None:
    """Compute this rank's shards; merge and publish when this process can (returns the build).

    With ``append``, ``config.data``/``steps`` name new data for an existing index with the same
    settings; it becomes a new part, merged after the data already indexed.
    """
    if append and overwrite:
        raise ConfigError("--append adds to an existing index and --overwrite replaces it: choose one")
    config = config.with_absolute_paths()
    encoder = make_encoder(config, device, dtype)
    if config.storage.faiss_factory != "Flat":
        new_faiss_index(config.storage.faiss_factory, encoder.dim)  # refused now, not after the sketch pass
    embedder = TextEmbedder(config.embedding_model, device=device)
    grouped = process_group_ready()
    if append:
        if rank.rank == 0:
            plan_append(out, config)
        if grouped:
            dist.barrier()
        work, offset = plan_append(out, config)
        runner = ShardRunner(config, out, encoder, embedder, batching, progress, work=work, id_offset=offset)
    else:
        runner = ShardRunner(config, out, encoder, embedder, batching, progress)
        if rank.rank == 0:
            runner.prepare_workdir(overwrite)
        if grouped:
            dist.barrier()
        if rank.rank != 0:
            runner.prepare_workdir(False)
    written = runner.run(rank)
    if grouped:
        written_anywhere = [None] * rank.world
        dist.all_gather_object(written_anywhere, written)
        written = [i for part in written_anywhere for i in part]
    if not merge_after or rank.rank != 0 or (rank.world > 1 and not grouped):
        log.info("rank %d/%d finished its shards; run 'headwater index merge %s' when all ranks are done",
                 rank.rank, rank.world, out)
        return None
    if not written and up_to_date(out):
        log.info("index is up to date: every shard was already built and merged into %s", out / "current")
        return (out / "current").resolve()
    base = IndexConfig.load(out / "work" / "config.json")
    build = merge(out, encoder, base)
    prune_builds(out)
    return build


def up_to_date(out: Path) -> bool:
    """True when ``current`` is the build merged from exactly the shards now in ``work/``, with the search settings
    ``work/config.json`` now records (a rerun may change those: ``SEARCH_SETTINGS``)."""
    record = out / "work" / "published.json"
    if not record.is_file() or not (out / "current").exists():
        return False
    published = json.loads(record.read_text())
    shards = sorted(str(p.relative_to(out)) for part in part_dirs(out) for p in part.glob("shard-*"))
    if published.get("build") != (out / "current").resolve().name or published.get("shards") != shards:
        return False
    return read_manifest(out).config.storage == IndexConfig.load(out / "work" / "config.json").storage


def merge_index(out: Path, device: str = "cpu") -> Path:
    """Merge the finished shards of ``out`` with the config they were built with."""
    saved = out / "work" / "config.json"
    if not saved.is_file():
        raise CorruptShardError(f"{out}: no index build to merge (no work/config.json); run 'headwater index build'")
    config = IndexConfig.load(saved)
    return merge(out, make_encoder(config, device), config)
