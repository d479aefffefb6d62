"""What every command shares: typed errors become one-line messages, and quiet logging."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

import typer

from attribution.errors import HeadwaterError

F = TypeVar("F", bound=Callable)


def clean_errors(func: F) -> F:
    """Report headwater's typed errors as ``error: ...`` with exit code 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HeadwaterError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from err

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for noisy in ("bm25s", "sentence_transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
