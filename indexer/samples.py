"""Training rows re-read from their source at merge, for a curvature's second pass (EK-FAC's eigenvalues).

The sample is evenly spaced over every indexed example, in shard order across parts (see
``attribution.curvature.evenly_spaced``), so it depends on the data, not on how many ranks or shards wrote
it. Sources that know their size (Megatron rows) are read row by row; streamed ones in one pass per part.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from attribution.curvature import evenly_spaced
from indexer.config import IndexConfig
from indexer.sources import open_source


class RowSampler:
    """``sampler(n)``: the token ids of about ``n`` evenly spaced indexed rows, cut as the runner cut them."""

    def __init__(self, shards: list[Path], config: IndexConfig, tokenizer, max_len: int) -> None:
        self.shards, self.config, self.tokenizer, self.max_len = shards, config, tokenizer, max_len

    def __call__(self, n: int) -> list[list[int]]:
        counts = [json.loads((s / "done.json").read_text())["count"] for s in self.shards]
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
        config = IndexConfig.load(part / "config.json")
        source = open_source(config.data, config.steps, config.batch_rows)
        if source.count is not None:  # random access
            examples = [e for p in positions for e in source.read(p, p + 1, self.tokenizer)]
        else:
            keep = set(positions)
            examples = [e for offset, e in enumerate(source.read(positions[0], positions[-1] + 1, self.tokenizer))
                        if positions[0] + offset in keep]
        eos = self.tokenizer.eos_token_id or 0
        return [e.token_ids.tolist()[: self.max_len] or [eos] for e in examples]
