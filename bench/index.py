"""Index-build throughput on the demo, and FAISS / DuckDB at scale on synthetic sketches.

    python -m bench.index [--demo demo-data] [--steps 0:100] [--sizes 100000,1000000] [--dims 256,1024] [--skip-demo]

Part 1 builds an index of the demo rows (fresh directory) and prints examples/s overall
and per stage (read, sketch, embed, write, merge), peak RSS and bytes per example on disk.
Part 2 times FAISS builds and k=10 searches (p50/p95, one query at a time) at each size,
the recall@10 of IVF-PQ candidates re-ranked exactly against exact search, and DuckDB
id-list look-ups of 10/100/1000 ids.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import faiss
import numpy as np

from attribution.batching import Batching
from attribution.stores import MemmapStore
from attribution.vectors import FaissStore, SearchSettings, brute_force_top, build_faiss_index


def demo_build(demo: Path, steps: str | None, k: int, window: int | None) -> None:
    from attribution.embeddings import TextEmbedder
    from indexer.config import IndexConfig
    from indexer.merge import merge
    from indexer.runner import Rank, ShardRunner, make_encoder

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "index"
        config = IndexConfig.create(str(demo / "model"), str(demo / "data" / "document"), steps=steps, k=k,
                                    window=window, shard_size=512)
        started = time.perf_counter()
        encoder = make_encoder(config)
        runner = ShardRunner(config, out, encoder, TextEmbedder(), Batching(rows=32))
        runner.prepare_workdir()
        load_seconds = time.perf_counter() - started
        runner.run(Rank())
        merge_start = time.perf_counter()
        build = merge(out, encoder, config)
        merge_seconds = time.perf_counter() - merge_start
        total = time.perf_counter() - started
        n = runner.examples_done
        disk = sum(p.stat().st_size for p in build.rglob("*") if p.is_file())
        work = sum(p.stat().st_size for p in (out / "work").rglob("*") if p.is_file())
        print(f"\n## Demo index build: {n} rows, k={k}, window={window}, steps={steps or 'all'}\n")
        print("| stage | seconds | examples/s |")
        print("|---|---|---|")
        for stage, seconds in {"load models": load_seconds, **runner.timings, "merge": merge_seconds}.items():
            rate = f"{n / seconds:.0f}" if stage not in ("load models",) and seconds > 0 else "-"
            print(f"| {stage} | {seconds:.1f} | {rate} |")
        print(f"| **overall** | {total:.1f} | {n / total:.0f} |")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\npeak RSS {rss:.0f} MB; published build {disk / n:.0f} bytes/example "
              f"({disk / 1e6:.1f} MB); raw shards {work / n:.0f} bytes/example ({work / 1e6:.1f} MB)")


CENTRES, CENTRE_SEED, NOISE = 1000, 0, 0.7
"""The synthetic set: unit vectors around ``CENTRES`` fixed random centres (drawn once per dimension from
``CENTRE_SEED``), each point its centre plus isotropic noise of ``NOISE`` per coordinate."""


def centres(dim: int) -> np.ndarray:
    return np.random.default_rng([CENTRE_SEED, dim]).standard_normal((CENTRES, dim)).astype(np.float32)


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around the fixed centres (sketches cluster; pure noise would flatter nobody); ``seed``
    draws their centres and noise, so every block of a large set and the queries come from the same clusters.
    (Until 2026-12-01 the centres were drawn from ``seed`` too: every 200,000-vector block had centres of its
    own and the queries centres of theirs, unrelated to the data — a far harder search than any real one.)"""
    rng = np.random.default_rng([seed, 1])
    x = centres(dim)[rng.integers(0, CENTRES, n)] + NOISE * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def synthetic_memmap(path: Path, n: int, dim: int, seed: int = 0, block: int = 200_000) -> np.ndarray:
    """``synthetic`` vectors written as a float16 memmap block by block, as the merge stores prepared vectors."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for start in range(0, n, block):
        out[start : start + block] = synthetic(min(block, n - start), dim, seed=seed + 1 + start // block)
    out.flush()
    return np.load(path, mmap_mode="r")


def exact_top10(vectors: np.ndarray, queries: np.ndarray, block: int = 200_000) -> np.ndarray:
    """Brute-force top 10 of every query over a memmap, block by block."""
    return brute_force_top(vectors, queries, 10, block)


MEMMAP = "memmap"
"""The --factories entry for headwater's --store memmap (no FAISS index)."""


def store_rows(vectors: np.ndarray, queries: np.ndarray, factories: list[str], work: Path,
               searches: tuple[tuple[int, int], ...] = ((16, 4), (64, 16), (64, 64)), label: str = "synthetic",
               ) -> list[dict]:
    """headwater's own store (``build_faiss_index`` + ``FaissStore``: candidates re-ranked exactly from the float16
    memmap) for each factory and search setting: build seconds, FAISS bytes per example, p50/p95, recall@10."""
    n, dim = vectors.shape
    truth = exact_top10(vectors, queries)
    rows = []
    for factory in factories:
        started = time.perf_counter()
        if factory == MEMMAP:  # --store memmap: no index, every row scored from the float16 file
            index, index_bytes = None, 0
        else:
            index, _ = build_faiss_index(vectors, factory, settings=SearchSettings(nprobe=16))
            faiss.write_index(index, str(work / "g.faiss"))
            index_bytes = (work / "g.faiss").stat().st_size
        build = time.perf_counter() - started
        for nprobe, rerank in searches if factory not in ("Flat", MEMMAP) else ((1, 1),):
            store = (MemmapStore(vectors) if index is None
                     else FaissStore(vectors, index, SearchSettings(nprobe=nprobe, rerank=rerank)))
            times, hits = [], []
            for q, gold in zip(queries, truth, strict=True):
                started = time.perf_counter()
                found = store.search(q, 10)
                times.append(time.perf_counter() - started)
                hits.append(len(set(found.rows.tolist()) & set(gold.tolist())) / 10)
            rows.append({"vectors": label, "n": n, "dim": dim, "factory": factory, "nprobe": nprobe,
                         "rerank": rerank, "build": build, "index_bytes": index_bytes / n, "vector_bytes": dim * 2,
                         "p50": float(np.percentile(times, 50) * 1e3), "p95": float(np.percentile(times, 95) * 1e3),
                         "recall": float(np.mean(hits))})
            print(rows[-1], flush=True, file=sys.stderr)
    return rows


def real_vectors(path: Path, queries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """An index's stored vectors (``vectors.npy``; windows count as vectors), its first ``queries`` held out as
    the queries and the rest searched: real sketches, whose neighbours cluster unlike the synthetic ones."""
    stored = np.load(path, mmap_mode="r")
    stored = stored.reshape(-1, stored.shape[-1])
    if len(stored) <= queries:
        raise SystemExit(f"{path}: {len(stored)} vectors, need more than {queries}")
    return stored[queries:], np.asarray(stored[:queries], dtype=np.float32)


def store_cases(real: list[Path], sizes: str, dims: str, work: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(label, vectors, queries) to bench, made one at a time (a 10^7 memmap is 5 GB): each index's real sketches
    followed by synthetic vectors of the same number and dimension, or else synthetic ones of every size × dim."""

    def synthetic_case(n: int, dim: int) -> tuple[str, np.ndarray, np.ndarray]:
        return "synthetic", synthetic_memmap(work / f"v-{n}-{dim}.npy", n, dim), synthetic(200, dim, seed=10_000)

    for path in real:
        vectors, queries = real_vectors(path)
        yield f"real ({path})", vectors, queries
        yield synthetic_case(*vectors.shape)
    if not real:
        for n in sizes.split(","):
            for dim in dims.split(","):
                yield synthetic_case(int(n), int(dim))


def duckdb_lookups(n: int) -> dict[int, float]:
    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "m.duckdb"))
        con.execute(f"CREATE TABLE examples AS SELECT i AS id, i // 1024 AS step, 'Pile-CC' AS pile_set_name, "
                    f"repeat('x', 200) AS text FROM range({n}) t(i)")
        con.execute("CREATE UNIQUE INDEX examples_id ON examples(id)")
        con.close()
        con = duckdb.connect(str(Path(tmp) / "m.duckdb"), read_only=True)
        result = {}
        for size in (10, 100, 1000):
            times = []
            for _ in range(20):
                ids = rng.integers(0, n, size).tolist()
                started = time.perf_counter()
                con.execute("SELECT * FROM examples WHERE id IN (SELECT UNNEST(?))", [ids]).fetchall()
                times.append(time.perf_counter() - started)
            result[size] = float(np.median(times) * 1e3)
        con.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--steps", default="0:100", help="demo step range to index (default 0:100)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dims", default="256", help="comma-separated vector dimensions")
    parser.add_argument("--factories", default="memmap;Flat;IVF{lists},PQ{m}x4fs;OPQ{m},IVF{lists},PQ{m}",
                        help="';'-separated FAISS factories ({lists}, {m}: chosen from n and dim), and memmap "
                             "(--store memmap: no index, every row scored from the float16 file)")
    parser.add_argument("--work", type=Path, default=None, help="where the synthetic memmaps go (default: /tmp)")
    parser.add_argument("--searches", default="16x4,16x100,64x100,16x400",
                        help="comma-separated NPROBExRERANK settings searched on each approximate index")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--real", type=Path, action="append", default=[],
                        help="an index's vectors.npy: real sketches (first 200 held out as queries) and a synthetic "
                             "set of the same size, instead of --sizes (repeatable)")
    args = parser.parse_args()
    if not args.skip_demo:
        demo_build(args.demo, args.steps, args.k, args.window or None)
    data = ("real sketches from an index, each beside synthetic vectors of its size" if args.real
            else "synthetic unit vectors around 1,000 fixed centres, queries drawn like the data")
    print(f"\n## The vector store at scale ({data}, float16 memmap, faiss {faiss.__version__}; headwater's "
          "FaissStore: candidates re-ranked exactly from the memmap)\n")
    print("| vectors | examples | dim | factory | nprobe | re-rank × | build s | FAISS bytes/example | + float16 "
          "vectors bytes/example | p50 / p95 ms | recall@10 vs exact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        searches = tuple(tuple(int(v) for v in pair.split("x")) for pair in args.searches.split(","))
        for label, vectors, queries in store_cases(args.real, args.sizes, args.dims, Path(tmp)):
            n, dim = vectors.shape
            factories = [f.format(lists=lists_for(n), m=pq_for(dim)) for f in args.factories.split(";")]
            for r in store_rows(vectors, queries, factories, Path(tmp), searches, label):
                print(f"| {r['vectors']} | {r['n']:,} | {r['dim']} | {r['factory']} | {r['nprobe']} | "
                      f"{r['rerank']} | {r['build']:.1f} | {r['index_bytes']:,.0f} | {r['vector_bytes']:,} | "
                      f"{r['p50']:.1f} / {r['p95']:.1f} | {r['recall']:.3f} |", flush=True)
    if args.real:
        return
    print("\n| examples | DuckDB 10 / 100 / 1000 ids ms |\n|---|---|")
    for n in (int(v) for v in args.sizes.split(",")):
        d = duckdb_lookups(n)
        print(f"| {n:,} | {d[10]:.1f} / {d[100]:.1f} / {d[1000]:.1f} |")


def lists_for(n: int) -> int:
    """IVF lists: about 4·√n, a power of two."""
    return 1 << max(4, int(np.log2(4 * np.sqrt(n))))


def pq_for(dim: int) -> int:
    """PQ sub-quantizers: dim / 4 (4 dimensions per byte of code), capped at 64."""
    return min(64, max(1, dim // 4))

if __name__ == "__main__":
    main()
