"""Kronfluence and bergson on the field-LDS case, in the same run: their scores join ``headwater eval field-lds``.

    bash bench/bergson_env.sh                                   # once: .venv-bench/ with bergson and Kronfluence
    HF_HUB_OFFLINE=1 .venv-bench/bin/python -m bench.peers_lds --out OUT [--peers kronfluence-ekfac,...]
    .venv/bin/headwater eval field-lds --out OUT                # retrains, scores headwater, the table with peers

Same full model, training chunks and held-out query chunks (``OUT/case``; with ``--finetune N`` the fine-tuned
model, its N fine-tuning chunks and its queries, ``OUT/finetune``), same modules (every ``nn.Linear``
inside the transformer blocks, ``attribution.modules.sketched_linears``), the same loss on both sides (each
chunk's next-token NLL, summed), all on CPU. Each peer writes ``OUT/external/NAME.npy`` — a (queries, rows)
matrix of its influence scores, larger meaning more helpful — and ``OUT/external/NAME.json`` (seconds, version,
settings). Peers:

- ``kronfluence-ekfac``: Kronfluence's EK-FAC influence (``FactorArguments(strategy="ekfac")``, its default
  damping heuristic), pairwise scores;
- ``kronfluence-identity``: the same with ``strategy="identity"`` (plain gradient inner products, unprojected);
- ``kronfluence-ekfac-head``: Kronfluence's EK-FAC over the output head too (the one module outside the blocks it
  can track; headwater's ``newton`` moves every parameter, embedding included);
- ``bergson-identity``: bergson's projected gradient store (``projection_dim = --k``, as headwater's k) scored by
  inner product (``Attributor(unit_norm=False)``, every row traced);
- ``bergson-trackstar``: the same store with bergson's autocorrelation Hessian applied as H^-1/2 on both sides
  and unit norm (TrackStar without the optimizer normalizer);
- ``bergson-ekfac``: bergson's K-FAC factors with eigenvalue correction (``HessianConfig(method="kfac",
  ev_correction=True)``) applied to the query (``Attributor``'s default damping, 0.1 × each module's mean
  eigenvalue), inner product, over bergson's *unprojected* store (``projection_dim=0``: its factored preconditioner
  needs the full per-module gradients);
- ``bergson-ekfac-cg``: the same factors with relative damping 10, each query's (H + D)^-1 q then refined by
  bergson's preconditioned conjugate gradients (``AstraConfig(solver="cg")``: 20 steps on one batch of 256 rows,
  Gauss-Newton Hessian-vector products, the damped factored inverse as preconditioner), the leaderboard's
  "EK-FAC + CG";
- ``bergson-astra``: the same factors at damping 0.1, each query's solution refined by ASTRA (momentum SGD
  preconditioned by the factored inverse, 300 steps of 16 rows, lr 0.1, momentum 0.9, × 0.9 every 100 steps).
  bergson tunes lr by ASTRA's objective (the lowest after the last step over the first two queries); lr 0.1 diverges
  on the default case, where that procedure picks 0.003 (of 0.03, 0.01, 0.003, 0.001): pass ``--astra-lr 0.003``;
- ``bergson-shampoo``: eigenvalue-corrected Shampoo factors (``HessianConfig(method="shampoo", ev_correction=True)``),
  damping 0.1, no refinement;
- ``bergson-shampoo-astra``: those Shampoo factors refined by ASTRA with ``bergson-astra``'s schedule (on the
  default case too lr 0.1 and 0.01 diverge and the procedure picks 0.003, of 0.003, 0.001, 0.0003).

The last four follow bergson's leaderboard runs (``examples/compare_wikitext/ekfac_astra_cg.yaml``,
``ekfac_astra.yaml``, ``shampoo.yaml``, ``shampoo_astra.yaml`` in bergson's repository; damping is
``InversionConfig(inversion="damped_inverse", damping_factor=...)``, a multiple of each module's mean eigenvalue) as
``bergson ekfac`` runs them: unprojected stores of the rows and of the queries, the factors fitted on the rows,
``apply_worker`` writing (H + D)^-1 q per query, ``Astra.refine`` refining it (``refine_queries`` says why not
``astra_worker``), then inner products with the rows' store. Each query's objective is checked on a fixed
batch before and after refining (a diverging one stops the run); every setting and the mean objectives go into
``OUT/external/NAME.json``. Refining takes about 30 s a query on one CPU thread (some 25 minutes for the default
case's 50 queries), so the default ``--peers`` leaves the three refined peers out: name them.

The bergson stores are built by calling the workers ``bergson.build`` launches (``bench.compare_bergson``
explains why), rank 0 of a world of 1. ASTRA reads the rows through bergson's own data pipeline, so they are also
saved as a ``datasets`` directory, and its token budget is one row (the model's whole context).

Run with the bench-only interpreter; the project's own environment does not have Kronfluence.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attribution.models import load_model
from attribution.modules import sketched_linears
from evaluation.finetune_case import FinetuneCase
from evaluation.text_case import PRESETS, query_chunks, training_rows

# ASTRA's momentum SGD as bergson's leaderboard runs it (examples/compare_wikitext/ekfac_astra.yaml, shampoo_astra.yaml)
ASTRA_SGD = {"solver": "sgd", "num_steps": 300, "lr": 0.1, "momentum": 0.9, "batch_size": 16, "micro_batch_size": 8,
             "lr_decay": 0.9, "lr_decay_interval": 100}
# bergson's preconditioned conjugate gradients (examples/compare_wikitext/ekfac_astra_cg.yaml)
ASTRA_CG = {"solver": "cg", "num_steps": 20, "batch_size": 256, "micro_batch_size": 8}
CHECK_ROWS = 64  # the fixed batch of rows each query's ASTRA objective is measured on, before and after refining


@dataclass(frozen=True)
class Recipe:
    """One of bergson's factored influence recipes: the factors it fits (always eigenvalue-corrected), the damping
    (a multiple of each module's mean eigenvalue), the ``AstraConfig`` fields that refine each query's solution
    (empty: the factored solution as it is) and the bergson example it follows."""

    method: str
    damping: float
    example: str
    astra: dict = field(default_factory=dict)


RECIPES = {
    "bergson-ekfac-cg": Recipe("kfac", 10.0, "examples/compare_wikitext/ekfac_astra_cg.yaml", ASTRA_CG),
    "bergson-astra": Recipe("kfac", 0.1, "examples/compare_wikitext/ekfac_astra.yaml", ASTRA_SGD),
    "bergson-shampoo": Recipe("shampoo", 0.1, "examples/compare_wikitext/shampoo.yaml"),
    "bergson-shampoo-astra": Recipe("shampoo", 0.1, "examples/compare_wikitext/shampoo_astra.yaml", ASTRA_SGD),
}
WITH_HEAD = "-head"
"""A Kronfluence peer's suffix that adds the output head to the modules it tracks (headwater's ``newton`` moves every
parameter; the peers' default, like headwater's index, is the blocks' Linear layers only)."""
PEERS = ("kronfluence-ekfac", "kronfluence-identity", "bergson-trackstar", "bergson-ekfac", "bergson-identity",
         *RECIPES, "kronfluence-ekfac" + WITH_HEAD)
# ASTRA refines each query with hundreds of Gauss-Newton products: about half a minute a query on one CPU thread
REFINED = tuple(name for name, recipe in RECIPES.items() if recipe.astra)
log = logging.getLogger("bench.peers_lds")


class Chunks(torch.utils.data.Dataset):
    """Token chunks as Kronfluence batches: ``{"input_ids": (seq_len + 1,) long}``."""

    def __init__(self, rows) -> None:
        self.rows = [torch.as_tensor(r, dtype=torch.long) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i]}


def kronfluence_task(modules: list[str]):
    from kronfluence.task import Task

    class ChunkTask(Task):
        """Next-token NLL of each chunk, summed (the loss headwater sketches); sampled labels for the true Fisher."""

        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            ids = batch["input_ids"]
            logits = model(input_ids=ids[:, :-1]).logits.float()
            flat = logits.reshape(-1, logits.shape[-1])
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(flat.detach(), dim=-1), 1).flatten()
            else:
                labels = ids[:, 1:].reshape(-1)
            return F.cross_entropy(flat, labels, reduction="sum")

        def compute_measurement(self, batch, model) -> torch.Tensor:
            return self.compute_train_loss(batch, model, sample=False)

        def get_influence_tracked_modules(self) -> list[str]:
            return modules

        def get_attention_mask(self, batch):
            return None

    return ChunkTask()


def run_kronfluence(directory: Path, strategy: str, work: Path, head: bool = False) -> tuple[np.ndarray, dict]:
    """Kronfluence's pairwise scores with ``strategy`` over the blocks' Linear layers (and the output head)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    model = load_model(directory / "model")
    modules = list(sketched_linears(model, include_head=head))
    task = kronfluence_task(modules)
    model = prepare_model(model, task)
    shutil.rmtree(work, ignore_errors=True)
    analyzer = Analyzer(analysis_name="field_lds", model=model, task=task, cpu=True, output_dir=str(work),
                        disable_tqdm=True)
    train, queries = Chunks(training_rows(directory)), Chunks(query_chunks(directory).tolist())
    started = time.perf_counter()
    analyzer.fit_all_factors(factors_name=strategy, dataset=train, per_device_batch_size=32,
                             factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True)
    fit = time.perf_counter() - started
    analyzer.compute_pairwise_scores(scores_name=strategy, factors_name=strategy, query_dataset=queries,
                                     train_dataset=train, per_device_query_batch_size=10,
                                     per_device_train_batch_size=64, score_args=ScoreArguments(),
                                     overwrite_output_dir=True)
    scores = analyzer.load_pairwise_scores(strategy)["all_modules"].float().numpy()
    return scores, {"fit_seconds": round(fit, 1), "total_seconds": round(time.perf_counter() - started, 1),
                    "modules": len(modules), "version": version("kronfluence"), "strategy": strategy}


def run_bergson(directory: Path, name: str, work: Path, k: int) -> tuple[np.ndarray, dict]:
    from bergson import Attributor
    from bergson.config.config import HessianConfig
    from bergson.hessians.hessian_approximations import hessian_worker

    from bench.compare_bergson import bergson_config, build_bergson, load_bergson_model, run_bergson_worker

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = chunk_dataset(training_rows(directory))
    started = time.perf_counter()
    store = work / "store"
    k = 0 if name == "bergson-ekfac" else k  # bergson applies EK-FAC in full space: an unprojected store
    info = build_bergson(directory, data, k, store)
    hessian, unit_norm, ev_correction = None, False, False
    if name != "bergson-identity":
        method = "autocorrelation" if name == "bergson-trackstar" else "kfac"
        hessian, unit_norm, ev_correction = work / "hessian", name == "bergson-trackstar", name == "bergson-ekfac"
        cfg = bergson_config(directory, k, hessian, max(data["length"]))
        run_bergson_worker(hessian_worker, cfg, HessianConfig(method=method, ev_correction=ev_correction), data)
    fit = time.perf_counter() - started
    attributor = Attributor(store, device="cpu", unit_norm=unit_norm, hessian_path=hessian,
                            ev_correction=ev_correction)
    model = load_bergson_model(directory, k, store)
    queries = query_chunks(directory)
    scores = np.zeros((len(queries), attributor.N), dtype=np.float32)
    for q, chunk in enumerate(queries):
        ids = torch.as_tensor(chunk, dtype=torch.long)[None]
        with attributor.trace(model.base_model, attributor.N) as result:
            logits = model(ids[:, :-1]).logits[0].float()
            F.cross_entropy(logits, ids[0, 1:], reduction="sum").backward()
        model.zero_grad(set_to_none=True)
        scores[q, result.indices[0].numpy()] = result.scores[0].float().numpy()
    return scores, {"fit_seconds": round(fit, 1), "total_seconds": round(time.perf_counter() - started, 1),
                    "dim": info["dim"], "vector_bytes": info["vector_bytes"], "version": version("bergson"),
                    "projection_dim": k}



def chunk_dataset(rows):
    """Token chunks as the ``datasets.Dataset`` bergson's workers read: ``input_ids`` and ``length``."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": rows, "length": [len(r) for r in rows]})


def grad_columns(sizes: dict[str, int]) -> dict[str, slice]:
    """Each module's columns in a flat gradient store laid out in ``sizes`` order (bergson's ``grad_sizes``)."""
    columns, start = {}, 0
    for name, size in sizes.items():
        columns[name] = slice(start, start + size)
        start += size
    return columns


def store_inner_products(queries: np.ndarray, query_sizes: dict[str, int], rows: np.ndarray,
                         row_sizes: dict[str, int]) -> np.ndarray:
    """(queries, rows) inner products of two flat gradient stores over the same modules, whatever their order."""
    if query_sizes != row_sizes:  # the same modules and sizes, in any order
        raise SystemExit(f"the query and row stores hold different modules: {query_sizes} against {row_sizes}")
    at_query, at_row = grad_columns(query_sizes), grad_columns(row_sizes)
    scores = np.zeros((len(queries), len(rows)), dtype=np.float64)
    for name in query_sizes:
        scores += np.asarray(queries[:, at_query[name]], np.float64) @ np.asarray(rows[:, at_row[name]], np.float64).T
    return scores.astype(np.float32)


def read_store(path: Path) -> tuple[np.ndarray, dict[str, int]]:
    """A bergson gradient store: its (n, dim) memory map and module sizes in column order."""
    from bergson.data import load_gradients

    return load_gradients(path), json.loads((path / "info.json").read_text())["grad_sizes"]


def astra_index_config(directory: Path, rows: Path, width: int):
    """The index settings ASTRA's workers read the rows with: bergson's data pipeline loads the saved ``rows``
    dataset, and refuses a token budget above the model's context, so the budget is one row."""
    from bergson.config import DataConfig

    from bench.compare_bergson import bergson_config

    cfg = bergson_config(directory, 0, rows.parent / "astra-index", width)
    cfg.data = DataConfig(dataset=str(rows))
    cfg.token_batch_size = width
    return cfg


def astra_settings(recipe: Recipe, lr: float | None) -> dict:
    """The recipe's ``AstraConfig`` fields, with SGD's step size ``lr`` when given (conjugate gradients has none)."""
    if lr is None or recipe.astra.get("solver") != "sgd":
        return recipe.astra
    return {**recipe.astra, "lr": lr}


def solve_queries(directory: Path, recipe: Recipe, work: Path, data, astra: dict) -> tuple[np.ndarray, dict, dict]:
    """Each query's damped (H + D)^-1 q from the factors in ``work/hessian`` (``apply_worker``, into
    ``work/solved``), refined by ASTRA with ``astra`` (none when empty); returns the solutions, their module sizes
    and what the refinement reports."""
    from bergson.config import InversionConfig
    from bergson.hessians.apply_hessian import EkfacConfig, apply_worker

    inversion = InversionConfig(inversion="damped_inverse", damping_factor=recipe.damping)
    apply_worker(0, 0, 1, EkfacConfig(hessian_method_path=str(work / "hessian"), gradient_path=str(work / "queries"),
                                      run_path=str(work / "solved"), ev_correction=True), inversion)
    if not astra:
        return *read_store(work / "solved"), {}
    return refine_queries(directory, work, data, inversion, astra)


def row_tensors(store: np.ndarray, columns: dict[str, slice], row: int, names: list[str], device) -> dict:
    """One row of a gradient store as bergson's per-module float32 tensors (copies, never views of the store)."""
    return {name: torch.tensor(store[row, columns[name]], dtype=torch.float32, device=device) for name in names}


def astra_objective(solver, q: dict, x: dict, batch: list[int]) -> float:
    """ASTRA's objective x^T (H + D) x / 2 - x^T q with bergson's Gauss-Newton product on the rows ``batch`` and its
    damping ``D``: the refinement lowers it, a step size that diverges makes it grow."""
    hx = solver.hvp(x, batch)
    return sum(float(x[n] @ (hx[n] + solver.damping[n] * x[n])) / 2 - float(x[n] @ q[n]) for n in solver.names)


def diverged(before: float, after: float) -> bool:
    """Whether a refinement blew the objective up: not finite, or risen by more than its own size."""
    return not np.isfinite(after) or after > before + abs(before)


def refine_queries(directory: Path, work: Path, data, inversion, astra: dict) -> tuple[np.ndarray, dict, dict]:
    """ASTRA's refinement (``Astra.refine``: its momentum SGD or conjugate gradients, per ``astra``) of each query's
    solution in ``work/solved``, the rows' Gauss-Newton products drawn from ``data``. Each query's objective is
    measured on one fixed batch of ``CHECK_ROWS`` rows before and after; a diverging one stops the run.

    bergson's own loop (``astra_worker``, ``Astra.run``) refines each solution in place on the tensor it reads from
    the read-only memory map of ``work/solved``; on a GPU that read is a copy, on the CPU it is not and the first
    in-place step segfaults (bergson 2.5.1). So each query's solution is copied here and handed to ``refine``."""
    from bergson.config import AstraConfig
    from bergson.hessians.astra import Astra, AstraPaths
    from bergson.utils.utils import get_device

    rows = work / "rows"
    data.save_to_disk(str(rows))
    paths = AstraPaths(query_path=str(work / "queries"), init_path=str(work / "solved"),
                       hessian_path=str(work / "hessian"), run_path=str(work / "refined"))
    solver = Astra(paths, astra_index_config(directory, rows, max(data["length"])), inversion, AstraConfig(**astra),
                   True, get_device(0))
    queries, query_sizes = read_store(work / "queries")
    solved, sizes = read_store(work / "solved")
    at_query, at = grad_columns(query_sizes), grad_columns(sizes)
    refined = np.array(solved, dtype=np.float32)
    batch = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:CHECK_ROWS].tolist()
    objectives = []
    started = time.perf_counter()
    for row in range(len(refined)):
        q = row_tensors(queries, at_query, row, solver.names, solver.device)
        x = row_tensors(solved, at, row, solver.names, solver.device)
        before = astra_objective(solver, q, x, batch)
        x = solver.refine(q, x, row)
        after = astra_objective(solver, q, x, batch)
        if diverged(before, after):
            raise SystemExit(f"ASTRA ({astra['solver']}) diverged on query {row}: its objective went from "
                             f"{before:.4g} to {after:.4g} on {CHECK_ROWS} rows" + (
                                 f" at lr {astra['lr']}; bergson tunes the step size by this objective (its "
                                 "examples/compare_wikitext/ekfac_astra.yaml): rerun with a smaller --astra-lr"
                                 if astra["solver"] == "sgd" else ""))
        objectives.append((before, after))
        for name, value in x.items():
            refined[row, at[name]] = value.cpu().numpy()
        log.info("ASTRA (%s): query %d/%d refined (objective %.4g -> %.4g), %.0fs so far", astra["solver"], row + 1,
                 len(refined), before, after, time.perf_counter() - started)
    before, after = np.array(objectives).T
    return refined, sizes, {"refine_seconds": round(time.perf_counter() - started, 1), "objective_rows": CHECK_ROWS,
                            "objective_before_mean": float(before.mean()), "objective_after_mean": float(after.mean()),
                            "objective_rose": int((after > before).sum())}


def run_bergson_recipe(directory: Path, name: str, work: Path, astra_lr: float | None) -> tuple[np.ndarray, dict]:
    """One of ``RECIPES`` as ``bergson ekfac`` runs it, its workers called directly (rank 0 of a world of 1)."""
    from dataclasses import asdict

    from bergson.config import AstraConfig
    from bergson.config.config import HessianConfig
    from bergson.hessians.hessian_approximations import hessian_worker

    from bench.compare_bergson import bergson_config, build_bergson, run_bergson_worker

    recipe, astra = RECIPES[name], astra_settings(RECIPES[name], astra_lr)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = chunk_dataset(training_rows(directory))
    started = time.perf_counter()
    info = build_bergson(directory, data, 0, work / "store")
    hessian = HessianConfig(method=recipe.method, ev_correction=True)
    run_bergson_worker(hessian_worker, bergson_config(directory, 0, work / "hessian", max(data["length"])), hessian,
                       data)
    fit = time.perf_counter() - started
    build_bergson(directory, chunk_dataset(query_chunks(directory).tolist()), 0, work / "queries")
    solved, sizes, refinement = solve_queries(directory, recipe, work, data, astra)
    scores = store_inner_products(solved, sizes, *read_store(work / "store"))
    settings = {"hessian": asdict(hessian), "inversion": "damped_inverse", "damping_factor": recipe.damping,
                "astra": asdict(AstraConfig(**astra)) if astra else None, "bergson_example": recipe.example}
    return scores, {"fit_seconds": round(fit, 1), "total_seconds": round(time.perf_counter() - started, 1),
                    "dim": info["dim"], "vector_bytes": info["vector_bytes"], "version": version("bergson"),
                    "projection_dim": 0, **settings, **refinement}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the field-lds report directory (holds case/)")
    parser.add_argument("--peers", default=",".join(p for p in PEERS if p not in REFINED),
                        help=f"comma-separated (default: all but {', '.join(REFINED)}, about 25 minutes each on one "
                             "thread; name them to run them)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--k", type=int, default=16, help="bergson's projection_dim (headwater's k)")
    parser.add_argument("--astra-lr", type=float, default=None,
                        help="ASTRA's SGD step size (default: bergson's leaderboard 0.1; bergson tunes it by the "
                             "logged objective)")
    parser.add_argument("--finetune", type=int, default=0,
                        help="the fine-tuning variant with this many chunks (as `headwater eval field-lds "
                             "--finetune`; 0: the case trained from scratch)")
    parser.add_argument("--case", default="small", choices=sorted(PRESETS),
                        help="the text case (as `headwater eval field-lds --case`)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.finetune < 0:
        raise SystemExit(f"--finetune must be 0 or a number of chunks, got {args.finetune}")
    # the field-lds command's default case (reused when built)
    case = PRESETS[args.case]
    if args.finetune:
        case = FinetuneCase(base=case, rows=args.finetune)
    directory = case.build(args.out)
    (args.out / "external").mkdir(exist_ok=True)
    rows = []
    with contextlib.redirect_stdout(sys.stderr):  # the peers' imports log to stdout; stdout is the table
        for name in (p.strip() for p in args.peers.split(",") if p.strip()):
            rows.append(run_peer(name, directory, args))
    print("| peer | version | fit s (factors / store) | total s | stored bytes per example |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


def run_peer(name: str, directory: Path, args: argparse.Namespace) -> str:
    """One peer's scores written to ``OUT/external``; returns its table row."""
    if name not in PEERS:
        raise SystemExit(f"unknown peer {name!r}; choose from {PEERS}")
    if name.startswith("kronfluence-"):
        strategy = name.removeprefix("kronfluence-").removesuffix(WITH_HEAD)
        scores, info = run_kronfluence(directory, strategy, args.out / ".kronfluence", head=name.endswith(WITH_HEAD))
    elif name in RECIPES:
        scores, info = run_bergson_recipe(directory, name, args.out / ".bergson", args.astra_lr)
    else:
        scores, info = run_bergson(directory, name, args.out / ".bergson", args.k)
    external = args.out / "external"
    np.save(external / f"{name}.npy", scores.astype(np.float32))
    (external / f"{name}.json").write_text(json.dumps({**info, "threads": torch.get_num_threads()}, indent=2))
    log.info("%s: %s scores in %.0fs", name, scores.shape, info["total_seconds"])
    return (f"| {name} | {info['version']} | {info['fit_seconds']:.1f} | {info['total_seconds']:.1f} | "
            f"{info.get('vector_bytes', 0) / scores.shape[1]:,.0f} |")


if __name__ == "__main__":
    main()
