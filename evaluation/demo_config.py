"""The demo's configuration: one typed record, each field tagged with the stage it affects.

A stage is rebuilt when any field of its own stage or of an earlier stage changes;
the field docstrings (``help``) are the CLI help. Presets: ``default`` (the demo), ``second``
(the second case: other text, fact templates, names, size and seed, for checking that a result
is not the demo's alone) and their seconds-long versions ``tiny`` and ``tiny-second`` (tests).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace

from attribution.errors import ConfigError
from evaluation.corpus import DEFAULT_SOURCES, SOURCES
from evaluation.planted_facts import TEMPLATE_SETS

STAGES = ("corpus", "tokenizer", "data", "model")
FORMAT_VERSION = 3
"""Bumped when the build writes different files for the same settings, so old builds are redone."""


def _f(default, stage: str, help: str, keyed_if_changed: bool = False):  # noqa: A002 - 'help' mirrors the CLI
    """A config field; ``keyed_if_changed``: it enters the stage key only when not at its default (a field added
    after builds exist, so those builds stay valid)."""
    return field(default=default, metadata={"stage": stage, "help": help, "keyed_if_changed": keyed_if_changed})


@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the demo's corpus, tokenizer, data and model."""

    seed: int = _f(0, "corpus", "Seed for every random choice in the build.")
    sources: tuple[str, ...] = _f(DEFAULT_SOURCES, "corpus", "Real-text sources, in order (keys of "
                                  f"evaluation.corpus.SOURCES: {', '.join(SOURCES)}).", keyed_if_changed=True)
    facts: str = _f("biography", "corpus", "Planted-fact template set: names, attributes and sentences (keys of "
                    f"evaluation.planted_facts.TEMPLATE_SETS: {', '.join(TEMPLATE_SETS)}).", keyed_if_changed=True)
    people: int = _f(120, "corpus", "Number of fictional people with planted facts.")
    docs_per_fact: int = _f(3, "corpus", "Differently worded documents stating each fact (1-4).")
    related_prompts: int = _f(4, "corpus", "Related prompts (same attribute, other people) per fact.")
    chars_per_source: int = _f(60_000, "corpus", "Characters of real text taken from each source.")
    doc_chars: int = _f(1_200, "corpus", "Approximate characters per real-text document.")
    shards: int = _f(4, "corpus", "Number of jsonl.zst shards the corpus is written as.")
    vocab_size: int = _f(4096, "tokenizer", "BPE vocabulary size.")
    seq_len: int = _f(128, "data", "Tokens per training row input (rows hold seq_len + 1).")
    batch_size: int = _f(16, "data", "Rows per training step.")
    steps: int = _f(1200, "data", "Training steps (rows written = steps x batch_size).")
    hidden_size: int = _f(128, "model", "Model width.")
    num_layers: int = _f(4, "model", "Transformer blocks.")
    num_heads: int = _f(4, "model", "Attention heads.")
    learning_rate: float = _f(3e-3, "model", "Peak AdamW learning rate.")
    warmup_steps: int = _f(50, "model", "Linear warm-up steps.")
    weight_decay: float = _f(0.01, "model", "AdamW weight decay.")
    bf16: bool = _f(False, "model", "Train under bf16 autocast (fast only on CPUs with AMX).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))  # a list when read back from JSON
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise ConfigError(f"demo setting sources must name one or more of {sorted(SOURCES)}, got {self.sources}")
        if self.facts not in TEMPLATE_SETS:
            raise ConfigError(f"demo setting facts must be one of {sorted(TEMPLATE_SETS)}, got {self.facts!r}")
        positive = ("people", "chars_per_source", "doc_chars", "shards", "seq_len", "batch_size", "steps",
                    "hidden_size", "num_layers", "num_heads", "related_prompts")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"demo setting {name} must be positive, got {getattr(self, name)}")
        if not 1 <= self.docs_per_fact <= 4:
            raise ConfigError(f"docs_per_fact must be between 1 and 4, got {self.docs_per_fact}")
        if not 300 <= self.vocab_size <= 65_535:
            raise ConfigError(f"vocab_size must be in 300..65535 (stored as uint16), got {self.vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("learning_rate must be > 0, warmup_steps and weight_decay >= 0")

    def stage_key(self, stage: str) -> str:
        """Hash of the fields that determine ``stage`` (its own and every earlier stage's)."""
        upto = STAGES[: STAGES.index(stage) + 1]
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["stage"] in upto
                  and not (f.metadata["keyed_if_changed"] and getattr(self, f.name) == f.default)}
        values["format_version"] = FORMAT_VERSION
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self)


TINY = DemoConfig(
    people=8, related_prompts=2, chars_per_source=1_500, doc_chars=500, shards=2, vocab_size=400,
    seq_len=64, batch_size=4, steps=48, hidden_size=32, num_layers=2, num_heads=2, warmup_steps=4,
)
SECOND = DemoConfig(
    seed=1, sources=("stdlib", "numpy"), facts="pastimes", people=140, docs_per_fact=2, related_prompts=3,
    chars_per_source=30_000, doc_chars=800, shards=3, vocab_size=3072, seq_len=96, batch_size=12, steps=1000,
    hidden_size=96, num_layers=3, num_heads=3, learning_rate=4e-3, warmup_steps=40,
)
"""The second case: other text, fact templates, names, fewer statements per fact, another size and seed."""
TINY_SECOND = replace(SECOND, people=8, related_prompts=2, chars_per_source=1_000, doc_chars=400, shards=2,
                      vocab_size=420, seq_len=64, batch_size=4, steps=128, hidden_size=24, num_layers=2,
                      num_heads=2, warmup_steps=4)
PRESETS = {"default": DemoConfig(), "tiny": TINY, "second": SECOND, "tiny-second": TINY_SECOND}


def preset(name: str, **overrides) -> DemoConfig:
    """A named preset with some fields overridden (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown demo preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
