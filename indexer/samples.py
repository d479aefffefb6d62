"""Training rows re-read from their source for a curvature's extra pass: at merge, EK-FAC's eigenvalues
(:class:`RowSampler`, over the indexed shards); before the sketch pass, the whitened K-FAC factors
(:func:`source_sample`, over the source).

The sample is evenly spaced over every example (in shard order across parts at merge; see
``attribution.curvature.evenly_spaced``), so it depends on the data, not on how many ranks or shards wrote
it; a stream of unknown length before the sketch pass gives its first rows. Sources that know their size
(Megatron rows) are read row by row; streamed ones in one pass.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from attribution.curvature import evenly_spaced
from attribution.kfac import RowSample
from indexer.config import IndexConfig
from indexer.sources import DataSource, open_source
from indexer.workdir import CONFIG, DONE


class RowSampler:
    """``sampler(n)``: the token ids of about ``n`` evenly spaced indexed rows, cut as the runner cut them."""

    def __init__(self, shards: list[Path], config: IndexConfig, tokenizer, max_len: int) -> None:
        self.shards, self.config, self.tokenizer, self.max_len = shards, config, tokenizer, max_len

    def __call__(self, n: int) -> list[list[int]]:
        counts = [json.loads((s / DONE).read_text())["count"] for s in self.shards]
        wanted: dict[Path, list[int]] = defaultdict(list)  # part directory -> source positions
        first = 0
        picks = iter(evenly_spaced(sum(counts), n))
        pick = next(picks, None)
        for shard, count in zip(self.shards, counts, strict=True):
            start = int(shard.name.split("-")[1]) * self.config.storage.shard_size
            while pick is not None and pick < first + count:
                wanted[shard.parent].append(start + pick - first)
                pick = next(picks, None)
            first += count
        return [row for part, positions in wanted.items() for row in self._read(part, positions)]

    def _read(self, part: Path, positions: list[int]) -> list[list[int]]:
        config = IndexConfig.load(part / CONFIG)
        source = open_source(config.data, config.steps, config.batch_rows, config.rows)
        return read_rows(source, positions, self.tokenizer, self.max_len)


def source_sample(source: DataSource, tokenizer, max_len: int) -> RowSample:
    """``sampler(n)``: about ``n`` rows evenly spaced over ``source`` (its first ``n`` when its size is unknown)."""

    def sample(n: int) -> list[list[int]]:
        positions = evenly_spaced(source.count, n) if source.count is not None else list(range(n))
        return read_rows(source, positions, tokenizer, max_len)

    return sample


def read_rows(source: DataSource, positions: list[int], tokenizer, max_len: int) -> list[list[int]]:
    """The token ids of the examples at ``positions`` (ascending) of ``source``, cut as the runner cuts them."""
    if not positions:
        return []
    if source.count is not None:  # random access
        examples = [e for p in positions for e in source.read(p, p + 1, tokenizer)]
    else:
        keep = set(positions)
        examples = [e for offset, e in enumerate(source.read(positions[0], positions[-1] + 1, tokenizer))
                    if positions[0] + offset in keep]
    eos = tokenizer.eos_token_id or 0
    return [e.token_ids.tolist()[:max_len] or [eos] for e in examples]
