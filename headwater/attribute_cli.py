"""``headwater attribute``: the influential training examples of an index for a prompt or a task, from a script."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from headwater.common import clean_errors, setup_logging

JSON_FIELDS = ("rank", "example_id", "score", "text", "metadata", "completion", "instances")
"""What ``--json`` prints of each ``attribution.records.Result``, in this order."""


def read_instances(path: Path, what: str) -> list:
    """A task file: JSON lines of ``{"prompt": ..., "completion": ...}`` (completion optional)."""
    from attribution.errors import ConfigError
    from attribution.tasks import Instance

    if not path.is_file():
        raise ConfigError(f"--{what} {path}: no such file")
    instances = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--{what} {path} line {number}: not JSON ({err.msg})") from err
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or \
                not isinstance(record.get("completion", ""), str | None) or set(record) - {"prompt", "completion"}:
            raise ConfigError(f"--{what} {path} line {number}: expected {{\"prompt\": TEXT, \"completion\": TEXT}} "
                              "(completion optional)")
        instances.append(Instance(record["prompt"], record.get("completion")))
    return instances


@clean_errors
def attribute(
    index: Annotated[Path, typer.Option(help="Index directory (its 'current' build).")] = Path("demo-data/index"),
    prompt: Annotated[str | None, typer.Option(help="The query's prompt (or give --task).")] = None,
    completion: Annotated[str | None, typer.Option(help="Its completion (default: the model's own).")] = None,
    task: Annotated[Path | None, typer.Option(help="A task instead of --prompt: JSON lines of {\"prompt\", "
                                                   "\"completion\"} (completion optional), 1-256 instances of one "
                                                   "behaviour answered as one.")] = None,
    control_task: Annotated[Path | None, typer.Option(help="With --task: a neighbouring task's instances (same "
                                                           "format), whose direction is taken out.")] = None,
    method: Annotated[str, typer.Option(help="gradient, unlearning, bm25, embedding or hybrid.")] = "gradient",
    k: Annotated[int, typer.Option(help="Number of examples.", min=1)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON lines.")] = False,
) -> None:
    """Rank an index's training examples for a prompt or a task (--task), best first."""
    from attribution.errors import ConfigError
    from attribution.session import parse_method
    from attribution.tasks import AGGREGATION
    from indexer.store import open_index

    if (prompt is None) == (task is None):
        raise ConfigError("give --prompt (one query) or --task FILE (its instances), not both and not neither")
    if control_task is not None and task is None:
        raise ConfigError("--control-task goes with --task")
    if task is not None and completion is not None:
        raise ConfigError("--completion is for --prompt; a task file gives each instance's completion")
    instances = read_instances(task, "task") if task is not None else None
    controls = read_instances(control_task, "control-task") if control_task is not None else []
    setup_logging(False)
    session = open_index(index)
    if instances is not None:
        results = session.attribute_task(instances, k=k, method=method, control_task=controls)
        typer.echo(f"task of {len(instances)} instances; {method}: {AGGREGATION[parse_method(method)]}", err=True)
    else:
        results = session.attribute(prompt, completion, k=k, method=method)
    for result in results:
        if as_json:
            fields = asdict(result)
            record = {name: fields[name] for name in JSON_FIELDS}
            typer.echo(json.dumps(record, ensure_ascii=False, default=str))
        else:
            shares = (" instances " + ", ".join(f"{i}:{c:.3g}" for i, c in result.instances)
                      if result.instances else "")
            text = " ".join(result.text.split())[:80]
            typer.echo(f"{result.rank:>3} {result.score:>10.4f} id {result.example_id} step "
                       f"{result.metadata.get('step')}{shares}  {text}")

