"""The unlearning report's removal-and-retrain column (docs/EVALUATION.md §2b beside §3), from a removal report.

The unlearning report's own deltas are a one-step check: gradient ascent on each selection, no retraining. When
a removal-and-retrain run (``headwater eval removal``, ``OUT/removal.json``) measured the same facts, its
per-fact loss increases join the report: for each ablation selection with a removal counterpart (``oracle`` ↔
``gold``; ``gradient``, ``bm25``, ``embedding``, ``random`` by name), the mean Δ target over the ablation's
targets that the removal batch held. The removal selections are not the ablation's (the removal removes a whole
batch's top-k at once and retrains from scratch), which the report says beside the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attribution.errors import ConfigError
from evaluation.targets import Target

COUNTERPART = {"oracle": "gold"}
"""Ablation selection → removal selection, where the names differ."""


def load_removal(path: Path) -> dict:
    """A removal report that can be joined by fact (written with its query facts), or a clear error."""
    if not path.is_file():
        raise ConfigError(f"--removal-report {path}: no such file (headwater eval removal writes OUT/removal.json)")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--removal-report {path}: not JSON ({err})") from err
    if not isinstance(report, dict) or "query_facts" not in report or "selections" not in report:
        raise ConfigError(f"--removal-report {path}: not a removal report with its query facts; rerun "
                          "`headwater eval removal` (it reuses its retrains) to rewrite it")
    return report


def removal_column(removal: dict, targets: Sequence[Target], methods: Sequence[str]) -> dict:
    """Per ablation method: the removal's mean Δ target over the targets it measured, with their count."""
    asked = [(f["prompt"], f["completion"]) for f in removal["query_facts"]]
    position = {fact: i for i, fact in enumerate(asked)}
    matched = [position[(t.prompt, t.completion)] for t in targets if (t.prompt, t.completion) in position]
    column: dict = {"targets": len(matched), "of": len(targets), "train_seeds":
                    removal.get("settings", {}).get("train_seeds", 1), "k": removal.get("settings", {}).get("k"),
                    "methods": {}}
    for method in methods:
        name = COUNTERPART.get(method, method)
        row = removal["selections"].get(name)
        if row is None or not matched:
            continue
        values = np.asarray(row["per_query"])[matched]
        column["methods"][method] = {"d_target": float(values.mean()), "selection": name}
    return column


def removal_lines(report: dict) -> list[str]:
    """The report's section for the column (nothing when no removal report was joined)."""
    column = report.get("removal")
    if not column:
        return []
    lines = ["", "## Removal and retrain (counterfactual, not one-step)", "",
             f"From a removal-and-retrain run over {column['targets']} of these {column['of']} targets (its top-"
             f"{column['k']} per fact for its whole batch removed at once, the model retrained from scratch, "
             f"{column['train_seeds']} initialization(s)): Δ target in nats against a retrain that removes nothing. "
             "Its selections are the removal run's, not this report's.", "",
             "| method | removal selection | Δ target after retraining |", "|---|---|---|"]
    for method, entry in column["methods"].items():
        lines.append(f"| {method} | {entry['selection']} | {entry['d_target']:.3f} |")
    return lines
