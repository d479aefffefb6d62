"""What an unlearning ablation checks: one record per target, validated at the edge.

A target comes from a planted fact of the demo (``Target.from_fact``), from a line of a client's
JSONL file (``Target.from_dict``, checked field by field) or from an HTTP request; ``check_targets``
refuses, before any work, a target the model cannot measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attribution.ascent import Probe
from attribution.errors import ConfigError
from attribution.retrievers import Query
from attribution.tasks import MAX_INSTANCES
from indexer.groundtruth import Fact

if TYPE_CHECKING:  # only a type here: the session module loads the retrievers
    from attribution.session import AttributionSession


@dataclass
class Target:
    """One (prompt, completion) whose attribution an ablation checks, with its controls.

    ``related``: same relation, other subjects (specificity); ``unrelated``: other relations (default:
    drawn from the other targets); ``gold_rows``: example ids that state it (the ``oracle``);
    ``example_ids``: the rows to check as the ``given`` selection.
    """

    prompt: str
    completion: str
    paraphrases: list[str] = field(default_factory=list)
    related: list[Probe] = field(default_factory=list)
    unrelated: list[Probe] = field(default_factory=list)
    gold_rows: list[int] = field(default_factory=list)
    example_ids: list[int] = field(default_factory=list)
    attribute: str | None = None
    more: list[Probe] = field(default_factory=list)
    """A task target: its further instances (``prompt``/``completion`` are the first). Its loss change is the mean
    over every instance, and the ranked selections come from task queries (``attribution.tasks``); ``related``
    are then the other tasks' instances."""

    @property
    def instances(self) -> list[Probe]:
        """Every instance (one for a single target)."""
        return [Probe(self.prompt, self.completion), *self.more]

    def query(self) -> Query:
        """The target as an attribution query (a task query when it has further instances)."""
        return Query(self.prompt, self.completion, more=[(p.prompt, p.completion) for p in self.more])

    @classmethod
    def from_fact(cls, fact: Fact) -> Target:
        """A planted fact as a target: its paraphrases, related prompts, gold rows and attribute."""
        return cls(fact.prompt, fact.completion, list(fact.paraphrases), list(fact.related),
                   gold_rows=list(fact.gold_rows), attribute=fact.attribute)

    @classmethod
    def from_dict(cls, data: Any, number: int = 1) -> Target:
        """A target from a parsed JSON object (one line of ``ablate --targets``), type-checked field by field.

        Keys other than the fields (e.g. a planted fact's ``fact_id``) are ignored; ``number`` names the
        target in errors.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"target {number} must be a JSON object, got {type(data).__name__}")
        prompt, completion = data.get("prompt"), data.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ConfigError(f"target {number} needs string 'prompt' and 'completion' fields, got {sorted(data)}")
        attribute = data.get("attribute")
        if attribute is not None and not isinstance(attribute, str):
            raise ConfigError(f"target {number}: 'attribute' must be a string, got {attribute!r}")
        more = _probes(data, "instances", number)
        if len(more) > MAX_INSTANCES - 1:
            raise ConfigError(f"target {number}: at most {MAX_INSTANCES - 1} further instances, got {len(more)}")
        return cls(prompt, completion, more=more,
                   paraphrases=_list_of(data, "paraphrases", str, number),
                   related=_probes(data, "related", number), unrelated=_probes(data, "unrelated", number),
                   gold_rows=_list_of(data, "gold_rows", int, number),
                   example_ids=_list_of(data, "example_ids", int, number), attribute=attribute)


def _list_of(data: dict, key: str, kind: type, number: int) -> list:
    values = data.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"target {number}: '{key}' must be a list of {kind.__name__}s, got {values!r:.200}")
    return list(values)


def _probes(data: dict, key: str, number: int) -> list[Probe]:
    values = data.get(key) or []
    pairs = values if isinstance(values, list) else [None]
    if not all(isinstance(p, dict) and isinstance(p.get("prompt"), str) and isinstance(p.get("completion"), str)
               for p in pairs):
        raise ConfigError(f"target {number}: '{key}' must be a list of {{\"prompt\": str, \"completion\": str}} "
                          f"objects, got {values!r:.200}")
    return [Probe(p["prompt"], p["completion"]) for p in pairs]


def check_targets(session: AttributionSession, targets: Sequence[Target]) -> None:
    """Refuse targets that cannot be measured: a prompt, paraphrase, related or unrelated prompt (or its
    completion) with nothing to tokenize or too long for the model, rows not indexed.

    (Missing or mistyped fields are refused earlier, by ``Target.from_dict``.)"""
    if not targets:
        raise ConfigError("no ablation targets")
    known = {int(i) for i in session.ids}
    for number, target in enumerate(targets, 1):
        pairs = [("", Probe(target.prompt, target.completion))]
        pairs += [(f"instance {i}", p) for i, p in enumerate(target.more, 2)]
        pairs += [(f"paraphrase {i}", Probe(p, target.completion)) for i, p in enumerate(target.paraphrases, 1)]
        pairs += [(f"related prompt {i}", p) for i, p in enumerate(target.related, 1)]
        pairs += [(f"unrelated prompt {i}", p) for i, p in enumerate(target.unrelated, 1)]
        for what, probe in pairs:
            check_probe(session, probe, f"target {number}" + (f", {what}" if what else ""))
        missing = [i for i in target.example_ids if int(i) not in known]
        if missing:
            raise ConfigError(f"target {number}: example_ids {missing[:5]} are not in the index")


def check_probe(session: AttributionSession, probe: Probe, name: str) -> None:
    """A prompt and completion that each give a token and fit the model's context together, else ConfigError."""
    tokenizer, limit = session.encoder.tokenizer, session.encoder.max_length
    n_prompt = len(tokenizer.encode(probe.prompt, add_special_tokens=False))
    n_completion = len(tokenizer.encode(probe.completion, add_special_tokens=False))
    if n_prompt == 0 or n_completion == 0:
        raise ConfigError(f"{name} ({probe.prompt[:80]!r} → {probe.completion[:80]!r}): the prompt and the "
                          "completion must each give at least one token")
    if n_prompt + n_completion > limit:
        raise ConfigError(f"{name} is {n_prompt + n_completion} tokens; the model takes at most {limit}")


def unrelated_prompts(target: Target, pool: Sequence[Target], count: int = 4) -> list[Probe]:
    """Up to ``count`` prompts of another relation (else any other prompt) from ``pool``, or the target's own."""
    if target.unrelated:
        return list(target.unrelated)[:count]
    others = [t for t in pool if t.prompt != target.prompt]
    other_relation = [t for t in others if t.attribute is None or t.attribute != target.attribute]
    return [Probe(t.prompt, t.completion) for t in (other_relation or others)[:count]]
