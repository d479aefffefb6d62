"""Sketch-pass throughput on the demo model and data, against the physical floor and a naive baseline.

    python -m bench.sketch [--demo demo-data] [--rows 512] [--batch-size 32] [--k 16]

Rows of the table, each measured in its own subprocess (so peak RSS is its own):

- ``plain fwd+bwd``: forward + backward with parameter gradients, no sketching: the floor
  for any gradient method;
- ``headwater sketch``: the factored two-sided projection (whole examples, and per 16-token window);
- ``naive per-example``: one backward per example, then ``P_outᵀ dW P_in`` from the full ``dW``.

Prints a markdown table with examples/s, tokens/s, the ratio to the plain pass, peak RSS
and bytes stored per example (fp16).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("plain", "sketch", "sketch_w16", "naive")


def load(demo: Path, rows: int):
    from attribution.models import load_model
    from indexer.megatron import MegatronDataset

    model = load_model(demo / "model")
    data = MegatronDataset(demo / "data" / "document")
    return model, [data[i].astype("int64").tolist() for i in range(min(rows, len(data)))]


def run_variant(name: str, demo: Path, n_rows: int, batch_size: int, k: int) -> dict:
    from attribution.batching import training_batch
    from attribution.sketch import SketchConfig, Sketcher

    model, rows = load(demo, n_rows)
    sketcher = Sketcher(model, SketchConfig(k=k))

    def plain(batch):
        for p in model.parameters():
            p.requires_grad_(True)
        logits = model(input_ids=batch.input_ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch.input_ids[:, 1:].reshape(-1), reduction="sum")
        loss.backward()
        model.zero_grad(set_to_none=True)

    def naive(batch):
        for p in model.parameters():
            p.requires_grad_(True)
        for b in range(len(batch)):
            ids = batch.input_ids[b : b + 1]
            logits = model(input_ids=ids).logits[0, :-1]
            torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").backward()
            for mod_name, mod in sketcher.modules.items():
                p_in, p_out = sketcher.projections[mod_name]
                _ = p_out.T @ mod.weight.grad @ p_in
            model.zero_grad(set_to_none=True)

    fn = {"plain": plain, "sketch": sketcher.sketch, "sketch_w16": lambda b: sketcher.sketch(b, window=16),
          "naive": naive}[name]
    batches = [training_batch(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    fn(batches[0])  # warm-up
    started = time.perf_counter()
    for batch in batches:
        fn(batch)
    seconds = time.perf_counter() - started
    windows = -(-len(rows[0]) // 16) if name == "sketch_w16" else 1
    return {
        "variant": name,
        "examples_per_s": len(rows) / seconds,
        "tokens_per_s": len(rows) * len(rows[0]) / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bytes_per_example": sketcher.dim * 2 * windows if name.startswith("sketch") else None,
        "dim": sketcher.dim,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_variant(args.one, args.demo, args.rows, args.batch_size, args.k)))
        return
    results = []
    for name in VARIANTS:
        rows = args.rows if name != "naive" else max(args.batch_size, args.rows // 4)
        cmd = [sys.executable, "-m", "bench.sketch", "--one", name, "--demo", str(args.demo), "--rows", str(rows),
               "--batch-size", str(args.batch_size), "--k", str(args.k)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    floor = results[0]["examples_per_s"]
    print(f"\nsketch throughput: {args.rows} demo rows, batch {args.batch_size}, k={args.k} "
          f"(D={results[0]['dim']}), torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| variant | examples/s | tokens/s | ratio to plain | peak RSS (MB) | bytes/example (fp16) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        stored = r["bytes_per_example"] if r["bytes_per_example"] is not None else "-"
        print(f"| {r['variant']} | {r['examples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{r['examples_per_s'] / floor:.2f} | {r['peak_rss_mb']:.0f} | {stored} |")


if __name__ == "__main__":
    main()
