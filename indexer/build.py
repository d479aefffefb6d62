"""Index builds end to end: shards on every rank, then one merge that publishes the build.

With torchrun (a ``gloo``/``nccl`` process group), ranks meet at a barrier and rank 0
merges. Slurm array tasks cannot meet: each writes its shards and ``headwater index
merge DIR`` runs once afterwards (e.g. as a dependent job).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from attribution.batching import DEFAULT_BATCHING, Batching
from attribution.embeddings import TextEmbedder
from attribution.errors import ConfigError, memory_guard
from attribution.stores import STORES
from indexer.config import IndexConfig
from indexer.errors import CorruptShardError
from indexer.groundtruth import demo_facts_file
from indexer.manifest import read_manifest
from indexer.merge import merge, prune_builds
from indexer.parts import has_shards, indexed_examples, mark_part, part_dirs, plan_append
from indexer.runner import Progress, Rank, ShardRunner, make_encoder, window_count
from indexer.sources import open_source
from indexer.workdir import CONFIG, PUBLISHED, SHARDS, work_dir

log = logging.getLogger(__name__)


def process_group_ready() -> bool:
    """Join torchrun's process group when launched by torchrun; True when one exists."""
    if dist.is_available() and dist.is_initialized():
        return True
    if "MASTER_ADDR" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
        return True
    return False


def with_facts(config: IndexConfig) -> IndexConfig:
    """The config with its ground-truth file checked, or found (a built demo's ``facts.jsonl``) when none is given."""
    if config.facts is not None:
        if not Path(config.facts).is_file():
            raise ConfigError(f"--facts {config.facts}: no such file (give a facts.jsonl, e.g. the one "
                              "'headwater demo build' writes)")
        return config
    found = demo_facts_file(config.model, [config.data])
    return replace(config, facts=str(found)) if found is not None else config


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
    config = with_facts(config.with_absolute_paths())
    with memory_guard("loading the model", "load it with --dtype bfloat16, or give the process more memory"):
        encoder = make_encoder(config, device, dtype)
    check_factory_before_pass(config, encoder, out, append)
    with memory_guard("loading the embedding model", "give the process more memory (MiniLM needs about 0.3 GB)"):
        embedder = TextEmbedder(config.embedding_model, device=device)
    owned = not (dist.is_available() and dist.is_initialized())
    grouped = process_group_ready()
    try:
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
        written = run_shards(runner, rank, append)
        if grouped:
            written_anywhere = [None] * rank.world
            dist.all_gather_object(written_anywhere, written)
            written = [i for part in written_anywhere for i in part]
        if append and rank.rank == 0 and (rank.world == 1 or grouped):
            mark_part(runner.work, finished=True)
        elif append:  # one rank of several that cannot meet: its shards are done, the part is not yet whole
            mark_part(runner.work, finished=False)
        if not merge_after or rank.rank != 0 or (rank.world > 1 and not grouped):
            log.info("rank %d/%d finished its shards; run 'headwater index merge %s' when all ranks are done",
                     rank.rank, rank.world, out)
            return None
        if not written and up_to_date(out):
            log.info("index is up to date: every shard was already built and merged into %s", out / "current")
            return (out / "current").resolve()
        base = IndexConfig.load(work_dir(out) / CONFIG)
        build = merge(out, encoder, base)
        prune_builds(out)
        return build
    finally:
        if grouped and owned:  # a gloo group left to the interpreter's exit can abort it ("terminate called ...")
            dist.destroy_process_group()


def run_shards(runner: ShardRunner, rank: Rank, append: bool) -> list[int]:
    """This rank's shards; an append that fails before finishing any shard removes its part, so nothing is left
    that blocks the next append (a part with finished shards is kept: rerunning the command resumes it)."""
    try:
        return runner.run(rank)
    except Exception:
        if append and rank.world == 1 and not has_shards(runner.work):
            shutil.rmtree(runner.work, ignore_errors=True)
            log.error("the append failed before finishing a shard; its part %s was removed and the index is as "
                      "before", runner.work)
        elif append:
            mark_part(runner.work, finished=False, failed=True)
            log.error("the append failed; its finished shards are kept in %s: rerun the same command to resume, or "
                      "discard it with 'headwater index discard %s --part %s'", runner.work, runner.out,
                      runner.work.name)
        raise


def check_factory_before_pass(config: IndexConfig, encoder, out: Path, append: bool) -> None:
    """Refuse a FAISS factory that cannot index these vectors now, not after the sketch pass: one FAISS refuses
    outright, or one that cannot train on the rows the source holds (streams, whose size is unknown, are checked
    at the merge, before it writes anything)."""
    storage = config.storage
    store = STORES[storage.store]
    store.check(storage.faiss_factory, encoder.dim, None, storage.search())
    if storage.faiss_factory == "Flat":
        return
    rows = open_source(config.data, config.steps, config.batch_rows, config.rows).count
    if rows is None:
        return
    if append:
        rows += indexed_examples(out)
    store.check(storage.faiss_factory, encoder.dim, rows * (window_count(encoder, config) or 1), storage.search())


def up_to_date(out: Path) -> bool:
    """True when ``current`` is the build merged from exactly the shards now in ``work/``, with the search settings
    ``work/config.json`` now records (a rerun may change those: ``SEARCH_SETTINGS``)."""
    record = work_dir(out) / PUBLISHED
    if not record.is_file() or not (out / "current").exists():
        return False
    published = json.loads(record.read_text())
    shards = sorted(str(p.relative_to(out)) for part in part_dirs(out) for p in part.glob(SHARDS))
    if published.get("build") != (out / "current").resolve().name or published.get("shards") != shards:
        return False
    return read_manifest(out).config.storage == IndexConfig.load(work_dir(out) / CONFIG).storage


def merge_index(out: Path, device: str = "cpu") -> Path:
    """Merge the finished shards of ``out`` with the config they were built with."""
    saved = work_dir(out) / CONFIG
    if not saved.is_file():
        raise CorruptShardError(f"{out}: no index build to merge (no work/config.json); run 'headwater index build'")
    config = IndexConfig.load(saved)
    return merge(out, make_encoder(config, device), config)
