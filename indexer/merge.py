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

import errno
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow.parquet as pq
import torch

from attribution.curvature import fit_curvature, is_prefit, load_statistics, new_statistics
from attribution.encoder import GradientEncoder
from attribution.errors import memory_guard
from attribution.lexical import Bm25sIndex, LexicalEngine, TantivyWriter
from attribution.stores import STORES
from indexer.config import IndexConfig
from indexer.errors import CorruptShardError, IndexWriteError
from indexer.manifest import (
    BM25_DIR,
    EMBEDDING_INDEX,
    EMBEDDINGS,
    METADATA_DB,
    VECTORS,
    Counts,
    curvature_file,
    statistics_file,
    write_manifest,
)
from indexer.parts import expected_shards, failed_parts, mark_part, part_dirs, unfinished_message
from indexer.runner import context_length, prefit_curvatures
from indexer.samples import RowSampler
from indexer.shards import load_shard_array, verify_shard
from indexer.workdir import (
    CONFIG,
    IDS,
    MERGE_LOCK,
    META,
    PARTS,
    PUBLISHED,
    SHARD_EMBEDDINGS,
    SHARDS,
    SKETCH_PREFIX,
    shard_name,
    sketch_file,
    work_dir,
)

log = logging.getLogger(__name__)


def list_shards(work: Path, expected: int | None) -> list[Path]:
    """Finished shards in order; refuses gaps (a rank that has not finished)."""
    found = sorted(p for p in work.glob(SHARDS) if p.is_dir())
    indices = [int(p.name.split("-")[1]) for p in found]
    want = list(range(expected)) if expected is not None else list(range(len(found)))
    missing = sorted(set(want) - set(indices))
    if missing:
        raise CorruptShardError(f"{work}: shards {missing[:10]} are missing or unfinished; run 'headwater index "
                                "build' again (with the same flags) until every rank has finished")
    if not found:
        hint = (f"; rerun the append that made it, or discard it with 'headwater index discard {work.parents[2]} "
                f"--part {work.name}'" if work.parent.name == PARTS else "; run 'headwater index build'")
        raise CorruptShardError(f"{work}: no finished shards to merge{hint}")
    return [work / shard_name(i) for i in want]


def fit_preconditioners(encoder: GradientEncoder, shards: list[Path], config: IndexConfig) -> None:
    """Fit each checkpoint's curvature on an evenly spaced sample of the stored raw sketches, or on the shards'
    sketch-pass statistics summed in shard order (and, for EK-FAC, a pass over rows re-read from the source)."""
    curvature = config.attribution.curvature
    if is_prefit(curvature):
        return  # fitted before the sketch pass (runner.prefit_curvatures): the shards were sketched with it
    rows = RowSampler(shards, config, encoder.tokenizer, context_length(encoder, config))
    for c, ckpt in enumerate(encoder.checkpoints):
        arrays = [load_shard_array(s, sketch_file(c)) for s in shards]
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


def allocated_memmap(path: Path, dtype: type, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` memmap whose blocks are allocated on disk now: writing a sparse memmap on a full disk kills the
    process with SIGBUS; allocating first makes that an ``OSError`` (ENOSPC) here."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    with path.open("r+b") as file:
        os.posix_fallocate(file.fileno(), 0, path.stat().st_size)
    return array


def write_vectors(encoder: GradientEncoder, shards: list[Path], build: Path) -> np.ndarray:
    """Prepared vectors of every example, in shard order, as a float16 memmap."""
    first = [load_shard_array(shards[0], sketch_file(c)) for c in range(len(encoder.checkpoints))]
    total = sum(load_shard_array(s, IDS).shape[0] for s in shards)
    shape = (total, *first[0].shape[1:-1], encoder.dim)
    vectors = allocated_memmap(build / VECTORS, np.float16, shape)
    row = 0
    for shard in shards:
        raws = [torch.from_numpy(np.array(load_shard_array(shard, sketch_file(c))))
                for c in range(len(encoder.checkpoints))]
        prepared = encoder.prepare_rows(raws).numpy()
        vectors[row : row + len(prepared)] = prepared
        row += len(prepared)
    vectors.flush()
    return np.load(build / VECTORS, mmap_mode="r")


def write_embeddings(shards: list[Path], build: Path) -> None:
    """The embedding index, shard by shard (the merge never holds every embedding at once); chunked rows
    ``(n, C, dim)`` also keep their float16 chunks in ``embeddings.npy``, for each row's best chunk."""
    first = load_shard_array(shards[0], SHARD_EMBEDDINGS)
    index = faiss.IndexFlatIP(first.shape[-1])
    stored = None
    if first.ndim == 3:
        total = sum(load_shard_array(s, IDS).shape[0] for s in shards)
        stored = allocated_memmap(build / EMBEDDINGS, np.float16, (total, *first.shape[1:]))
    row = 0
    for shard in shards:
        part = np.asarray(load_shard_array(shard, SHARD_EMBEDDINGS))
        index.add(np.ascontiguousarray(part.reshape(-1, part.shape[-1]), dtype=np.float32))
        if stored is not None:
            stored[row : row + len(part)] = part
        row += len(part)
    if stored is not None:
        stored.flush()
    faiss.write_index(index, str(build / EMBEDDING_INDEX))


def build_duckdb(shards: list[Path], path: Path) -> None:
    """The ``examples`` table, sorted by id, with its FAISS row ``position`` and an index on id."""
    files = [str(s / META) for s in shards]
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
    return pq.read_table(shard / META, columns=["text"])["text"].to_pylist()


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
    """Build and publish a new index build from the shards of every part; returns the build directory.

    Everything is written to ``OUT/builds/.tmp-ID`` and renamed into place once whole: a failed merge removes its
    temporary (a killed one's is removed by the next merge), so nothing half-written is ever published."""
    started = time.perf_counter()
    for part in failed_parts(out):
        raise CorruptShardError(f"{unfinished_message(out, part)}; nothing was merged")
    shards = [shard for part in part_dirs(out) for shard in list_shards(part, expected_shards(part))]
    records = [verify_shard(s) for s in shards]
    ids = np.concatenate([np.asarray(load_shard_array(s, IDS)) for s in shards])
    if len(np.unique(ids)) != len(ids) or not np.all(np.diff(ids) > 0):
        raise CorruptShardError(f"{out}: example ids are duplicated or out of order across shards; rebuild")
    windows = load_shard_array(shards[0], sketch_file(0)).shape[1] if config.attribution.window else 1
    storage = config.storage
    STORES[storage.store].check(storage.faiss_factory, encoder.dim, len(ids) * windows, storage.search())
    with merge_lock(out) as locked:
        if locked:  # without a lock another merge may own a temporary: leave them
            remove_stale_temporaries(out)
        needed = build_bytes(shards)
        check_free_space(out / "builds", needed)
        build_id = time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:8]}"  # unique even within a second
        tmp = out / "builds" / f".tmp-{build_id}"
        tmp.mkdir(parents=True)
        try:
            counts = write_build(tmp, out, encoder, config, shards, records, ids)
            counts.merge_seconds = round(time.perf_counter() - started, 2)
            write_manifest(tmp, config, encoder, counts)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if no_space(err):
                raise IndexWriteError(f"{out / 'builds'}: the disk filled up while merging ({err}); nothing was "
                                      f"published; free about {needed / 2**30:.2f} GiB there: {KEPT}") from err
            raise
        final = out / "builds" / build_id
        os.replace(tmp, final)
        publish(out, final)
        for part in part_dirs(out)[1:]:
            mark_part(part, finished=True)  # every shard of it is published (a Slurm array's append ends here)
    if counts.faiss_recall_at_10 is not None:
        log.info("FAISS %s recall@10 vs exact: %.3f (results are re-ranked exactly)",
                 config.storage.faiss_factory, counts.faiss_recall_at_10)
    return final


KEPT = "finished shards are kept: then run 'headwater index merge' (or the same build command) again"


def write_build(tmp: Path, out: Path, encoder: GradientEncoder, config: IndexConfig, shards: list[Path],
                records: list[dict], ids: np.ndarray) -> Counts:
    """Every file of a build but its manifest, into ``tmp``; returns the build's counts."""
    prefit_curvatures(encoder, config, out, fit=False)
    with memory_guard("fitting the curvature", f"lower --curvature-rows, --precondition-sample or --factor-limit "
                      f"(or --precondition none), or give the process more memory; {KEPT}"):
        fit_preconditioners(encoder, shards, config)
    for c, ckpt in enumerate(encoder.checkpoints):
        if ckpt.preconditioner is not None:
            ckpt.preconditioner.save(tmp / curvature_file(c))
    vectors = write_vectors(encoder, shards, tmp)
    storage = config.storage
    with memory_guard(f"building the {storage.store.value} vector store", f"lower --train-sample, use a compressed "
                      f"--faiss-factory (IVF…,PQ…) or --store memmap, or give the process more memory; {KEPT}"):
        recall = STORES[storage.store].build(vectors, storage.faiss_factory, storage.search(), tmp)
        write_embeddings(shards, tmp)
    with memory_guard("building the BM25 index", f"use --lexical tantivy (texts streamed to disk), or give the "
                      f"process more memory; {KEPT}"):
        write_lexical(shards, tmp / BM25_DIR, config.storage.lexical)
    with memory_guard("building the DuckDB metadata table", f"give the process more memory; {KEPT}"):
        build_duckdb(shards, tmp / METADATA_DB)
    return Counts(
        examples=int(len(ids)), shards=len(shards), first_id=int(ids[0]), last_id=int(ids[-1]),
        windows=int(vectors.shape[1]) if vectors.ndim == 3 else None, dim=int(vectors.shape[-1]),
        faiss_recall_at_10=recall, merge_seconds=0.0, shard_examples=[r["count"] for r in records],
        parts=[{"data": c.data, "steps": c.steps} for c in
               (IndexConfig.load(part / CONFIG) for part in part_dirs(out))])


def no_space(err: BaseException) -> bool:
    """True for a write that failed because the disk is full (an OSError, or a library's error wrapping one)."""
    return (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        (isinstance(err, Exception) and "No space left on device" in str(err))


NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)
"""What ``flock`` raises on filesystems without locks (e.g. Lustre mounted ``noflock``)."""


@contextmanager
def merge_lock(out: Path) -> Iterator[bool]:
    """Hold ``OUT/work/.merge.lock`` for the merge: one merge at a time per index, so every ``builds/.tmp-*`` found
    while holding it is a killed merge's. Yields False where the filesystem has no locks (the merge goes on)."""
    (out / "builds").mkdir(parents=True, exist_ok=True)
    with (work_dir(out) / MERGE_LOCK).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexWriteError(f"{out}: another merge of this index is running; wait for it to finish") from None
        except OSError as err:
            if err.errno not in NO_LOCKS:
                raise
            log.warning("%s: this filesystem has no file locks (%s); merging without one, and leaving any "
                        "builds/.tmp-* for you to remove once no merge runs", out, err.strerror)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remove_stale_temporaries(out: Path) -> None:
    """Remove the ``builds/.tmp-*`` folders that killed merges left (call while holding :func:`merge_lock`)."""
    for stale in sorted((out / "builds").glob(".tmp-*")):
        log.info("removing %s, left by a merge that did not finish", stale)
        shutil.rmtree(stale, ignore_errors=True)


BUILD_SIZE_FACTORS = {SKETCH_PREFIX: 1.5, SHARD_EMBEDDINGS: 3.0, META: 6.0}
"""Bytes a build writes per byte of the shards' files, at most: float16 vectors and an exact FAISS copy in float32
(1.5× the float32 sketches); the embedding index in float32 and its float16 chunks (3×); DuckDB and BM25 from the
compressed texts (measured 2-4× on the demo, with margin)."""
DUCKDB_BLOCKS = 2**20
"""DuckDB's file starts at about 0.8 MB whatever it holds (its blocks are 256 KiB)."""


def build_bytes(shards: list[Path]) -> int:
    """About how many bytes the merge of ``shards`` writes (see :data:`BUILD_SIZE_FACTORS`)."""
    total = float(DUCKDB_BLOCKS)
    for shard in shards:
        for file in shard.iterdir():
            factor = next((f for name, f in BUILD_SIZE_FACTORS.items() if file.name.startswith(name)), 0.0)
            total += file.stat().st_size * factor
    return int(total)


def check_free_space(directory: Path, needed: int) -> None:
    """Refuse to start a merge that would fill the disk (an IndexWriteError naming the space needed and free)."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise IndexWriteError(f"{directory}: merging needs about {needed / 2**20:,.1f} MiB and {free / 2**20:,.1f} "
                              f"MiB are free; nothing was written; free space there (or move the index): {KEPT}")


def publish(out: Path, build: Path) -> None:
    """Point ``OUT/current`` at ``build`` in one atomic rename; keep the previous build for open readers."""
    link = out / "current.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("builds") / build.name)
    os.replace(link, out / "current")
    shards = sorted(str(p.relative_to(out)) for part in part_dirs(out) for p in part.glob(SHARDS))
    (work_dir(out) / PUBLISHED).write_text(json.dumps({"build": build.name, "shards": shards}))


def prune_builds(out: Path, keep: int = 2) -> None:
    """Delete all but the newest ``keep`` builds (never the current one)."""
    current = (out / "current").resolve()
    builds = sorted((p for p in (out / "builds").iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: (p.stat().st_mtime_ns, p.name))
    for old in builds[:-keep]:
        if old.resolve() != current:
            shutil.rmtree(old)
