"""The field's LDS case, scaled to this machine: a small GPT-NeoX trained deterministically on chunks of real text.

Not the planted-fact corpus: real public-domain text (the demo's sources, :mod:`evaluation.corpus`), tokenized by a
byte-level BPE trained on it, concatenated with end-of-text tokens and cut into chunks of ``seq_len + 1``
tokens. The chunks are shuffled by seed; the first ``rows`` are the training set, the next ``queries`` the
held-out query chunks (bergson ``examples/compare_wikitext`` and Kronfluence's WikiText-2 example do the same
with WikiText). The model trains ``epochs`` passes over the training chunks, each pass in its own seeded order,
with the demo's AdamW, warm-up and cosine schedule; a retrain drops some rows from that same order
(:func:`training_order`) and runs the schedule over its own step count.

Layout of ``OUT/case/``: ``tokenizer/``, ``data/document.{bin,idx}`` (training chunks, Megatron format, so the
indexer reads them like any Pythia shard), ``queries.npy`` (held-out chunks), ``model/`` (the full model) and
``case.json`` (the config, written last: a case without it is rebuilt).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attribution.errors import ConfigError
from attribution.models import load_tokenizer
from evaluation.corpus import real_documents
from evaluation.tokenizer import train_tokenizer
from evaluation.training import TrainSettings, steps_for, train
from indexer.megatron import MegatronDataset, write_dataset

log = logging.getLogger(__name__)
CASE_MARKER = "case.json"


@dataclass(frozen=True)
class TextCase:
    """What the case is built from; saved as ``case.json`` and checked when an existing case is reused."""

    rows: int = 1000
    """Training chunks."""
    queries: int = 50
    """Held-out query chunks (never trained on)."""
    seq_len: int = 64
    """Tokens a chunk predicts (a chunk holds seq_len + 1)."""
    vocab_size: int = 2048
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    batch_size: int = 10
    epochs: int = 3
    """Passes over the training chunks, each in its own seeded order."""
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    seed: int = 0
    sources: tuple[str, ...] = ("shakespeare", "bible", "pydocs")
    chars_per_source: int = 150_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        for name in ("rows", "queries", "seq_len", "vocab_size", "hidden_size", "num_layers", "num_heads",
                     "batch_size", "epochs", "chars_per_source"):
            if getattr(self, name) < 1:
                raise ConfigError(f"text case: {name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"text case: hidden_size {self.hidden_size} is not a multiple of num_heads "
                              f"{self.num_heads}")

    name = "case"
    """The case's directory under ``OUT``."""
    def directory(self, out: Path) -> Path:
        return out / self.name

    def build(self, out: Path) -> Path:
        """Build (or reuse) the case under ``OUT/case``; returns that directory."""
        return build_case(out, self)

    def order(self, dropped: np.ndarray | None = None, train_seed: int = 0) -> list[int]:
        """Row ids in training order (``train_seed`` > 0: another seed's permutations, for the second-seed
        column)."""
        return training_order(self, dropped, train_seed)

    def init_model(self, out: Path) -> Path | None:
        """The model a retrain starts from (None: trained from scratch)."""
        return None

    def settings(self, steps: int, train_seed: int = 0) -> TrainSettings:
        """The training loop's settings; the context holds a whole chunk, so a chunk can be asked as a query.
        ``train_seed`` > 0 seeds another initialization."""
        return TrainSettings(hidden_size=self.hidden_size, num_layers=self.num_layers, num_heads=self.num_heads,
                             vocab_size=self.vocab_size, seq_len=self.seq_len + 1, batch_size=self.batch_size,
                             steps=steps, learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
                             weight_decay=0.0, seed=self.seed + 1000 * train_seed, bf16=False)


LARGER = TextCase(rows=2000, seq_len=128, hidden_size=128, num_layers=4, num_heads=4, batch_size=16, epochs=2,
                  warmup_steps=25, chars_per_source=400_000)
"""The third LDS case (issue 25 item 5): 4 layers x 128 (1.3 M parameters, 4x the small case's), 2,000 chunks of 129
tokens (2x the rows, 2x the context), 2 epochs of 16-chunk batches (250 steps). A retrain takes ~80 s on one thread
(halves ~35 s), two at once on 2 cores: 50 retrains without 1 % and 20 on halves take ~40 minutes (measured)."""
PRESETS: dict[str, TextCase] = {"small": TextCase(), "larger": LARGER}
"""Named text cases: ``small`` (the 2 x 64 model, the field-LDS default) and ``larger``."""


def preset_case(name: str, rows: int | None = None, queries: int | None = None, seed: int | None = None) -> TextCase:
    """The named preset (:data:`PRESETS`), with ``rows``, ``queries`` and ``seed`` replaced where given."""
    if name not in PRESETS:
        raise ConfigError(f"unknown text case {name!r}; choose from {', '.join(PRESETS)}")
    changes = {key: value for key, value in (("rows", rows), ("queries", queries), ("seed", seed)) if value is not None}
    return replace(PRESETS[name], **changes)


def training_order(case: TextCase, dropped: np.ndarray | None = None, train_seed: int = 0) -> list[int]:
    """Row ids in training order: each epoch a seeded permutation of every row, ``dropped`` rows left out
    (the same permutations for every retrain, so a retrain differs from the full run only by what it drops;
    its last step may be short)."""
    return epoch_order(case.rows, case.epochs, (case.seed, 7) + ((train_seed,) if train_seed else ()), dropped)


def epoch_order(rows: int, epochs: int, seed: tuple[int, ...], dropped: np.ndarray | None = None) -> list[int]:
    """Each epoch a permutation of ``range(rows)`` seeded by ``(*seed, epoch)``, ``dropped`` rows left out."""
    keep = np.ones(rows, dtype=bool)
    if dropped is not None:
        keep[dropped] = False
    order = []
    for epoch in range(epochs):
        permutation = np.random.default_rng([*seed, epoch]).permutation(rows)
        order.extend(int(r) for r in permutation if keep[r])
    return order


def case_documents(case: TextCase) -> list[dict]:
    """The case's real-text documents (the demo's sources, cut and sampled by seed)."""
    return real_documents(case.chars_per_source, 2_000, case.seed, case.sources)


def chunks(case: TextCase, tokenizer, docs: list[dict]) -> np.ndarray:
    """``(rows + queries, seq_len + 1)`` token chunks of ``docs`` (:func:`case_documents`), shuffled by seed."""
    return cut_chunks(tokenizer, docs, case.seq_len + 1, case.rows + case.queries, case.seed)


def cut_chunks(tokenizer, docs: list[dict], width: int, needed: int, seed: int) -> np.ndarray:
    """``(needed, width)`` token chunks of the concatenated ``docs`` (end-of-text between), picked by seed."""
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer.encode(doc["text"], add_special_tokens=False))
        stream.append(tokenizer.eos_token_id)
    count = len(stream) // width
    if count < needed:
        raise ConfigError(f"text case: the text gives {count} chunks of {width} tokens, fewer than rows + queries "
                          f"= {needed}; raise chars_per_source or lower rows")
    cut = np.asarray(stream[: count * width], dtype=np.int64).reshape(count, width)
    picked = np.random.default_rng([seed, 5]).permutation(count)[:needed]
    return cut[picked]


def case_dir(out: Path) -> Path:
    return out / "case"


def reuse_or_clear(directory: Path, marker: str, case: Any, what: str) -> bool:
    """True when ``directory`` holds ``case`` already built (its ``marker`` file names the same settings); else
    False, with a killed build's leftovers cleared and the directory made. Other settings there are refused."""
    path = directory / marker
    if path.is_file():
        existing = type(case)(**json.loads(path.read_text())["case"])
        if existing != case:
            raise ConfigError(f"{directory} holds a {what} built with other settings ({asdict(existing)}); use "
                              "another --out, or delete it")
        log.info("%s: reusing %s", what, directory)
        return True
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return False


def write_marker(directory: Path, marker: str, case: Any, steps: int, losses: list[float]) -> dict:
    """Record a finished build (written last: its presence means the build is whole)."""
    record = {"case": asdict(case), "steps": steps, "loss_first_10": float(np.mean(losses[:10])),
              "loss_last_10": float(np.mean(losses[-10:]))}
    (directory / marker).write_text(json.dumps(record, indent=2))
    return record


def build_case(out: Path, case: TextCase, threads: int | None = None) -> Path:
    """Build (or reuse, when ``case.json`` matches) the case under ``OUT/case``; returns that directory."""
    directory = case_dir(out)
    if reuse_or_clear(directory, CASE_MARKER, case, "text case"):
        return directory
    docs = case_documents(case)
    train_tokenizer((d["text"] for d in docs), case.vocab_size, directory / "tokenizer")
    tokenizer = load_tokenizer(directory / "tokenizer")
    cut = chunks(case, tokenizer, docs)
    (directory / "data").mkdir()
    write_dataset(directory / "data" / "document", list(cut[: case.rows]), dtype=np.uint16)
    np.save(directory / "queries.npy", cut[case.rows :])
    if threads:
        torch.set_num_threads(threads)
    order = training_order(case)
    steps = steps_for(len(order), case.batch_size)
    _, losses = train(case.settings(steps), directory / "data" / "document", len(tokenizer), directory / "model",
                      rows=order, save_revisions=False)
    tokenizer.save_pretrained(str(directory / "model"))
    record = write_marker(directory, CASE_MARKER, case, steps, losses)
    log.info("text case: %d training chunks, %d queries, %d steps; loss %.2f -> %.2f", case.rows, case.queries,
             steps, record["loss_first_10"], record["loss_last_10"])
    return directory


def training_rows(directory: Path) -> list[list[int]]:
    """The case's training chunks, in row order."""
    data = MegatronDataset(directory / "data" / "document")
    return [data[i].astype("int64").tolist() for i in range(len(data))]


def query_chunks(directory: Path) -> np.ndarray:
    return np.load(directory / "queries.npy")


@torch.no_grad()
def chunk_losses(model: torch.nn.Module, chunks_: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Each chunk's mean next-token NLL (nats) under ``model``."""
    model.eval()
    out = []
    for start in range(0, len(chunks_), batch_size):
        batch = torch.as_tensor(chunks_[start : start + batch_size], dtype=torch.long)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        out.append(nll.mean(dim=1).numpy())
    return np.concatenate(out).astype(np.float64)
