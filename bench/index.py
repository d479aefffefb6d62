"""Index-build throughput on the demo, and FAISS / DuckDB at scale on synthetic sketches.

    python -m bench.index [--demo demo-data] [--steps 0:100] [--sizes 100000,1000000] [--dim 256]

Part 1 builds an index of the demo rows (fresh directory) and prints examples/s overall
and per stage (read, sketch, embed, write, merge), peak RSS and bytes per example on disk.
Part 2 times FAISS builds and k=10 searches (p50/p95, one query at a time) at each size,
the recall@10 of IVF-PQ candidates re-ranked exactly against exact search, and DuckDB
id-list look-ups of 10/100/1000 ids.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import duckdb
import faiss
import numpy as np

from attribution.batching import Batching


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


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 1,000 random centres (sketches cluster; pure noise would flatter nobody)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def scale_row(n: int, dim: int) -> dict:
    x = synthetic(n, dim)
    queries = synthetic(200, dim, seed=1)
    started = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    flat_build = time.perf_counter() - started
    flat_p50, flat_p95 = latency(flat, queries, 10)
    _, truth = flat.search(queries, 10)
    lists = 256 if n <= 200_000 else 1024
    factory = f"IVF{lists},PQ{dim // 8}"
    started = time.perf_counter()
    ivf = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x[:: max(1, n // 50_000)])
    ivf.add(x)
    ivf_build = time.perf_counter() - started
    faiss.extract_index_ivf(ivf).nprobe = 16
    stored = x.astype(np.float16)
    times, hits = [], []
    for q, gold in zip(queries, truth, strict=True):
        started = time.perf_counter()
        _, cand = ivf.search(q[None], 100)
        cand = cand[0][cand[0] >= 0]
        exact = stored[cand].astype(np.float32) @ q
        top = cand[np.argsort(-exact)[:10]]
        times.append(time.perf_counter() - started)
        hits.append(len(set(top) & set(gold)) / 10)
    return {"n": n, "factory": factory, "flat_build": flat_build, "flat_p50": flat_p50, "flat_p95": flat_p95,
            "ivf_build": ivf_build, "ivf_p50": float(np.percentile(times, 50) * 1e3),
            "ivf_p95": float(np.percentile(times, 95) * 1e3), "recall": float(np.mean(hits)),
            "duckdb": duckdb_lookups(n)}


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
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    if not args.skip_demo:
        demo_build(args.demo, args.steps, args.k, args.window or None)
    rows = [scale_row(int(n), args.dim) for n in args.sizes.split(",")]
    print(f"\n## FAISS and DuckDB at scale (synthetic unit vectors, dim {args.dim}, faiss {faiss.__version__}, "
          f"duckdb {duckdb.__version__})\n")
    print("| examples | Flat build s | Flat p50/p95 ms | IVF-PQ | IVF build s | IVF+rerank p50/p95 ms | "
          "recall@10 vs exact | DuckDB 10/100/1000 ids ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["duckdb"]
        print(f"| {r['n']:,} | {r['flat_build']:.2f} | {r['flat_p50']:.1f}/{r['flat_p95']:.1f} | {r['factory']} | "
              f"{r['ivf_build']:.1f} | {r['ivf_p50']:.1f}/{r['ivf_p95']:.1f} | {r['recall']:.3f} | "
              f"{d[10]:.1f}/{d[100]:.1f}/{d[1000]:.1f} |")


if __name__ == "__main__":
    main()
