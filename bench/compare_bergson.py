"""headwater against bergson (EleutherAI's data-attribution library) on the demo, in one run.

    bash bench/bergson_env.sh      # once: .venv-bench/ with headwater and bergson (the project's .venv is untouched)
    HF_HUB_OFFLINE=1 .venv-bench/bin/python -m bench.compare_bergson --demo demo-data --steps 0:150 \
        [--k 16] [--seeds 0,1,2] [--threads 1] [--limit N] [--json PATH]

Same final demo model, same training rows (``demo_examples`` of the step range, 129 tokens each, every token
after the first a target, loss summed), same queries (the planted facts the model gets right with a gold row
indexed, ``bench.quality.known_facts``; the training-style prompt and the two held-out paraphrases, each with
the fact's completion as the loss, summed over its tokens, tokenized identically), same thread count, all on
CPU. Per row: build wall and CPU seconds (model load + gradient pass(es) + preconditioner fit + writing the
store; CPU time is the steadier number on a shared machine), bytes per example on disk (the gradient array
alone, and the whole store directory), fact-tracing recall@1/10 and MRR over the top 100
(``evaluation.metrics``, as ``bench.quality.evaluate`` computes them) and mean query latency.

**Projection mapping.** Both libraries sketch every ``nn.Linear`` inside the transformer blocks (bergson: all
supported layers under ``model.base_model``; headwater: ``sketched_linears``), here the same 16 modules
(4 layers × query_key_value, dense, dense_h_to_4h, dense_4h_to_h; neither the embeddings nor the output
head; weights only, no bias; checked at run time), and both use a factored two-sided projection of each
module's per-example gradient, ``P_outᵀ dW P_in``, formed from projected activations and output gradients
without materialising ``dW``. bergson's ``projection_dim=p`` gives ``p × p`` numbers per module; ours ``k``
gives ``k × k``; so ``projection_dim = k`` matches the numbers per module exactly (16·k² per example on both
sides). What differs: bergson's matrices are Rademacher (±1/√p), ours Gaussian N(0, 1/k), so the two draw
different random projections (``--seeds`` repeats everything with other seeds to show that spread); bergson
stores the raw projected gradients in the model's dtype (float32) and unit-normalises them when the
``Attributor`` loads them; ours stores prepared unit vectors in float16, plus the float32 FAISS copy and,
when preconditioned, the D×D preconditioner, as the published index does.

**Rows.** ``bergson cosine``: bergson's default gradient store (``IndexConfig(projection_dim=k)``: no
optimizer normaliser, no preconditioner) queried with ``Attributor(unit_norm=True)`` and ``Attributor.trace``,
its own query path: cosine of projected gradients. ``bergson cosine + autocorrelation preconditioner``: the
same store, plus bergson's autocorrelation Hessian (a second gradient pass accumulating each module's p²×p²
Gram) applied as H^-1/2 to both sides before the cosine (bergson's two-sided mode, damped inverse with
0.1 × the mean eigenvalue); this is TrackStar without the optimizer normaliser or query-Hessian mixing.
``headwater cosine, no preconditioner``: the same method as the first row on our side
(``CurvatureConfig(kind="none")``, whole rows). ``headwater default``: our default whole-row retriever,
cosine after one damped inverse-square-root preconditioner over all D = 16·k² sketch coordinates, fitted on
the stored sketches (λ = 0.1 × mean eigenvalue), no second pass.

bergson's ``build()`` and ``approximate_hessians()`` cannot read these rows through their data pipeline: it
caps ``token_batch_size`` at the model's ``max_position_embeddings`` (128) and refuses any document longer
than one batch, while a Pythia-style demo row has 129 tokens (128 inputs and targets, shifted). So the bench
calls the workers those two functions launch, ``build_worker`` and ``hessian_worker``, itself (rank 0 of a
world of 1, what bergson does on a CPU-only machine) on an in-memory ``datasets.Dataset`` of the rows'
token ids, with 32-row batches. Nothing here needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from attribution.config import AttributionConfig, CurvatureConfig
from attribution.models import load_tokenizer
from attribution.modules import sketched_linears
from attribution.records import Example
from attribution.retrievers import Method
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from bench.quality import evaluate, known_facts
from evaluation.demo_rows import demo_examples, load_layout
from evaluation.metrics import first_gold_rank, mean_reciprocal_rank, recall_at
from indexer.groundtruth import Fact, load_facts
from indexer.training_rows import parse_range, rows_for_steps

DEPTH = 100
BATCH_ROWS = 32
SPLITS = ("train", "heldout")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summarize(ranks: list[int | None]) -> dict:
    return {"recall@1": recall_at(ranks, 1), "recall@10": recall_at(ranks, 10), "recall@100": recall_at(ranks, 100),
            "mrr": mean_reciprocal_rank(ranks), "queries": len(ranks)}


def build_ours(demo: Path, examples: list[Example], k: int, precondition: str, store: Path, seed: int = 0) -> tuple:
    """Our session (sketch, fit, prepare) plus the gradient part of a published index written to ``store``."""
    config = AttributionConfig(sketch=SketchConfig(k=k, seed=seed), curvature=CurvatureConfig(kind=precondition))
    started, cpu = time.perf_counter(), time.process_time()
    session = AttributionSession.from_examples(demo / "model", examples, config, tokenizer_path=demo / "tokenizer")
    retriever = session.retriever(Method.GRADIENT)
    store.mkdir(parents=True)
    np.save(store / "vectors.npy", retriever.store.vectors(np.arange(len(session)))[:, 0].astype(np.float16))
    np.save(store / "ids.npy", session.ids)
    retriever.store.save_index(store / "gradient.faiss")
    preconditioner = session.encoder.checkpoints[0].preconditioner
    if preconditioner is not None:
        preconditioner.save(store / "preconditioner-0.safetensors")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return session, {"build_seconds": seconds, "build_cpu_seconds": cpu, "dim": session.encoder.dim,
                     "vector_bytes": (store / "vectors.npy").stat().st_size, "store_bytes": dir_bytes(store)}


def bergson_config(demo: Path, k: int, run_path: Path, width: int, seed: int | None = None):
    """bergson's index settings: its defaults but ``projection_dim=k`` and batches of ``BATCH_ROWS`` rows."""
    from bergson import IndexConfig

    return IndexConfig(run_path=str(run_path), model=str(demo / "model"), tokenizer=str(demo / "tokenizer"),
                       projection_dim=k, projection_seed=seed, token_batch_size=BATCH_ROWS * width)


def bergson_dataset(examples: list[Example]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [ex.token_ids.tolist() for ex in examples],
                              "length": [len(ex.token_ids) for ex in examples]})


def run_bergson_worker(worker, cfg, *args) -> dict:
    """Run a bergson worker as rank 0 of a world of 1 (what bergson launches on a CPU-only machine) and
    publish its ``.part`` directory as bergson's ``build()`` does; returns wall and CPU seconds and bytes."""
    started, cpu = time.perf_counter(), time.process_time()
    cfg.partial_run_path.mkdir(parents=True)
    worker(0, 0, 1, cfg, *args)
    cfg.partial_run_path.rename(cfg.run_path)
    return {"build_seconds": time.perf_counter() - started, "build_cpu_seconds": time.process_time() - cpu,
            "store_bytes": dir_bytes(Path(cfg.run_path))}


def build_bergson(demo: Path, data, k: int, run_path: Path, seed: int | None = None) -> dict:
    """bergson's gradient store of the rows: its ``build_worker`` (model, processor, batches, collection)."""
    from bergson import PreprocessConfig
    from bergson.build import build_worker

    cfg = bergson_config(demo, k, run_path, max(data["length"]), seed)
    stats = run_bergson_worker(build_worker, cfg, PreprocessConfig(), data)
    info = json.loads((run_path / "info.json").read_text())
    return {**stats, "dim": sum(info["grad_sizes"].values()), "dtype": info["base_dtype"],
            "vector_bytes": (run_path / "gradients.bin").stat().st_size, "modules": list(info["grad_sizes"])}


def fit_bergson_hessian(demo: Path, data, k: int, run_path: Path, seed: int | None = None) -> dict:
    """bergson's autocorrelation Hessian (per-module Gram of the projected gradients), a second gradient pass."""
    from bergson.config.config import HessianConfig
    from bergson.hessians.hessian_approximations import hessian_worker

    cfg = bergson_config(demo, k, run_path, max(data["length"]), seed)
    return run_bergson_worker(hessian_worker, cfg, HessianConfig(method="autocorrelation"), data)


def load_bergson_model(demo: Path, k: int, run_path: Path):
    from bergson.utils.worker_utils import setup_model_and_peft

    return setup_model_and_peft(bergson_config(demo, k, run_path, 1))[0]


def same_modules(session: AttributionSession, bergson_modules: list[str]) -> bool:
    """Whether both libraries sketch the same layers (names relative to the transformer body)."""
    model = session.encoder.checkpoints[0].model
    prefix = model.base_model_prefix + "."
    ours = sorted(name.removeprefix(prefix) for name in sketched_linears(model))
    return ours == sorted(bergson_modules)


def bergson_top(attributor, model, tokenizer, prompt: str, completion: str) -> list[int]:
    """Row positions of bergson's top results: the query's completion loss, summed, traced by ``Attributor``."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    completion_ids = tokenizer.encode(completion, add_special_tokens=False)
    ids = torch.tensor([prompt_ids + completion_ids])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100
    with attributor.trace(model.base_model, min(DEPTH, attributor.N)) as result:
        logits = model(ids).logits[0, :-1]
        F.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum").backward()
    model.zero_grad(set_to_none=True)
    return result.indices[0].tolist()


def evaluate_bergson(run_path: Path, model, tokenizer, facts: list[Fact], ids: np.ndarray, limit: int | None,
                     hessian_path: Path | None = None) -> tuple[dict, float]:
    """Recall and MRR per prompt kind as ``bench.quality.evaluate`` computes them, and seconds per query.

    With ``hessian_path``, bergson applies H^-1/2 to both sides before the cosine (its two-sided mode)."""
    from bergson import Attributor

    attributor = Attributor(run_path, device="cpu", unit_norm=True, hessian_path=hessian_path)
    results, times = {}, []
    for split in SPLITS:
        ranks = []
        for fact in facts[:limit]:
            for prompt in [fact.prompt] if split == "train" else fact.paraphrases:
                started = time.perf_counter()
                top = bergson_top(attributor, model, tokenizer, prompt, fact.completion)
                times.append(time.perf_counter() - started)
                ranks.append(first_gold_rank([int(ids[r]) for r in top], fact.gold_rows))
        results[split] = summarize(ranks)
    return results, sum(times) / max(len(times), 1)


def evaluate_ours(session: AttributionSession, facts: list[Fact], limit: int | None) -> tuple[dict, float]:
    started = time.perf_counter()
    results = evaluate(session, facts, [Method.GRADIENT.value], depth=min(DEPTH, len(session)), limit=limit)
    per_split = {split: results[(Method.GRADIENT.value, split)] for split in SPLITS}
    queries = sum(r["queries"] for r in per_split.values())
    return per_split, (time.perf_counter() - started) / max(queries, 1)


def machine(threads: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "load_average": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": version("transformers"),
            "bergson": version("bergson"), "headwater": version("headwater"), "faiss": faiss.__version__}


def row(name: str, description: str, seed: int, stats: dict, n: int, quality: dict, query_seconds: float) -> dict:
    return {"name": name, "description": description, "seed": seed, **stats,
            "examples_per_s": n / stats["build_seconds"], "examples_per_cpu_s": n / stats["build_cpu_seconds"],
            "vector_bytes_per_example": stats["vector_bytes"] / n, "store_bytes_per_example": stats["store_bytes"] / n,
            **quality, "query_ms": query_seconds * 1000}


def compare(demo: Path, examples: list[Example], k: int, seed: int, limit: int | None, work: Path,
            facts: list[Fact] | None) -> tuple[list[dict], list[Fact], dict]:
    """The four rows at one projection seed (both libraries); returns them, the facts asked and settings."""
    n = len(examples)
    ours_plain, plain_stats = build_ours(demo, examples, k, "none", work / "ours-none", seed)
    accuracy = None
    if facts is None:
        facts, accuracy = known_facts(ours_plain, load_facts(demo), set(ours_plain.ids.tolist()))
    data = bergson_dataset(examples)
    bergson_stats = build_bergson(demo, data, k, work / "bergson", seed)
    hessian_stats = fit_bergson_hessian(demo, data, k, work / "bergson-hessian", seed)
    ours_default, default_stats = build_ours(demo, examples, k, "inverse_sqrt", work / "ours-default", seed)
    model, tokenizer, ids = load_bergson_model(demo, k, work / "bergson"), ours_plain.encoder.tokenizer, ours_plain.ids
    both_passes = {**bergson_stats, **{key: bergson_stats[key] + hessian_stats[key] for key in hessian_stats}}
    rows = [
        row("bergson cosine", "bergson build_worker with IndexConfig(projection_dim=k) defaults (no normalizer, no "
            "preconditioner); Attributor(unit_norm=True).trace", seed, bergson_stats, n,
            *evaluate_bergson(work / "bergson", model, tokenizer, facts, ids, limit)),
        row("bergson cosine + autocorrelation preconditioner", "the same store; hessian_worker(HessianConfig("
            "'autocorrelation')), a second gradient pass; Attributor(unit_norm=True, hessian_path): per-module "
            "H^-1/2 on both sides, damped_inverse with damping 0.1 x mean eigenvalue; build = both passes", seed,
            both_passes, n, *evaluate_bergson(work / "bergson", model, tokenizer, facts, ids, limit,
                                              work / "bergson-hessian")),
        row("headwater cosine, no preconditioner", "AttributionConfig(k, curvature kind 'none'), whole rows", seed,
            plain_stats, n, *evaluate_ours(ours_plain, facts, limit)),
        row("headwater default (inverse-sqrt preconditioner)", "AttributionConfig(k, curvature kind 'inverse_sqrt', "
            "damping=0.1): one D x D preconditioner fitted on the stored sketches, whole rows", seed, default_stats,
            n, *evaluate_ours(ours_default, facts, limit)),
    ]
    settings = {"dim": plain_stats["dim"], "bergson_dim": bergson_stats["dim"], "bergson_dtype": bergson_stats["dtype"],
                "same_modules": same_modules(ours_plain, bergson_stats["modules"])}
    if accuracy is not None:
        settings["accuracy"] = accuracy
    return rows, facts, settings


def run(demo: Path, steps: str | None, k: int, seeds: list[int], threads: int, limit: int | None,
        work: Path) -> dict:
    torch.set_num_threads(threads)
    layout = load_layout(demo)
    span = rows_for_steps(layout["num_rows"], layout["batch_size"], *parse_range(steps, "steps")) if steps else None
    env = machine(threads)
    examples = list(demo_examples(demo, span, load_tokenizer(demo / "tokenizer")))
    rows, facts, settings = [], None, {}
    for seed in seeds:
        seed_rows, facts, seed_settings = compare(demo, examples, k, seed, limit, work / f"seed-{seed}", facts)
        rows += seed_rows
        settings.update(seed_settings)
    settings |= {"demo": str(demo), "steps": steps or "all", "examples": len(examples), "k": k, "seeds": seeds,
                 "facts": len(facts), "queried_facts": len(facts[:limit]), "depth": DEPTH, "batch_rows": BATCH_ROWS}
    env["load_average_end"] = os.getloadavg()
    return {"settings": settings, "machine": env, "rows": rows}


def cell(values: list[float], digits: int) -> str:
    """The mean, and the range over seeds when there are several."""
    text = f"{sum(values) / len(values):.{digits}f}"
    return text if len(values) == 1 else f"{text} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def markdown(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    lines = [f"{s['examples']} demo rows (steps {s['steps']}); k={s['k']} = bergson projection_dim: {s['dim']} numbers "
             f"per example on both sides (same 16 modules: {s['same_modules']}; bergson stores {s['bergson_dtype']}, "
             f"headwater float16); {s['facts']} known facts with a gold row indexed (model accuracy "
             f"{s['accuracy']:.1%}), {s['queried_facts']} queried, top {s['depth']}; projection seed(s) {seeds}: "
             "quality is the mean (range over seeds).", "",
             "| row | build s (wall / CPU) | examples/s (wall / CPU) | vector B/ex | store B/ex | train R@1 "
             "| train R@10 | train MRR | held-out R@1 | held-out R@10 | held-out MRR | ms/query |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["name"] for r in report["rows"]):
        group = [r for r in report["rows"] if r["name"] == name]
        mean = {key: sum(r[key] for r in group) / len(group) for key in
                ("build_seconds", "build_cpu_seconds", "examples_per_s", "examples_per_cpu_s",
                 "vector_bytes_per_example", "store_bytes_per_example", "query_ms")}
        quality = [cell([r[split][metric] for r in group], 3) for split in SPLITS for metric in ("recall@1",
                                                                                              "recall@10", "mrr")]
        lines.append(f"| {name} | {mean['build_seconds']:.0f} / {mean['build_cpu_seconds']:.0f} | "
                     f"{mean['examples_per_s']:.1f} / {mean['examples_per_cpu_s']:.1f} | "
                     f"{mean['vector_bytes_per_example']:.0f} | {mean['store_bytes_per_example']:.0f} | "
                     f"{' | '.join(quality)} | {mean['query_ms']:.0f} |")
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s), CPU only, "
              f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in m['load_average'])} at start, "
              f"{'/'.join(f'{x:.1f}' for x in m['load_average_end'])} at end; python {m['python']}, "
              f"torch {m['torch']}, transformers {m['transformers']}, bergson {m['bergson']}, "
              f"headwater {m['headwater']}, faiss {m['faiss']}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-data"))
    parser.add_argument("--steps", default=None, help="step range A:B of rows to index (default: all)")
    parser.add_argument("--k", type=int, default=16, help="projection dimension per side (bergson: projection_dim)")
    parser.add_argument("--seeds", default="0", help="projection seeds, comma-separated (both libraries)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both libraries")
    parser.add_argument("--limit", type=int, default=None, help="at most this many facts")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--work", type=Path, default=None, help="keep the stores here (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        seeds = [int(seed) for seed in args.seeds.split(",")]
        report = run(args.demo.resolve(), args.steps, args.k, seeds, args.threads, args.limit, work)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
