"""Task queries: a behaviour given as several instances (prompt, completion), answered as one.

A task mixes a skill with its instances' content (the words being doubled, the poem being rewritten); a
per-prompt answer ranks rows sharing the content. Each method aggregates a task as its nature asks
(``Aggregation``), and each result names the instances it serves most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attribution.errors import ConfigError
from attribution.retrievers import Method

MAX_INSTANCES = 256
"""The most instances a task (or a control task) may have."""
MAX_PROMPT_CHARS = 20_000

AGGREGATION: dict[Method, str] = {
    Method.GRADIENT: "mean of the instances' unit query gradients (each instance counts the same), the control "
                     "task's mean direction projected out",
    Method.UNLEARNING: "one move against the task's summed loss (the control task's as a whole for the correction)",
    Method.BM25: "reciprocal-rank fusion of the instances' rankings",
    Method.EMBEDDING: "reciprocal-rank fusion of the instances' rankings",
    Method.HYBRID: "BM25 and embedding candidates by rank fusion, re-ranked by the task's gradient direction",
}
"""How each method answers a task (recorded in every task answer)."""


@dataclass(frozen=True)
class Instance:
    """One instance of a task: a prompt and its completion (None: the model's own)."""

    prompt: str
    completion: str | None = None


def check_task(instances: Sequence[Instance], controls: Sequence[Instance] = ()) -> None:
    """Refuse (ConfigError) a task of no or too many instances, a blank or oversized prompt or completion, and a
    control task that is the task itself."""
    for name, group, least in (("task", instances, 1), ("control task", controls, 0)):
        if not least <= len(group) <= MAX_INSTANCES:
            raise ConfigError(f"a {name} has {least} to {MAX_INSTANCES} instances, got {len(group)}")
        for number, instance in enumerate(group, 1):
            if not instance.prompt.strip() or len(instance.prompt) > MAX_PROMPT_CHARS:
                raise ConfigError(f"{name} instance {number}: the prompt must be non-blank and at most "
                                  f"{MAX_PROMPT_CHARS} characters")
            if instance.completion is not None and not instance.completion.strip():
                raise ConfigError(f"{name} instance {number}: the completion is blank (omit it for the model's own)")
    if controls and {(i.prompt, i.completion) for i in controls} == {(i.prompt, i.completion) for i in instances}:
        raise ConfigError("the control task is the task itself: give instances of a neighbouring task to contrast "
                          "with")
