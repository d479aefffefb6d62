"""Latency and throughput of ``POST /v1/attribute`` per method, on a real uvicorn server.

    python -m bench.service [--index demo-data/index] [--requests 40] [--concurrency 1,8] [--compare-batching]

Starts the server on a free local port, sends a bounded number of planted-fact queries
per (method, concurrency), and prints p50/p95/p99 latency, requests/s and the server's
own search time (the rest is HTTP, JSON and span formatting).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from attribution.retrievers import Method

METHODS = tuple(Method)


def server_env(index: Path, clients: int, batch_window_ms: float | None = None) -> dict[str, str]:
    """The server's environment. Every simulated user sends from 127.0.0.1, which the service's per-client limit
    (``max_model_queries_per_client``, 2 by default) would meet with 429s past two at once; the bench's users stand
    for different clients, so the limit is raised to their number."""
    return {**os.environ, "HEADWATER_INDEX": str(index), "HF_HUB_OFFLINE": "1",
            "HEADWATER_MAX_MODEL_QUERIES_PER_CLIENT": str(max(clients, 1)),
            **({"HEADWATER_BATCH_WINDOW_MS": str(batch_window_ms)} if batch_window_ms is not None else {})}


def start_server(index: Path, clients: int, batch_window_ms: float | None = None) -> tuple[subprocess.Popen, str]:
    """A uvicorn server of ``index`` on a free local port, ready; ``clients``: the most requests sent at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = server_env(index, clients, batch_window_ms)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.main:app", "--port", str(port),
                             "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).json().get("ready"):
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready")


def queries(demo: Path, n: int) -> list[dict]:
    facts = [json.loads(line) for line in (demo / "facts.jsonl").read_text().splitlines()]
    return [{"prompt": f["prompt"], "completion": f["completion"], "k": 10} for f in facts[:n]]


def measure(url: str, bodies: list[dict], method: str, concurrency: int) -> dict:
    """Send ``bodies`` from ``concurrency`` threads, each over its own kept-alive connection (a fresh
    ``httpx.Client`` per request builds an SSL context: tens of ms of CPU that the server then competes with)."""
    local = threading.local()
    clients: list[httpx.Client] = []

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=300)
            clients.append(local.client)
        return local.client

    def one(body: dict) -> tuple[float, float]:
        started = time.perf_counter()
        response = client().post("/v1/attribute", json={**body, "method": method})
        response.raise_for_status()
        return time.perf_counter() - started, response.json()["timings_ms"]["search"]

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, bodies[:concurrency]))  # warm-up: every thread opens its connection
            started = time.perf_counter()
            results = list(pool.map(one, bodies))
            wall = time.perf_counter() - started
    finally:
        for c in clients:
            c.close()
    latency = np.array([r[0] for r in results]) * 1e3
    return {"p50": np.percentile(latency, 50), "p95": np.percentile(latency, 95), "p99": np.percentile(latency, 99),
            "rps": len(bodies) / wall, "search": float(np.median([r[1] for r in results]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=Path("demo-data/index"))
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--compare-batching", action="store_true",
                        help="also serve with batching off (HEADWATER_BATCH_WINDOW_MS=0): gradient rows of both")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.compare_batching:
        compare_batching(args, concurrencies)
    proc, url = start_server(args.index, max(concurrencies))
    try:
        bodies = queries(args.demo, args.requests)
        info = httpx.get(f"{url}/v1/index").json()
        print(f"\n/v1/attribute on {info['examples']} examples, {len(bodies)} requests per row, k=10 (one client "
              f"address; its limit of model queries in flight raised to {max(concurrencies)})\n")
        print("| method | concurrency | p50 ms | p95 ms | p99 ms | requests/s | server search ms (median) |")
        print("|---|---|---|---|---|---|---|")
        for method in args.methods.split(","):
            for concurrency in concurrencies:
                r = measure(url, bodies, method, concurrency)
                print(f"| {method} | {concurrency} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
                      f"{r['rps']:.1f} | {r['search']:.0f} |")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def compare_batching(args: argparse.Namespace, concurrencies: list[int]) -> None:
    """Gradient queries at each concurrency with batching off, then on, each on a fresh server."""
    print("\n| gradient queries | concurrency | p50 ms | p95 ms | requests/s |\n|---|---|---|---|---|")
    for label, window in (("one pass each (batching off)", 0.0), ("batched (4 ms window)", 4.0)):
        proc, url = start_server(args.index, max(concurrencies), window)
        try:
            bodies = queries(args.demo, args.requests)
            for concurrency in concurrencies:
                r = measure(url, bodies, "gradient", concurrency)
                print(f"| {label} | {concurrency} | {r['p50']:.0f} | {r['p95']:.0f} | {r['rps']:.1f} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
