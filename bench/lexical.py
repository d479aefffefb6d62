"""BM25 at scale, both lexical engines (bm25s in memory, tantivy on disk): index time, peak memory, bytes on disk
and query time.

    python -m bench.lexical [--sizes 100000,1000000] [--words 300] [--engines bm25s,tantivy]

Each engine and size in its own subprocess (peak RSS is its own): synthetic documents of ``--words`` words drawn
from a Zipf-distributed vocabulary of 200,000 words (real text is Zipfian; a Pythia row of 2,049 tokens is
~1,500 words, so the default 300 is a fifth of one), indexed as the merge does (bm25s: every text at once;
tantivy: streamed in blocks of 50,000, as shards are), reloaded as the service does, then 100 three-word
queries of mid-frequency words timed one at a time. Prints a markdown table; not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCABULARY = 200_000


def documents(n: int, words: int, seed: int = 0, block: int = 50_000):
    """``n`` documents of ``words`` Zipf-drawn words each, in blocks (never all strings at once beyond one block)."""
    rng = np.random.default_rng(seed)
    names = np.asarray([f"w{i}" for i in range(VOCABULARY)])
    for start in range(0, n, block):
        draws = np.minimum(rng.zipf(1.2, size=(min(block, n - start), words)), VOCABULARY) - 1
        yield [" ".join(names[row]) for row in draws]


def measure(n: int, words: int, engine: str) -> dict:
    from attribution.lexical import Bm25sIndex, TantivyWriter, load_lexical

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "bm25"
        started = time.perf_counter()
        if engine == "tantivy":
            writer = TantivyWriter(directory)
            for block in documents(n, words):
                writer.add(block)
            writer.finish()
        else:
            texts = [t for part in documents(n, words) for t in part]
            Bm25sIndex(texts).save(directory)
            del texts
        build = time.perf_counter() - started
        disk = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        loaded = load_lexical(directory)
        rng = np.random.default_rng(1)
        times = []
        for _ in range(100):
            prompt = " ".join(f"w{int(w)}" for w in rng.integers(50, 5000, 3))
            started = time.perf_counter()
            loaded.search(prompt, 10)
            times.append(time.perf_counter() - started)
    return {"n": n, "engine": engine, "build_s": build, "peak_gib": peak_build, "disk_bytes": disk,
            "p50_ms": float(np.percentile(times, 50) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--engines", default="bm25s,tantivy")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="bm25s", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.words, args.engine)))
        return
    print(f"\nBM25 over synthetic Zipf documents of {args.words} words (vocabulary {VOCABULARY:,})\n")
    print("| engine | documents | index s | peak RSS GiB (build) | on disk bytes/doc | query p50 / p95 ms |")
    print("|---|---|---|---|---|---|")
    for engine in (e.strip() for e in args.engines.split(",") if e.strip()):
        for n in (int(v) for v in args.sizes.split(",")):
            done = subprocess.run([sys.executable, "-m", "bench.lexical", "--child", str(n), "--words",
                                   str(args.words), "--engine", engine], capture_output=True, text=True)
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-1:] or ["?"]
                print(f"| {engine} | {n:,} | failed: {tail[0][:120]} | | | |", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {engine} | {n:,} | {r['build_s']:.0f} | {r['peak_gib']:.2f} | {r['disk_bytes'] / n:,.0f} | "
                  f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
