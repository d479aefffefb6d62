"""The sketch pass at Pythia's real shapes: a random GPT-NeoX of Pythia-14m's or -70m's config, 2,049-token rows.

    python -m bench.pythia_shape [--shapes 14m,70m] [--rows 4] [--token-batch-size 8192] [--device cpu|cuda]
        [--dtype float32|bfloat16] [--compare-cpu] [--bergson] [--unlearning]

Per shape, each in its own subprocess (so peak RSS is its own): a plain forward + backward with parameter
gradients over the same rows (the floor), and headwater's sketch pass with the index build's defaults (k=16,
every block Linear, the chunked loss, the token budget): rows/s, tokens/s, the ratio sketch / plain, peak RSS
(against the budget) and bytes per example stored (float16). ``--compare-cpu`` (with a CUDA device) also
sketches the rows on the CPU in float32 and reports the lowest cosine between the two sketches of a row
(bench/gpu_check.sh asks ≥ 0.99). ``--bergson`` also times bergson's build of the same rows with the same model,
projection (16 per side, every block Linear) and token budget, in the bench-only environment (``.venv-bench``,
``bench/bergson_env.sh``): its ``build_worker`` as rank 0 of a world of 1, the model saved and reloaded by it (a
second or less of its time). ``--unlearning`` also times what a query of method ``unlearning`` costs at the shape:
the forward pass over candidate rows (per row) and one ascent on a 64-token target, and the latency of a query that
re-ranks ``UnlearningConfig().candidates`` × 3 rows (the default pool, the upper bound when the three retrievers'
candidates do not overlap) once their reference losses are cached. ``--newton`` also times the Newton step (the
``unlearning`` direction ``newton``, :mod:`attribution.newton`) at the shape: the solver's fit on its sample
(``newton_rows`` rows of ``NEWTON_SAMPLE_TOKENS`` tokens: the damping's eigenvalue estimate, and with
``--factoring ekfac`` the factored inverse), one query's conjugate-gradient solve, and the central difference per
candidate row. Prints a markdown table; not a test.
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

import torch

SHAPES = {
    "14m": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512),
    "70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048),
}
COMMON = dict(vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
              tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)


def make_model(shape: str, device: str, dtype: str):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**SHAPES[shape], **COMMON))
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()


def rows(count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1, 50304, (count, 2049), generator=generator).tolist()


def sketches(shape: str, count: int, tokens: int, device: str, dtype: str) -> tuple[torch.Tensor, float]:
    """The rows' sketches at the index build's defaults, and the seconds of the sketch pass alone (not the model's
    construction)."""
    from attribution.batching import Batching, training_batch
    from attribution.sketch import SketchConfig, Sketcher

    model = make_model(shape, device, dtype)
    sketcher = Sketcher(model, SketchConfig())
    data = rows(count)
    started = time.perf_counter()
    out = [sketcher.sketch(training_batch(data[a:b])).float().cpu()
           for a, b in Batching(rows=32, tokens=tokens).spans([len(r) for r in data])]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return torch.cat(out), time.perf_counter() - started


BENCH_PYTHON = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"


def bergson_build(shape: str, count: int, tokens: int) -> tuple[int, float]:
    """bergson's gradient store of the same rows (projection 16 per side, the same token budget): its dimension
    and the seconds of its build worker."""
    from bergson import IndexConfig, PreprocessConfig
    from bergson.build import build_worker
    from datasets import Dataset

    from bench.compare_bergson import run_bergson_worker
    from evaluation.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_model(shape, "cpu", "float32").save_pretrained(str(work / "model"))
        train_tokenizer(["a b c d e f"] * 20, 300, work / "tokenizer")  # bergson reads one; the rows are ids
        data = rows(count)
        dataset = Dataset.from_dict({"input_ids": data, "length": [len(r) for r in data]})
        cfg = IndexConfig(run_path=str(work / "run"), model=str(work / "model"), tokenizer=str(work / "tokenizer"),
                          projection_dim=16, token_batch_size=tokens)
        stats = run_bergson_worker(build_worker, cfg, PreprocessConfig(), dataset)
        info = json.loads((work / "run" / "info.json").read_text())
        return int(sum(info["grad_sizes"].values())), stats["build_seconds"]


TARGET_TOKENS, TARGET_COMPLETION = 64, 16
"""The unlearning query timed: a 64-token target whose last 16 tokens are the completion ascended on."""


def unlearning_costs(shape: str, count: int, device: str, dtype: str) -> dict:
    """Seconds of the forward pass over ``count`` candidate rows (their per-token losses) and of one default ascent
    on a ``TARGET_TOKENS`` target (the ascent with the rows' losses after it, less the forward pass alone)."""
    from attribution.batching import collate
    from attribution.config import UnlearningConfig
    from attribution.unlearning import CANDIDATE_SOURCES, losses_after_ascent, row_losses

    model = make_model(shape, device, dtype)
    settings = UnlearningConfig()
    data = rows(count)
    target = collate([data[0][:TARGET_TOKENS]], [[0] * (TARGET_TOKENS - TARGET_COMPLETION) + [1] * TARGET_COMPLETION])
    row_losses(model, data[:1], settings.batch_tokens)  # warm-up: first-call allocations are not a query's cost
    started = time.perf_counter()
    row_losses(model, data, settings.batch_tokens)
    forward = time.perf_counter() - started
    started = time.perf_counter()
    losses_after_ascent(model, target, data, settings)
    ascent = max(0.0, time.perf_counter() - started - forward)
    return {"forward_seconds": forward, "ascent_seconds": ascent, "pool": len(CANDIDATE_SOURCES) * settings.candidates}


def newton_costs(shape: str, count: int, device: str, dtype: str, factoring: str) -> dict:
    """Seconds of the Newton solver's fit, of one more query's solve and of the central difference over ``count``
    candidate rows, with the solver's iterations and residual."""
    import numpy as np

    from attribution.ascent import trainable
    from attribution.batching import collate
    from attribution.config import Direction, UnlearningConfig
    from attribution.unlearning import central_changes, newton_sample, newton_solver

    model = make_model(shape, device, dtype)
    settings = UnlearningConfig(direction=Direction.NEWTON, newton_factoring=factoring)
    data = rows(max(count, settings.newton_rows))
    sample = newton_sample(lambda r: np.asarray(data[r]), len(data), settings.newton_rows)
    mask = [0] * (TARGET_TOKENS - TARGET_COMPLETION) + [1] * TARGET_COMPLETION
    targets = [collate([data[i][:TARGET_TOKENS]], [mask]).to(device) for i in (0, 1)]
    with trainable(model):
        solver = newton_solver(model, sample.to(device), settings)
        started = time.perf_counter()
        solver.direction(targets[0])  # the first query fits the damping (and factors)
        first = time.perf_counter() - started
        started = time.perf_counter()
        found = solver.direction(targets[1])
        solve = time.perf_counter() - started
    direction = found.x.to(torch.float32) / found.x.norm()
    started = time.perf_counter()
    central_changes(model, direction, data[:count], settings)
    per_row = (time.perf_counter() - started) / count
    return {"fit_seconds": first - solve, "solve_seconds": solve, "row_seconds": per_row,
            "iterations": found.iterations, "residual": found.residual, "sample_rows": len(sample.input_ids)}


def measure(variant: str, shape: str, count: int, tokens: int, device: str, dtype: str, factoring: str = "none"
            ) -> dict:
    """One variant in this process: seconds, peak RSS, the sketch dimension."""
    from attribution.batching import Batching, backward_summed_nll, training_batch

    data = rows(count)
    spans = Batching(rows=32, tokens=tokens).spans([len(r) for r in data])
    dim, extra = 0, {}
    if variant == "unlearning":
        extra = unlearning_costs(shape, count, device, dtype)
        seconds = extra["forward_seconds"]
    elif variant == "newton":
        extra = newton_costs(shape, count, device, dtype, factoring)
        seconds = extra["row_seconds"] * count
    elif variant == "bergson":
        dim, seconds = bergson_build(shape, count, tokens)
    elif variant == "plain":
        model = make_model(shape, device, dtype)
        started = time.perf_counter()
        for a, b in spans:
            batch = training_batch(data[a:b]).to(device)
            backward_summed_nll(model, batch)  # the same chunked loss: the floor without sketching
            model.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    else:
        found, seconds = sketches(shape, count, tokens, device, dtype)
        dim = int(found.shape[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux reports KiB)
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    return {"seconds": seconds, "peak_rss_gib": peak, "gpu_gib": gpu, "dim": dim, **extra}


def run_variant(variant: str, args: argparse.Namespace, shape: str) -> dict:
    python = str(BENCH_PYTHON) if variant == "bergson" else sys.executable
    argv = [python, "-m", "bench.pythia_shape", "--child", variant, "--shapes", shape, "--rows",
            str(args.rows), "--token-batch-size", str(args.token_batch_size), "--device", args.device, "--dtype",
            args.dtype, "--factoring", args.factoring]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="14m,70m")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--token-batch-size", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compare-cpu", action="store_true")
    parser.add_argument("--bergson", action="store_true", help="also time bergson's build (.venv-bench)")
    parser.add_argument("--unlearning", action="store_true", help="also time an unlearning query's parts")
    parser.add_argument("--newton", action="store_true", help="also time the Newton step's fit, solve and rows")
    parser.add_argument("--factoring", default="none", choices=("none", "kfac", "ekfac"),
                        help="the Newton solver's factored preconditioner (with --newton)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.shapes, args.rows, args.token_batch_size, args.device, args.dtype,
                                 args.factoring)))
        return
    print(f"\n{args.rows} rows of 2,049 tokens, vocabulary 50,304, token budget {args.token_batch_size:,}, "
          f"{args.device} {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| shape | variant | rows/s | tokens/s | × plain | peak RSS GiB | GPU GiB | bytes/example (fp16) |")
    print("|---|---|---|---|---|---|---|---|")
    ratios: list[str] = []
    for shape in args.shapes.split(","):
        plain = run_variant("plain", args, shape)
        sketch = run_variant("sketch", args, shape)
        measured = [("plain fwd+bwd", plain), ("headwater sketch (k=16)", sketch)]
        if args.bergson:
            if not BENCH_PYTHON.exists():
                raise SystemExit(f"--bergson needs {BENCH_PYTHON}: run bench/bergson_env.sh")
            bergson = run_variant("bergson", args, shape)
            measured.append(("bergson build (p=16)", bergson))
            ratios.append(f"{shape}: headwater sketch / bergson build throughput "
                          f"{bergson['seconds'] / sketch['seconds']:.2f} (goal ≥ 1.5)")
        if args.unlearning:
            cost = run_variant("unlearning", args, shape)
            measured.append(("forward over candidate rows (unlearning)", cost))
            per_row, ascent, pool = cost["forward_seconds"] / args.rows, cost["ascent_seconds"], cost["pool"]
            warm, cold = ascent + pool * per_row, 2 * ascent + 3 * pool * per_row  # cold: base, probe, target
            ratios.append(f"{shape}: an unlearning query re-ranking {pool} candidate rows ≈ {ascent:.1f} s ascent + "
                          f"{pool} × {per_row:.2f} s forward = {warm:.0f} s with the rows' reference losses cached, "
                          f"{cold:.0f} s cold (reference and probe-ascent losses computed too)")
        if args.newton:
            cost = run_variant("newton", args, shape)
            measured.append((f"central difference over candidate rows (newton, {args.factoring})", cost))
            ratios.append(f"{shape}: the Newton step ({args.factoring} preconditioner, {cost['sample_rows']} sample "
                          f"rows): fit {cost['fit_seconds']:.1f} s once, then {cost['solve_seconds']:.1f} s a query "
                          f"({cost['iterations']} CG steps, residual {cost['residual']:.1e}) + "
                          f"{cost['row_seconds']:.2f} s per candidate row")
        for name, r in measured:
            rate, stored = args.rows / r["seconds"], f"{r['dim'] * 2:,}" if r["dim"] else "-"
            apart = "forward_seconds" in r or "row_seconds" in r  # forward passes only: not comparable
            ratio = "-" if apart else f"{plain['seconds'] / r['seconds']:.2f}"
            print(f"| {shape} | {name} | {rate:.2f} | {rate * 2048:,.0f} | {ratio} | "
                  f"{r['peak_rss_gib']:.2f} | {r['gpu_gib']:.2f} | {stored} |", flush=True)
        if args.compare_cpu and args.device != "cpu":
            here, _ = sketches(shape, args.rows, args.token_batch_size, args.device, args.dtype)
            cpu, _ = sketches(shape, args.rows, args.token_batch_size, "cpu", "float32")
            cosine = torch.nn.functional.cosine_similarity(here, cpu, dim=1)
            ratios.append(f"{shape}: lowest cosine between {args.device} {args.dtype} and CPU float32 sketches of a "
                          f"row: {float(cosine.min()):.4f} (goal ≥ 0.99)")
    if ratios:
        print("\n" + "\n".join(f"- {line}" for line in ratios))


if __name__ == "__main__":
    main()
