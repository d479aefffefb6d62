"""``headwater eval``: the evaluations of EVALUATION.md as commands (facts, lds, tailpatch).

Each command is a thin wrapper over a module of ``evaluation/`` and writes a markdown table and JSON.
"""

from __future__ import annotations

import typer

eval_app = typer.Typer(help="Evaluate attributions: fact tracing, LDS, tail-patch.", no_args_is_help=True)

# --- eval facts ---

# --- eval lds ---

# --- eval tailpatch ---
