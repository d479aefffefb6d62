"""Merge finished shards into a published index build.

Reads every shard of ``OUT/work`` in order (checking counts, checksums and that no
shard is missing), fits the preconditioner on an evenly spaced sample of the raw
sketches or on the shards' sketch-pass statistics summed in shard order (so the result
does not depend on how many ranks wrote the shards), writes prepared float16 vectors,
the FAISS gradient and embedding indices, the BM25 index and the DuckDB ``examples``
table into ``OUT/builds/ID``, then points ``OUT/current`` at it with one atomic rename.
A service holding the previous build keeps reading it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow.parquet as pq
import torch

from attribution.curvature import fit_curvature, is_prefit, load_statistics, new_statistics
from attribution.encoder import GradientEncoder
from attribution.lexical import Bm25sIndex, LexicalEngine, TantivyWriter
from attribution.vectors import FaissStore, build_faiss_index
from indexer.config import IndexConfig
from indexer.errors import CorruptShardError
from indexer.manifest import (
    BM25_DIR,
    EMBEDDING_INDEX,
    EMBEDDINGS,
    GRADIENT_INDEX,
    METADATA_DB,
    VECTORS,
    Counts,
    curvature_file,
    statistics_file,
    write_manifest,
)
from indexer.parts import expected_shards, part_dirs
from indexer.runner import context_length, prefit_curvatures
from indexer.samples import RowSampler
from indexer.shards import load_shard_array, shard_name, verify_shard

log = logging.getLogger(__name__)


def list_shards(work: Path, expected: int | None) -> list[Path]:
    """Finished shards in order; refuses gaps (a rank that has not finished)."""
    found = sorted(p for p in work.glob("shard-*") if p.is_dir())
    indices = [int(p.name.split("-")[1]) for p in found]
    want = list(range(expected)) if expected is not None else list(range(len(found)))
    missing = sorted(set(want) - set(indices))
    if missing:
        raise CorruptShardError(f"{work}: shards {missing[:10]} are missing or unfinished; run 'headwater index "
                                "build' again (with the same flags) until every rank has finished")
    if not found:
        raise CorruptShardError(f"{work}: no finished shards to merge")
    return [work / shard_name(i) for i in want]


def fit_preconditioners(encoder: GradientEncoder, shards: list[Path], config: IndexConfig) -> None:
    """Fit each checkpoint's curvature on an evenly spaced sample of the stored raw sketches, or on the shards'
    sketch-pass statistics summed in shard order (and, for EK-FAC, a pass over rows re-read from the source)."""
    curvature = config.attribution.curvature
    if is_prefit(curvature):
        return  # fitted before the sketch pass (runner.prefit_curvatures): the shards were sketched with it
    rows = RowSampler(shards, config, encoder.tokenizer, context_length(encoder, config))
    for c, ckpt in enumerate(encoder.checkpoints):
        arrays = [load_shard_array(s, f"sketch-{c}.npy") for s in shards]
        statistics = shard_statistics(shards, c, config)
        ckpt.preconditioner = fit_curvature(arrays, ckpt.sketcher.dim, curvature, sketcher=ckpt.sketcher,
                                            statistics=statistics, rows=rows)


def shard_statistics(shards: list[Path], checkpoint: int, config: IndexConfig):
    """The sum of every shard's stored statistics for the curvature of ``checkpoint`` (None if it needs none)."""
    curvature = config.attribution.curvature
    if new_statistics(curvature) is None:
        return None
    paths = [s.parent / statistics_file(int(s.name.split("-")[1]), checkpoint) for s in shards]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CorruptShardError(f"{missing[0]}: missing ({len(missing)} shards have no {curvature.kind.value} "
                                "statistics); delete those shards (or rebuild with --overwrite) and rerun the build")
    return load_statistics(curvature, paths)


def write_vectors(encoder: GradientEncoder, shards: list[Path], build: Path) -> np.ndarray:
    """Prepared vectors of every example, in shard order, as a float16 memmap."""
    first = [load_shard_array(shards[0], f"sketch-{c}.npy") for c in range(len(encoder.checkpoints))]
    total = sum(load_shard_array(s, "ids.npy").shape[0] for s in shards)
    shape = (total, *first[0].shape[1:-1], encoder.dim)
    vectors = np.lib.format.open_memmap(build / VECTORS, mode="w+", dtype=np.float16, shape=shape)
    row = 0
    for shard in shards:
        raws = [torch.from_numpy(np.array(load_shard_array(shard, f"sketch-{c}.npy")))
                for c in range(len(encoder.checkpoints))]
        prepared = encoder.prepare_rows(raws).numpy()
        vectors[row : row + len(prepared)] = prepared
        row += len(prepared)
    vectors.flush()
    return np.load(build / VECTORS, mmap_mode="r")


def write_embeddings(shards: list[Path], build: Path) -> None:
    """The embedding index, shard by shard (the merge never holds every embedding at once); chunked rows
    ``(n, C, dim)`` also keep their float16 chunks in ``embeddings.npy``, for each row's best chunk."""
    first = load_shard_array(shards[0], "embeddings.npy")
    index = faiss.IndexFlatIP(first.shape[-1])
    stored = None
    if first.ndim == 3:
        total = sum(load_shard_array(s, "ids.npy").shape[0] for s in shards)
        stored = np.lib.format.open_memmap(build / EMBEDDINGS, mode="w+", dtype=np.float16,
                                           shape=(total, *first.shape[1:]))
    row = 0
    for shard in shards:
        part = np.asarray(load_shard_array(shard, "embeddings.npy"))
        index.add(np.ascontiguousarray(part.reshape(-1, part.shape[-1]), dtype=np.float32))
        if stored is not None:
            stored[row : row + len(part)] = part
        row += len(part)
    if stored is not None:
        stored.flush()
    faiss.write_index(index, str(build / EMBEDDING_INDEX))


def build_duckdb(shards: list[Path], path: Path) -> None:
    """The ``examples`` table, sorted by id, with its FAISS row ``position`` and an index on id."""
    files = [str(s / "meta.parquet") for s in shards]
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE examples AS SELECT (row_number() OVER () - 1)::BIGINT AS position, * "
            "FROM read_parquet(?, union_by_name=true) ORDER BY id", [files])
        con.execute("CREATE UNIQUE INDEX examples_id ON examples(id)")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def shard_texts(shard: Path) -> list[str]:
    return pq.read_table(shard / "meta.parquet", columns=["text"])["text"].to_pylist()


def write_lexical(shards: list[Path], directory: Path, engine: LexicalEngine) -> None:
    """The BM25 index of every shard's texts: bm25s gathers them all in memory; tantivy streams them to disk one
    shard at a time (memory bounded by a shard and its writer's heap)."""
    if engine is LexicalEngine.TANTIVY:
        writer = TantivyWriter(directory)
        for shard in shards:
            writer.add(shard_texts(shard))
        writer.finish()
        return
    texts = [t for s in shards for t in shard_texts(s)]
    Bm25sIndex(texts).save(directory)


def merge(out: Path, encoder: GradientEncoder, config: IndexConfig) -> Path:
    """Build and publish a new index build from the shards of every part; returns the build directory."""
    started = time.perf_counter()
    shards = [shard for part in part_dirs(out) for shard in list_shards(part, expected_shards(part))]
    records = [verify_shard(s) for s in shards]
    ids = np.concatenate([np.asarray(load_shard_array(s, "ids.npy")) for s in shards])
    if len(np.unique(ids)) != len(ids) or not np.all(np.diff(ids) > 0):
        raise CorruptShardError(f"{out}: example ids are duplicated or out of order across shards; rebuild")
    build_id = time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:8]}"  # unique even within a second
    tmp = out / "builds" / f".tmp-{build_id}"
    tmp.mkdir(parents=True)
    prefit_curvatures(encoder, config, out, fit=False)
    fit_preconditioners(encoder, shards, config)
    for c, ckpt in enumerate(encoder.checkpoints):
        if ckpt.preconditioner is not None:
            ckpt.preconditioner.save(tmp / curvature_file(c))
    vectors = write_vectors(encoder, shards, tmp)
    gradient_index, recall = build_faiss_index(vectors, config.storage.faiss_factory,
                                              settings=config.storage.search())
    FaissStore(vectors, gradient_index).save_index(tmp / GRADIENT_INDEX)
    write_embeddings(shards, tmp)
    write_lexical(shards, tmp / BM25_DIR, config.storage.lexical)
    build_duckdb(shards, tmp / METADATA_DB)
    counts = Counts(
        examples=int(len(ids)), shards=len(shards), first_id=int(ids[0]), last_id=int(ids[-1]),
        windows=int(vectors.shape[1]) if vectors.ndim == 3 else None, dim=int(vectors.shape[-1]),
        faiss_recall_at_10=recall, merge_seconds=round(time.perf_counter() - started, 2),
        shard_examples=[r["count"] for r in records],
        parts=[{"data": c.data, "steps": c.steps} for c in
               (IndexConfig.load(part / "config.json") for part in part_dirs(out))])
    write_manifest(tmp, config, encoder, counts)
    final = out / "builds" / build_id
    os.replace(tmp, final)
    publish(out, final)
    if recall is not None:
        log.info("FAISS %s recall@10 vs exact: %.3f (results are re-ranked exactly)",
                 config.storage.faiss_factory, recall)
    return final


def publish(out: Path, build: Path) -> None:
    """Point ``OUT/current`` at ``build`` in one atomic rename; keep the previous build for open readers."""
    link = out / "current.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("builds") / build.name)
    os.replace(link, out / "current")
    shards = sorted(str(p.relative_to(out)) for part in part_dirs(out) for p in part.glob("shard-*"))
    (out / "work" / "published.json").write_text(json.dumps({"build": build.name, "shards": shards}))


def prune_builds(out: Path, keep: int = 2) -> None:
    """Delete all but the newest ``keep`` builds (never the current one)."""
    current = (out / "current").resolve()
    builds = sorted((p for p in (out / "builds").iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: (p.stat().st_mtime_ns, p.name))
    for old in builds[:-keep]:
        if old.resolve() != current:
            shutil.rmtree(old)
