"""The fine-tuning variant of the field's LDS (Kronfluence's GPT-2 on WikiText-2, scaled to this machine).

A pretrained model, the text case's full model (:class:`evaluation.text_case.TextCase`: real text of its own
sources), is fine-tuned on a small set of chunks from a source it never saw (the docstrings of Python's standard
library by default), tokenized with the case's own tokenizer; held-out chunks of that source are the queries.
Each retrain fine-tunes the same pretrained weights on what is left of the fine-tuning set, in the same seeded
order with the same schedule over its own steps; scores are taken with the fine-tuned model, over the
fine-tuning rows only (what the question "which fine-tuning examples drive this output?" ranks).

Layout: the pretraining case in ``OUT/case/``, the fine-tuning case in ``OUT/finetune/`` with the same files
(``tokenizer/``, ``data/document.{bin,idx}``, ``queries.npy``, ``model/`` and ``finetune.json``, written last),
so the LDS driver and the peers' bench read either alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from attribution.errors import ConfigError
from attribution.models import load_tokenizer
from evaluation.corpus import real_documents
from evaluation.text_case import TextCase, build_case, cut_chunks, epoch_order, reuse_or_clear, write_marker
from evaluation.training import TrainSettings, steps_for, train
from indexer.megatron import write_dataset

log = logging.getLogger(__name__)
FINETUNE_MARKER = "finetune.json"


@dataclass(frozen=True)
class FinetuneCase:
    """What the fine-tuning case is built from; saved as ``finetune.json`` and checked on reuse."""

    base: TextCase = field(default_factory=TextCase)
    """The pretraining case whose full model is fine-tuned."""
    source: str = "stdlib"
    """Real-text source of the fine-tuning chunks (``evaluation.corpus.SOURCES``; not one of the base's)."""
    rows: int = 200
    """Fine-tuning chunks."""
    queries: int = 50
    """Held-out chunks of the same source."""
    epochs: int = 3
    batch_size: int = 10
    learning_rate: float = 1e-3
    warmup_steps: int = 5
    chars_per_source: int = 100_000
    seed: int = 0
    name = "finetune"

    def __post_init__(self) -> None:
        if isinstance(self.base, dict):
            object.__setattr__(self, "base", TextCase(**self.base))
        for name in ("rows", "queries", "epochs", "batch_size", "warmup_steps", "chars_per_source"):
            if getattr(self, name) < 1:
                raise ConfigError(f"fine-tuning case: {name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"fine-tuning case: learning_rate must be positive, got {self.learning_rate}")
        if self.source in self.base.sources:
            raise ConfigError(f"fine-tuning case: source {self.source!r} is one the base model was pretrained on "
                              f"({list(self.base.sources)}); choose another")

    @property
    def seq_len(self) -> int:
        return self.base.seq_len

    def directory(self, out: Path) -> Path:
        return out / self.name

    def init_model(self, out: Path) -> Path:
        return self.base.directory(out) / "model"

    def settings(self, steps: int, train_seed: int = 0) -> TrainSettings:
        return replace(self.base.settings(steps), batch_size=self.batch_size, learning_rate=self.learning_rate,
                       warmup_steps=self.warmup_steps, seed=self.seed + 1000 * train_seed)

    def order(self, dropped: np.ndarray | None = None, train_seed: int = 0) -> list[int]:
        """Row ids in fine-tuning order: a seeded permutation per epoch, ``dropped`` rows left out (``train_seed``
        > 0: another seed's permutations)."""
        return epoch_order(self.rows, self.epochs, (self.seed, 23) + ((train_seed,) if train_seed else ()), dropped)

    def build(self, out: Path) -> Path:
        """Build (or reuse) the pretraining case and the fine-tuning case; returns ``OUT/finetune``."""
        base_dir = build_case(out, self.base)
        directory = self.directory(out)
        if reuse_or_clear(directory, FINETUNE_MARKER, self, "fine-tuning case"):
            return directory
        tokenizer = load_tokenizer(base_dir / "tokenizer")
        tokenizer.save_pretrained(str(directory / "tokenizer"))
        docs = real_documents(self.chars_per_source, 2_000, self.seed, (self.source,))
        cut = cut_chunks(tokenizer, docs, self.seq_len + 1, self.rows + self.queries, self.seed)
        (directory / "data").mkdir()
        write_dataset(directory / "data" / "document", list(cut[: self.rows]), dtype=np.uint16)
        np.save(directory / "queries.npy", cut[self.rows :])
        order = self.order()
        steps = steps_for(len(order), self.batch_size)
        _, losses = train(self.settings(steps), directory / "data" / "document", len(tokenizer), directory / "model",
                          rows=order, save_revisions=False, init=self.init_model(out))
        tokenizer.save_pretrained(str(directory / "model"))
        record = write_marker(directory, FINETUNE_MARKER, self, steps, losses)
        log.info("fine-tuning case: %d chunks of %s, %d queries, %d steps; loss %.2f -> %.2f", self.rows,
                 self.source, self.queries, steps, record["loss_first_10"], record["loss_last_10"])
        return directory
