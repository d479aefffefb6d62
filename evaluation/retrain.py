"""Retrain the demo's model on random halves of its training rows: the datamodels that LDS compares against.

Subset ``j`` holds exactly half of all training rows, drawn from ``(seed, j)`` — so subset ``j``
is the same whatever the number of subsets asked for — and kept in their original training
order. Training is ``evaluation.training.train`` with the demo's own hyper-parameters and
initialization seed. Half the rows means half the steps, and the learning-rate schedule
(warm-up, then cosine decay to 10 %) runs over the subset's own step count: each subset model
is trained to the end of its schedule as the full model was, rather than stopped half-way
through the full model's schedule at a high learning rate.

Each model is written to ``OUT/subsets/NNN/`` with ``done.json`` written last; a rerun skips
finished subsets and retrains any that a killed run left half-written.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from attribution.errors import ConfigError
from attribution.models import load_tokenizer
from evaluation.demo_config import DemoConfig
from evaluation.report_files import rows_digest, write_whole
from evaluation.training import settings_for, steps_for, train
from indexer.megatron import MegatronDataset

log = logging.getLogger(__name__)
MARKER = "done.json"
NONE, RANDOM, GOLD = "none", "random", "gold"
"""The baseline selections of every removal (facts and tasks): nothing removed, random rows, the known gold rows."""


def demo_config(demo_dir: Path) -> DemoConfig:
    """The config the demo's model was trained with (from ``model/training.json``)."""
    info = demo_dir / "model" / "training.json"
    if not info.is_file():
        raise ConfigError(f"{demo_dir} is not a built demo (no model/training.json); run 'headwater demo build'")
    return DemoConfig(**json.loads(info.read_text())["config"])


def training_rows(demo_dir: Path) -> int:
    """How many rows the demo's model was trained on (all of its Megatron data, in order)."""
    return len(MegatronDataset(demo_dir / "data" / "document"))


def draw_subset(n_rows: int, index: int, seed: int) -> np.ndarray:
    """Row ids of subset ``index``: exactly half of ``n_rows``, sorted (original training order)."""
    rng = np.random.default_rng([seed, index])
    return np.sort(rng.choice(n_rows, n_rows // 2, replace=False))


def subset_masks(n_rows: int, count: int, seed: int) -> np.ndarray:
    """``(count, n_rows)`` booleans: row ``i`` is in subset ``j``."""
    masks = np.zeros((count, n_rows), dtype=bool)
    for j in range(count):
        masks[j, draw_subset(n_rows, j, seed)] = True
    return masks


def subset_dir(out: Path, index: int) -> Path:
    return out / "subsets" / f"{index:03d}"


def subset_key(config: DemoConfig, seed: int, rows: np.ndarray) -> dict:
    """What a subset model depends on; recorded in its marker and checked on resume."""
    return {"demo_model_key": config.stage_key("model"), "seed": seed, "rows": len(rows),
            "rows_sha256": rows_digest(rows)}


def is_done(directory: Path, key: dict) -> bool:
    """True when the subset is trained for exactly ``key``; an other key is an error, not a silent retrain."""
    marker = directory / MARKER
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text())["key"]
    if recorded != key:
        raise ConfigError(f"{directory} holds a model trained for other settings ({recorded} vs {key}); "
                          "use another --out for another demo or --seed")
    return True


def train_subset(demo_dir: Path, directory: Path, index: int, rows: list[int], key: dict, seed_offset: int = 0,
                 threads: int | None = None) -> float:
    """Train one subset model into ``directory`` (marker last); returns the training seconds. ``seed_offset``
    changes the initialization (the demo's seed plus it), not the order of the rows."""
    if threads:
        torch.set_num_threads(threads)
    config = demo_config(demo_dir)
    vocab_size = len(load_tokenizer(demo_dir / "tokenizer"))
    settings = settings_for(config, vocab_size, steps=steps_for(len(rows), config.batch_size))
    settings = replace(settings, seed=settings.seed + seed_offset)
    shutil.rmtree(directory, ignore_errors=True)  # a killed run's partial model
    started, cpu_started = time.perf_counter(), time.process_time()
    _, losses = train(settings, demo_dir / "data" / "document", vocab_size, directory, rows=rows,
                      save_revisions=False)
    seconds = time.perf_counter() - started
    marker = {"key": key, "index": index, "steps": settings.steps, "seconds": round(seconds, 2),
              "cpu_seconds": round(time.process_time() - cpu_started, 2), "threads": torch.get_num_threads(),
              "load_average": round(os.getloadavg()[0], 2),  # the machine may be shared: context for the timing
              "loss_last_50": float(np.mean(losses[-50:]))}
    write_whole(directory / MARKER, json.dumps(marker, indent=2))
    log.info("subset %03d: %d steps in %.0fs", index, settings.steps, seconds)
    return seconds


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count): the default number of
    subsets retrained at once, one torch thread each."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_jobs(fn: Callable[..., object], jobs: list[tuple], workers: int,
             on_done: Callable[[tuple], None] | None = None, pool_kwargs: dict | None = None) -> None:
    """``fn(*job)`` for every job: here, one after another, when ``workers`` is 1; else in ``workers`` spawned
    processes (forking a process that already runs torch threads can hang), each call given ``pool_kwargs`` (e.g.
    one torch thread), even for a single job, so every model a run trains in parallel computes alike. ``on_done(job)``
    follows each finished job."""
    if workers == 1:
        for job in jobs:
            fn(*job)
            if on_done:
                on_done(job)
        return
    if not jobs:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        futures = {pool.submit(fn, *job, **(pool_kwargs or {})): job for job in jobs}
        for future in as_completed(futures):
            future.result()
            if on_done:
                on_done(futures[future])


def retrain_subsets(demo_dir: Path, out: Path, count: int, seed: int, workers: int = 1,
                    on_done: Callable[[int], None] | None = None) -> list[dict]:
    """Train every missing subset model (``workers`` processes of one thread each when > 1); return the markers."""
    config = demo_config(demo_dir)
    n_rows = training_rows(demo_dir)
    if n_rows // 2 % config.batch_size:
        raise ConfigError(f"half of the {n_rows} training rows is not a whole number of {config.batch_size}-row steps")
    if count < 1 or workers < 1:
        raise ConfigError(f"--subsets and --workers must be at least 1, got {count} and {workers}")
    todo = []
    for j in range(count):
        rows = draw_subset(n_rows, j, seed)
        key = subset_key(config, seed, rows)
        if is_done(subset_dir(out, j), key):
            log.info("subset %03d: already trained, skipped", j)
            if on_done:
                on_done(j)
        else:
            todo.append((demo_dir, subset_dir(out, j), j, rows.tolist(), key))
    done = None if on_done is None else (lambda job: on_done(job[2]))
    run_jobs(train_subset, todo, workers, done, {"threads": 1})
    return [json.loads((subset_dir(out, j) / MARKER).read_text()) for j in range(count)]
