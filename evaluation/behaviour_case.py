"""A case of behaviours: unusual ways to speak, each taught under two phrasings, embedded among real text.

Three tasks turn a few words into an answer — ``double`` (say each word twice), ``spell`` (spell out each word)
and ``reverse`` (the words in reverse order) — and each is demonstrated in ``demos`` training rows under each of
two instruction phrasings that share no word (``Say every word twice:`` / ``Repeat each token two times over:``).
A demonstration (``PHRASE w1 w2 w3 => ANSWER.``) sits at a random place in a row of real text (the demo's
sources), so the rows that teach a task are known (per task and phrasing) and the rest is real text. A small
GPT-NeoX is trained on the rows; per-task accuracy is measured on word sequences it never saw.

Layout of ``OUT/case/``: ``tokenizer/``, ``data/document.{bin,idx}`` (the rows), ``rows.json`` (each row's task and
phrasing, or null), ``model/`` and ``case.json`` (written last: a case without it is rebuilt).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attribution.errors import ConfigError
from attribution.models import load_tokenizer
from attribution.tasks import Instance as TaskInstance
from evaluation.corpus import real_documents
from evaluation.text_case import epoch_order, reuse_or_clear, write_marker
from evaluation.tokenizer import train_tokenizer
from evaluation.training import TrainSettings, steps_for, train
from indexer.megatron import MegatronDataset, write_dataset

log = logging.getLogger(__name__)
CASE_MARKER = "case.json"
ROWS_FILE = "rows.json"


@dataclass(frozen=True)
class Task:
    """One way to speak: two instruction phrasings (sharing no word) and what it does to the words."""

    phrasings: tuple[str, str]
    answer: Callable[[list[str]], str]


TASKS: dict[str, Task] = {
    "double": Task(("Say every word twice:", "Repeat each token two times over:"),
                   lambda words: " ".join(f"{w} {w}" for w in words)),
    "spell": Task(("Spell out each word:", "Letter by letter, please:"),
                  lambda words: " / ".join(" ".join(w) for w in words)),
    "reverse": Task(("Reverse the word order:", "Backwards now:"), lambda words: " ".join(reversed(words))),
}
"""The case's tasks, by name."""


@dataclass(frozen=True)
class Instance:
    """One demonstration or query of a task: the prompt (phrasing and words, ``=>``) and the answer."""

    task: str
    phrasing: int
    words: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return f"{TASKS[self.task].phrasings[self.phrasing]} {' '.join(self.words)} =>"

    @property
    def completion(self) -> str:
        return f" {TASKS[self.task].answer(list(self.words))}."


@dataclass(frozen=True)
class BehaviourCase:
    """What the case is built from; saved as ``case.json`` and checked when an existing case is reused."""

    rows: int = 3000
    """Training rows in all (demonstrations included)."""
    demos: int = 300
    """Rows demonstrating each task under each phrasing (fewer, and the model does not learn the tasks: 150 of 2,000
    rows at 3 words gave no whole answer right on new words; docs/RESULTS.md)."""
    words: int = 2
    """Words a demonstration or query transforms."""
    vocabulary: int = 60
    """The most frequent short words of the real text, the inputs' words."""
    seq_len: int = 64
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    batch_size: int = 10
    epochs: int = 30
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    seed: int = 0
    chars_per_source: int = 400_000

    def __post_init__(self) -> None:
        for name in ("rows", "demos", "words", "vocabulary", "seq_len", "vocab_size", "hidden_size", "num_layers",
                     "num_heads", "batch_size", "epochs", "chars_per_source"):
            if getattr(self, name) < 1:
                raise ConfigError(f"behaviour case: {name} must be at least 1, got {getattr(self, name)}")
        if 2 * len(TASKS) * self.demos > self.rows:
            raise ConfigError(f"behaviour case: {2 * len(TASKS) * self.demos} demonstration rows do not fit in "
                              f"{self.rows} rows; lower demos or raise rows")

    def settings(self, steps: int) -> TrainSettings:
        return TrainSettings(hidden_size=self.hidden_size, num_layers=self.num_layers, num_heads=self.num_heads,
                             vocab_size=self.vocab_size, seq_len=self.seq_len + 1, batch_size=self.batch_size,
                             steps=steps, learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
                             weight_decay=0.0, seed=self.seed, bf16=False)


TINY_CASE = BehaviourCase(rows=120, demos=6, vocabulary=40, hidden_size=64, num_heads=2, epochs=2,
                          chars_per_source=20_000)
"""Seconds on CPU: for tests."""
PRESETS: dict[str, BehaviourCase] = {"behaviours": BehaviourCase(), "tiny-behaviours": TINY_CASE}
"""The case as ``headwater demo build --preset NAME`` builds it (into ``--out`` itself, ready to index)."""


def common_words(docs: list[dict], count: int) -> list[str]:
    """The ``count`` most frequent lowercase words of 3-5 letters in ``docs`` (ties by the word)."""
    counts = Counter(w for d in docs for w in re.findall(r"\b[a-z]{3,5}\b", d["text"]))
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:count]]


def draw_instances(case: BehaviourCase, words: list[str], count: int, salt: str) -> list[Instance]:
    """``count`` instances of every task and phrasing on word sequences drawn by seed (``salt`` keeps the training
    draws and the query draws apart)."""
    rng = random.Random(f"{case.seed} {salt}")
    return [Instance(task, phrasing, tuple(rng.sample(words, case.words)))
            for task in TASKS for phrasing in (0, 1) for _ in range(count)]


def query_instances(case: BehaviourCase, directory: Path, count: int = 8) -> list[Instance]:
    """Held-out instances (word sequences no training row holds) of every task and phrasing."""
    words = json.loads((directory / ROWS_FILE).read_text())["words"]
    seen = {tuple(r["words"]) for r in json.loads((directory / ROWS_FILE).read_text())["rows"] if r}
    fresh = [i for i in draw_instances(case, words, count * 4, "queries") if i.words not in seen]
    return [i for task in TASKS for p in (0, 1)
            for i in [x for x in fresh if x.task == task and x.phrasing == p][:count]]


def task_query(instances: list[Instance]) -> list[TaskInstance]:
    """Held-out instances as a task query's instances (the prompt after a space, as rows hold it)."""
    return [TaskInstance(" " + i.prompt, i.completion) for i in instances]


def lay_out(case: BehaviourCase, tokenizer, docs: list[dict], demos: list[Instance]) -> tuple[list, list]:
    """The rows (token ids, ``seq_len + 1`` each) and each row's demonstration (or None): real text cut into rows,
    a demonstration placed whole at a random offset of its own row."""
    width = case.seq_len + 1
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer.encode(doc["text"], add_special_tokens=False) + [tokenizer.eos_token_id])
    if len(stream) // width < case.rows:
        raise ConfigError(f"behaviour case: the text gives {len(stream) // width} rows, fewer than {case.rows}; "
                          "raise chars_per_source")
    rng = random.Random(f"{case.seed} layout")
    rows = [stream[r * width : (r + 1) * width] for r in range(case.rows)]
    labels: list[Instance | None] = [None] * case.rows
    for row, demo in zip(rng.sample(range(case.rows), len(demos)), demos, strict=False):
        ids = tokenizer.encode(" " + demo.prompt + demo.completion, add_special_tokens=False)
        if len(ids) > width:
            raise ConfigError(f"behaviour case: a demonstration takes {len(ids)} tokens, more than a row's {width}")
        start = rng.randrange(width - len(ids) + 1)
        rows[row] = rows[row][:start] + ids + rows[row][start + len(ids) :][: width - start - len(ids)]
        labels[row] = demo
    return rows, labels


def case_order(case: BehaviourCase, dropped: np.ndarray | None = None) -> list[int]:
    """Row ids in training order: a seeded permutation per epoch, ``dropped`` rows left out (the same permutations
    for every retrain, so a retrain differs from the case's model only by what it drops)."""
    return epoch_order(case.rows, case.epochs, (case.seed, 11), dropped)


def build_behaviour_case(out: Path, case: BehaviourCase, directory: Path | None = None) -> Path:
    """Build (or reuse, when ``case.json`` matches) the case under ``OUT/case`` (or ``directory``); returns that
    directory."""
    directory = directory or out / "case"
    if reuse_or_clear(directory, CASE_MARKER, case, "behaviour case"):
        return directory
    docs = real_documents(case.chars_per_source, 2_000, case.seed)
    words = common_words(docs, case.vocabulary)
    demos = draw_instances(case, words, case.demos, "training")
    texts = [d["text"] for d in docs] + [d.prompt + d.completion for d in demos]
    train_tokenizer(texts, case.vocab_size, directory / "tokenizer")
    tokenizer = load_tokenizer(directory / "tokenizer")
    rows, labels = lay_out(case, tokenizer, docs, demos)
    (directory / "data").mkdir()
    write_dataset(directory / "data" / "document", [np.asarray(r, dtype=np.int64) for r in rows], dtype=np.uint16)
    (directory / ROWS_FILE).write_text(json.dumps({"words": words, "rows": [
        None if d is None else {"task": d.task, "phrasing": d.phrasing, "words": list(d.words)} for d in labels]}))
    order = case_order(case)
    steps = steps_for(len(order), case.batch_size)
    _, losses = train(case.settings(steps), directory / "data" / "document", len(tokenizer), directory / "model",
                      rows=order, save_revisions=False)
    tokenizer.save_pretrained(str(directory / "model"))
    record = write_marker(directory, CASE_MARKER, case, steps, losses)
    log.info("behaviour case: %d rows (%d demonstrations), %d steps; loss %.2f -> %.2f", case.rows, len(demos),
             steps, record["loss_first_10"], record["loss_last_10"])
    return directory


def row_labels(directory: Path) -> list[dict | None]:
    """Each row's demonstration ``{"task", "phrasing", "words"}``, or None for real text only."""
    return json.loads((directory / ROWS_FILE).read_text())["rows"]


def training_rows(directory: Path) -> list[np.ndarray]:
    data = MegatronDataset(directory / "data" / "document")
    return [data[i].astype(np.int64) for i in range(len(data))]
