"""The shard runner: every rank computes its shards (``s % world == rank``), skipping finished ones.

``(rank, world)`` come from flags, torchrun (``RANK``/``WORLD_SIZE``) or a Slurm array
(``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``); one process is the default.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attribution.batching import DEFAULT_BATCHING, Batching, BatchMemoryError
from attribution.curvature import (
    SketchPassStatistics,
    is_prefit,
    load_curvature,
    new_statistics,
    prefit_curvature,
)
from attribution.embeddings import chunk_count
from attribution.encoder import GradientEncoder, load_checkpoints
from attribution.errors import ConfigError
from attribution.models import load_tokenizer
from indexer.config import SEARCH_SETTINGS, IndexConfig, check_same, differing_fields
from indexer.errors import CorruptShardError, IndexWriteError
from indexer.manifest import prefit_file, statistics_file
from indexer.metadata import metadata_table
from indexer.samples import source_sample
from indexer.shards import ShardContents, shard_is_complete, write_shard
from indexer.sources import DataSource, open_source
from indexer.workdir import CONFIG, DONE, TMP_SHARDS, shard_name, work_dir

log = logging.getLogger(__name__)
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world <= 0 or not 0 <= self.rank < self.world:
            raise ConfigError(f"rank {self.rank} is not in 0..world-1 for world size {self.world}")


def detect_rank(rank: int | None = None, world: int | None = None) -> Rank:
    """Flags first, then torchrun's, then Slurm array's environment, else a single process."""
    if rank is not None or world is not None:
        return Rank(rank or 0, world or 1)
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Rank(int(env["RANK"]), int(env["WORLD_SIZE"]))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return Rank(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
    return Rank()


def make_encoder(config: IndexConfig, device: str = "cpu", dtype: str = "float32") -> GradientEncoder:
    """Load the model at every revision with its sketcher (same code as the query side)."""
    tokenizer = load_tokenizer(config.tokenizer or config.model)
    settings = config.attribution
    checkpoints = load_checkpoints(config.model, settings.revisions, settings.sketch, settings.normalizer,
                                   device, dtype)
    return GradientEncoder(checkpoints, tokenizer, settings.scoring.mode, settings.revision_weights)


def context_length(encoder: GradientEncoder, config: IndexConfig) -> int:
    """Tokens kept per training row: the model's context (or ``max_tokens``) plus one (input row[:-1],
    labels row[1:])."""
    limit = encoder.max_length if config.max_tokens is None else min(config.max_tokens, encoder.max_length)
    return limit + 1


def window_count(encoder: GradientEncoder, config: IndexConfig) -> int | None:
    """Windows per row of the index (None without windows): every shard pads to this count."""
    window = config.attribution.window
    return -(-context_length(encoder, config) // window) if window else None


def fixed_windows(raw: torch.Tensor, windows: int) -> torch.Tensor:
    """Pad the window axis to the index-wide count so every shard has the same shape."""
    if raw.shape[1] >= windows:
        return raw[:, :windows]
    pad = torch.zeros(raw.shape[0], windows - raw.shape[1], raw.shape[2], dtype=raw.dtype)
    return torch.cat([raw, pad], dim=1)


def raw_sketch_batches(encoder: GradientEncoder, config: IndexConfig, rows: list[list[int]],
                       batching: Batching = DEFAULT_BATCHING,
                       statistics: list[SketchPassStatistics | None] | None = None) -> Iterator[list[torch.Tensor]]:
    """Raw sketches of ``rows`` per checkpoint, one batch (``batching``: rows and a token budget) at a time,
    exactly as the indexer stores them (window axis padded to the index-wide count); rows must already be cut
    to :func:`context_length`. ``statistics`` (one per checkpoint) gather what the curvature fits on along the
    way. Running out of memory is a :class:`BatchMemoryError` naming the flag to lower."""
    windows = window_count(encoder, config)
    for start, stop in batching.spans([len(r) for r in rows]):
        try:
            raws = encoder.raw_rows(rows[start:stop], config.attribution.window, statistics)
        except (torch.OutOfMemoryError, MemoryError) as err:
            raise BatchMemoryError(stop - start, max(len(r) for r in rows[start:stop]), batching) from err
        except RuntimeError as err:
            if "allocate" not in str(err):
                raise
            raise BatchMemoryError(stop - start, max(len(r) for r in rows[start:stop]), batching) from err
        yield [fixed_windows(raw, windows) for raw in raws] if windows else raws


def prefit_curvatures(encoder: GradientEncoder, config: IndexConfig, out: Path, fit: bool = True) -> None:
    """Give each checkpoint its curvature before the sketch pass when the training sketches depend on it
    (kfac_whitened): loaded from ``OUT/work``, or (``fit``) fitted on rows sampled from the source and saved there
    first. Ranks that fit it at once fit the same one; appended parts load the first part's."""
    curvature = config.attribution.curvature
    if not is_prefit(curvature):
        return
    for c, ckpt in enumerate(encoder.checkpoints):
        path = work_dir(out) / prefit_file(c)
        if not path.is_file():
            if not fit:
                raise CorruptShardError(f"{path}: missing, but the shards were sketched with it; rebuild with "
                                        "--overwrite")
            source = open_source(config.data, config.steps, config.batch_rows, config.rows)
            rows = source_sample(source, encoder.tokenizer, context_length(encoder, config))
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            prefit_curvature(curvature, ckpt.sketcher, rows).save(tmp)
            os.replace(tmp, path)
        ckpt.preconditioner = load_curvature(path)


class ShardRunner:
    """Computes and writes the shards of one rank."""

    def __init__(self, config: IndexConfig, out: Path, encoder: GradientEncoder, embedder,
                 batching: Batching = DEFAULT_BATCHING, progress: Progress | None = None, work: Path | None = None,
                 id_offset: int = 0) -> None:
        """``work`` is the shard directory (``OUT/work``, or ``OUT/work/parts/NN`` for appended data);
        ``id_offset`` shifts the ids of streamed text examples of appended parts past earlier ones."""
        self.config, self.out, self.encoder, self.embedder = config, out, encoder, embedder
        self.batching, self.progress = batching, progress
        self.work = work or work_dir(out)
        self.id_offset = id_offset
        self.source: DataSource = open_source(config.data, config.steps, config.batch_rows, config.rows)
        self.max_len = context_length(encoder, config)
        self.timings = {"read": 0.0, "sketch": 0.0, "embed": 0.0, "write": 0.0}
        self.examples_done = 0

    def prepare_workdir(self, overwrite: bool = False) -> None:
        """Create ``work/`` with the config, or check that an existing one matches."""
        saved = self.work / CONFIG
        if saved.is_file() and not overwrite:
            earlier = IndexConfig.load(saved)
            check_same(earlier, self.config, self.out, allow=SEARCH_SETTINGS)
            changed = differing_fields(earlier, self.config)  # search settings only: the rest was checked
            if changed:
                log.info("%s: search settings changed (%s); the shards stay valid", self.out,
                         "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
                self.config.save(saved)
        elif saved.is_file():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if not saved.is_file():
            self.config.save(saved)

    def shard_count(self) -> int | None:
        if self.source.count is None:
            return None
        return -(-self.source.count // self.config.storage.shard_size)

    def run(self, rank: Rank) -> list[int]:
        """Compute every missing shard of this rank; returns the shards written."""
        for tmp in self.work.glob(TMP_SHARDS):
            index = int(tmp.name.rsplit("-", 1)[1])
            if index % rank.world == rank.rank:
                shutil.rmtree(tmp)  # a killed run's partial shard: redo it
        for tmp in self.work.glob(".tmp-statistics-*"):
            if int(tmp.name.split("-")[2]) % rank.world == rank.rank:
                tmp.unlink()
        prefit_curvatures(self.encoder, self.config, self.out)
        written = []
        total = self.shard_count()
        if total is not None and self.progress and self.source.count is not None:
            mine = range(rank.rank, total, rank.world)
            size = self.config.storage.shard_size
            self.progress("total", sum(min(size, self.source.count - s * size) for s in mine))
        index = rank.rank
        while total is None or index < total:
            if shard_is_complete(self.work / shard_name(index)):
                log.info("%s: complete, skipped", shard_name(index))
                if self.progress:
                    done = json.loads((self.work / shard_name(index) / DONE).read_text())
                    self.progress("examples", done["count"])
            elif not self.compute(index):
                break  # a stream ended before this shard
            else:
                written.append(index)
            index += rank.world
        return written

    def compute(self, index: int) -> bool:
        """Compute one shard; ``False`` if the source has no examples for it."""
        start = index * self.config.storage.shard_size
        tokenizer = self.encoder.tokenizer
        clock = time.perf_counter()
        examples = list(self.source.read(start, start + self.config.storage.shard_size, tokenizer))
        if not examples:
            return False
        eos = tokenizer.eos_token_id or 0
        rows = [(e.token_ids.tolist()[: self.max_len] or [eos]) for e in examples]
        texts = [e.text if e.text is not None else tokenizer.decode(r) for e, r in zip(examples, rows, strict=True)]
        clock = self._tick("read", clock)
        sketches, statistics = self._sketch(rows)
        clock = self._tick("sketch", clock)
        chunks = chunk_count(self.max_len, self.config.embedding_chunk_tokens)
        if chunks == 1:  # rows fit the embedding model whole: one vector each, as before chunking existed
            embeddings = self.embedder.embed(texts).astype(np.float16)
        else:
            embeddings = self.embedder.embed_rows(rows, texts, tokenizer.decode, chunks,
                                                  self.config.embedding_chunk_tokens).astype(np.float16)
        clock = self._tick("embed", clock)
        offset = 0 if self.source.global_ids else self.id_offset
        for example in examples:
            example.example_id += offset
        contents = ShardContents(
            ids=np.asarray([e.example_id for e in examples], dtype=np.int64),
            sketches=sketches,
            embeddings=embeddings,
            meta=metadata_table(examples, texts),
        )
        try:
            self._write_statistics(index, statistics)  # before the shard: a finished shard always has them
            write_shard(self.work, index, contents)
        except OSError as err:
            raise IndexWriteError(f"writing {shard_name(index)} under {self.work} failed: {err}. Finished shards "
                                  "are kept: free space (or fix permissions) and rerun the same command") from err
        self._tick("write", clock)
        self.examples_done += len(examples)
        log.info("%s: %d examples", shard_name(index), len(examples))
        if self.progress:
            self.progress("shards", 1)
        return True

    def _tick(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[stage] += now - since
        return now

    def _sketch(self, rows: list[list[int]]) -> tuple[list[np.ndarray], list[SketchPassStatistics | None]]:
        """Raw float32 sketches of every checkpoint, window axis padded to the index-wide count, and the
        statistics the curvature fits on (None per checkpoint for kinds that need none)."""
        statistics = [new_statistics(self.config.attribution.curvature) for _ in self.encoder.checkpoints]
        parts: list[list[torch.Tensor]] = [[] for _ in self.encoder.checkpoints]
        for raws in raw_sketch_batches(self.encoder, self.config, rows, self.batching, statistics):
            for part, raw in zip(parts, raws, strict=True):
                part.append(raw)
            if self.progress:
                self.progress("examples", len(raws[0]))
        return [torch.cat(p).numpy().astype(np.float32) for p in parts], statistics

    def _write_statistics(self, index: int, statistics: list[SketchPassStatistics | None]) -> None:
        """Each checkpoint's statistics of shard ``index`` under a temporary name, renamed into place."""
        for c, stats in enumerate(statistics):
            if stats is not None:
                name = statistics_file(index, c)
                stats.save(self.work / f".tmp-{name}")
                os.replace(self.work / f".tmp-{name}", self.work / name)
